"""GPU backend of the fused ops: FlashInfer's TensorRT-LLM allreduce-fusion kernel.

    fused op (CUDA input) -> backend() -> plan per call (host only, no sync, no guard):
        one-shot   tokens <= oneshot_max_tokens                  (thresholds table)
        two-shot   oneshot_max_tokens < tokens <= fused_max_tokens, tokens > world_size
        unfused    everything else: NCCL allreduce + a compiled add+RMSNorm(+FP8) epilogue

The choice happens inside the opaque op at run time, so the compiled graph has no Python branch
on num_tokens and gets no guard. The unfused path runs (its reason logged once) when FlashInfer
is missing, the GPU is not SM90/SM100, the world size is not 2/4/8, hidden % 8 != 0, the dtype
is float32, the input exceeds the workspace or the fusion threshold, or a workspace would have
to be created during CUDA-graph capture.

Workspaces (CUDA IPC buffers, no multicast) are created lazily, once per process and per
(group, hidden, dtype, max tokens), on the first call that needs one - after the caller's
`torch.cuda.set_device`, with the op's own TP group, never WORLD implicitly. They are sized from
the thresholds table and live until `release_workspaces(group)` (collective: call it on every
rank before destroying the group) or process exit. Their pointers never change, so a captured
CUDA graph replays the fused op; create them before capture (one eager call, or `prepare()`).

Never uses FlashInfer's `mnnvl*` backends, symmetric memory or `backend="auto"`.

Tests and benchmarks can force a strategy: ``ARFUSE_FLASHINFER_STRATEGY=oneshot|twoshot|unfused``
(read at import) or `force_strategy()`; forcing never exceeds the workspace.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import logging
import os
import types
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from arfuse import optable
from arfuse import thresholds as th
from arfuse.kernels import exact

log = logging.getLogger(__name__)

STRATEGY_ENV = "ARFUSE_FLASHINFER_STRATEGY"
STRATEGIES = ("auto", "oneshot", "twoshot", "unfused")
SUPPORTED_WORLD_SIZES = optable.KERNEL_WORLD_SIZES
SUPPORTED_ARCHS = optable.KERNEL_ARCHS
FUSED_DTYPES = tuple(getattr(torch, name) for name in optable.KERNEL_DTYPES)
HIDDEN_MULTIPLE = optable.HIDDEN_MULTIPLE
_MAX_COMM_SIZE = 2147483647 & ~((1 << 21) - 1)  # FlashInfer's cap on one lamport buffer

#: What ran, per call: "oneshot", "twoshot", "unfused". Tests and benchmarks read it.
stats: Counter = Counter()
#: Every fallback reason seen in this process (each was logged once).
fallback_reasons: dict[str, str] = {}


def _check_strategy(name: str | None) -> str:
    name = (name or "auto").strip().lower()
    if name not in STRATEGIES:
        raise ValueError(
            f"{STRATEGY_ENV}/force_strategy: unknown strategy {name!r}; choose one of {STRATEGIES}"
        )
    return name


_forced = _check_strategy(os.environ.get(STRATEGY_ENV))

TWOSHOT_ENV = "ARFUSE_TWOSHOT"
#: Whether the thresholds' two-shot window runs the two-shot kernel (default) or, with
#: ARFUSE_TWOSHOT=0, the unfused path (and `arfuse.compile` leaves that window to Inductor).
TWOSHOT_ENABLED = os.environ.get(TWOSHOT_ENV, "1") != "0"

PDL_ENV = "ARFUSE_FLASHINFER_PDL"
#: Launch the kernel with programmatic dependent launch (it may start while the previous kernel
#: finishes; it waits for it before reading the input). ARFUSE_FLASHINFER_PDL=0 turns it off.
LAUNCH_WITH_PDL = os.environ.get(PDL_ENV, "1") != "0"


def force_strategy(name: str | None) -> None:
    """Force 'oneshot', 'twoshot' or 'unfused' (None/'auto': the thresholds decide).

    For tests and benchmarks. A forced kernel strategy still needs the input to fit the
    workspace (sized from the thresholds) and two-shot still needs tokens > world size; the
    one-shot kernel runs where two-shot cannot."""
    global _forced
    _forced = _check_strategy(name)


@contextlib.contextmanager
def forced_strategy(name: str | None) -> Iterator[None]:
    global _forced
    saved = _forced
    force_strategy(name)
    try:
        yield
    finally:
        _forced = saved


def _fallback(key: str, message: str, level: int = logging.INFO) -> None:
    if key not in fallback_reasons:
        fallback_reasons[key] = message
        log.log(level, "arfuse: unfused allreduce+RMSNorm path: %s", message)


# ---- FlashInfer, imported lazily ------------------------------------------------------------

_comm: Any = None  # flashinfer.comm, once imported
_module: Any = None  # the loaded trtllm_comm kernel module
_import_error: str | None = None


def _flashinfer() -> tuple[Any, Any] | None:
    """(flashinfer.comm, kernel module), or None (reason logged once) when unavailable.

    Imported only here, after the caller has put a tensor on its device: `import
    flashinfer.comm` asserts unless CUDA was touched through torch first."""
    global _comm, _module, _import_error
    if _module is not None:
        return _comm, _module
    if _import_error is not None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import flashinfer.comm as comm
            from flashinfer.comm.trtllm_ar import get_trtllm_comm_module

            module = get_trtllm_comm_module()
    except Exception as e:  # noqa: BLE001 - ImportError, JIT/load failures: all mean "not here"
        _import_error = f"{type(e).__name__}: {e}"
        _fallback(
            "flashinfer-missing",
            f"FlashInfer's allreduce-fusion kernel is unavailable "
            f"({_import_error[:300]}); install flashinfer-python>=0.6.3",
            logging.WARNING,
        )
        return None
    _comm, _module = comm, module
    return _comm, _module


def _loaded() -> tuple[Any, Any]:
    """`_flashinfer()` where the caller needs it: RuntimeError with the reason if unavailable."""
    fi = _flashinfer()
    if fi is None:
        raise RuntimeError(f"FlashInfer is unavailable: {_import_error}")
    return fi


# ---- workspaces ----------------------------------------------------------------------------


@dataclass
class Workspace:
    """One IPC workspace: fixed pointers for the life of the process (CUDA-graph safe)."""

    group: dist.ProcessGroup
    group_name: str
    rank: int
    world_size: int
    hidden: int
    dtype: torch.dtype
    max_tokens: int
    ipc_handles: list
    ptrs: torch.Tensor  # int64 device tensor the kernel reads
    zeros: torch.Tensor  # [max_tokens, hidden] residual_in for no-residual chains
    released: bool = False

    @property
    def key(self) -> tuple:
        return (self.group_name, self.hidden, self.dtype, self.max_tokens)


_workspaces: dict[tuple, Workspace] = {}


def _dtype_code(dtype: torch.dtype) -> int:
    return {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}.get(dtype, 0)


def _check_ranks_agree(
    group: dist.ProcessGroup, device: torch.device, hidden: int, dtype: torch.dtype, max_tokens: int
) -> None:
    """Every rank must ask for the same workspace; a mismatch is a clear error, not a hang."""
    world = dist.get_world_size(group)
    mine = torch.tensor([hidden, _dtype_code(dtype), max_tokens], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    rows = [t.tolist() for t in every]
    if any(row != rows[0] for row in rows):
        raise ValueError(
            "arfuse: ranks disagree on the fused allreduce workspace "
            f"[hidden, dtype code, max tokens] per rank = {rows}; every rank of "
            "the TP group must run the same model shapes and thresholds "
            "(same ARFUSE_THRESHOLDS file on every rank)"
        )


def create_workspace(
    group: dist.ProcessGroup, hidden: int, dtype: torch.dtype, max_tokens: int
) -> Workspace:
    """Create (collectively, on every rank of `group`) or return the workspace for this key."""
    key = (group.group_name, hidden, dtype, max_tokens)
    ws = _workspaces.get(key)
    if ws is not None:
        return ws
    comm, _ = _loaded()
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "arfuse: cannot create a FlashInfer workspace during CUDA-graph "
            "capture; run the model once eagerly first (or call "
            "arfuse.kernels.flashinfer.prepare) before capturing"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    _check_ranks_agree(group, device, hidden, dtype, max_tokens)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as noise:
        warnings.simplefilter("ignore", DeprecationWarning)
        handles, ptrs, _meta = comm.trtllm_create_ipc_workspace_for_all_reduce_fusion(
            rank,
            world,
            max_tokens,
            hidden,
            use_fp32_lamport=False,
            group=group,
            create_metadata=True,
        )
    log.debug("flashinfer workspace output: %s", noise.getvalue())
    zeros = torch.zeros(max_tokens, hidden, dtype=dtype, device=device)
    ws = Workspace(
        group, group.group_name, rank, world, hidden, dtype, max_tokens, handles, ptrs, zeros
    )
    _workspaces[key] = ws
    log.info(
        "arfuse: FlashInfer workspace for group %s rank %d/%d hidden %d %s, up to %d tokens",
        group.group_name,
        rank,
        world,
        hidden,
        dtype,
        max_tokens,
    )
    return ws


def release_workspaces(group: dist.ProcessGroup | None = None) -> int:
    """Destroy the workspaces of `group` (all groups when None). Collective over each group:
    call it on every rank, before `destroy_process_group`. Returns how many were destroyed."""
    done = 0
    for key, ws in list(_workspaces.items()):
        if group is not None and ws.group_name != group.group_name:
            continue
        del _workspaces[key]
        for site_key, site in list(_sites.items()):
            if site.workspace is ws:  # re-resolved (a new workspace) on its next call
                del _sites[site_key]
        if ws.released:
            continue
        ws.released = True
        torch.cuda.synchronize()
        flag_ptr = int(ws.ptrs[-1].item())  # the 5-int flag block the create call mallocs
        comm, _ = _loaded()
        with contextlib.redirect_stdout(io.StringIO()):
            comm.trtllm_destroy_ipc_workspace_for_all_reduce_fusion(ws.ipc_handles, group=ws.group)
        from flashinfer.comm.cuda_ipc import cudart

        cudart.cudaFree(ctypes.c_void_p(flag_ptr))
        done += 1
    return done


def _release_at_exit() -> None:
    """At exit, destroy workspaces whose group still exists (all ranks exit together)."""
    if not _workspaces or not (dist.is_available() and dist.is_initialized()):
        return
    try:
        release_workspaces()
    except Exception as e:  # noqa: BLE001 - exiting anyway; the driver frees the memory
        log.debug("arfuse: workspace release at exit failed: %s", e)


atexit.register(_release_at_exit)


# ---- per-call planning ---------------------------------------------------------------------


@dataclass
class _Site:
    """What one (device, group, hidden, dtype) needs, resolved once (per thresholds change)."""

    reason: tuple[str, str] | None  # (key, message) when the kernel never applies here
    limits: th.Limits | None = None
    world_size: int = 0
    rank: int = 0
    workspace: Workspace | None = None
    generation: int = -1


_sites: dict[tuple, _Site] = {}


def choose_strategy(
    tokens: int,
    world_size: int,
    oneshot_max_tokens: int,
    fused_max_tokens: int,
    workspace_tokens: int,
    forced: str = "auto",
    twoshot: bool | None = None,
) -> tuple[str, tuple[str, str] | None]:
    """Pure decision: ('oneshot'|'twoshot'|'unfused', None or (reason key, message)).
    `twoshot`: whether the thresholds' two-shot window may run two-shot (default:
    TWOSHOT_ENABLED); a forced 'twoshot' always may."""
    if tokens < 1:
        return "unfused", ("empty", "empty input")
    if forced == "unfused":
        return "unfused", ("forced", f"forced by {STRATEGY_ENV}/force_strategy")
    if forced == "auto" and tokens > fused_max_tokens:
        return "unfused", (
            "threshold",
            f"{tokens} tokens exceed the fusion threshold "
            f"({fused_max_tokens} tokens for this hidden/dtype/world size; "
            "`arfuse thresholds`)",
        )
    if tokens > workspace_tokens:
        return "unfused", (
            "workspace",
            f"{tokens} tokens exceed the workspace "
            f"({workspace_tokens} tokens, sized from the thresholds)",
        )
    if forced == "oneshot" or (forced == "auto" and tokens <= oneshot_max_tokens):
        return "oneshot", None
    if tokens <= world_size:
        return "oneshot", None
    if forced == "auto" and not (TWOSHOT_ENABLED if twoshot is None else twoshot):
        return "unfused", (
            "twoshot-off",
            f"{tokens} tokens fall in the two-shot window, and two-shot is off ({TWOSHOT_ENV}=0)",
        )
    return "twoshot", None


def _site_reason(input: torch.Tensor, group: dist.ProcessGroup) -> tuple[str, str] | None:
    hidden = input.shape[-1]
    if input.dtype not in FUSED_DTYPES:
        return ("dtype", f"dtype {input.dtype}: the fused kernel runs bfloat16/float16 only")
    if hidden % HIDDEN_MULTIPLE:
        return ("hidden", f"hidden {hidden} is not a multiple of {HIDDEN_MULTIPLE}")
    if input.device.index != torch.cuda.current_device():
        return (
            "device",
            f"input on {input.device} but the current device is "
            f"cuda:{torch.cuda.current_device()}; call torch.cuda.set_device(local_rank)",
        )
    world = dist.get_world_size(group)
    if world not in SUPPORTED_WORLD_SIZES:
        return ("world", f"world size {world}: the kernel supports {SUPPORTED_WORLD_SIZES}")
    cap = torch.cuda.get_device_capability(input.device)
    arch = th.arch_of(cap)
    if arch not in SUPPORTED_ARCHS:
        return (
            "arch",
            f"compute capability {cap[0]}.{cap[1]} ({arch}): the kernel runs on "
            "SM90 (Hopper) and SM100 (Blackwell)",
        )
    if _flashinfer() is None:
        return ("flashinfer-missing", f"FlashInfer unavailable: {_import_error}")
    return None


def _site(input: torch.Tensor, group: dist.ProcessGroup) -> _Site:
    key = (input.device.index, group.group_name, input.shape[-1], input.dtype)
    gen = th.generation()
    site = _sites.get(key)
    if site is not None and site.generation == gen:
        return site
    reason = _site_reason(input, group)
    site = _Site(reason=reason, generation=gen)
    if reason is None:
        cap = torch.cuda.get_device_capability(input.device)
        world = dist.get_world_size(group)
        limits = th.lookup(cap, world, input.dtype, input.shape[-1])
        if limits is None or limits.fused_max_tokens < 1:
            site.reason = (
                "no-entry",
                f"no fused range in the thresholds table for "
                f"{th.arch_of(cap)} TP{world} at hidden {input.shape[-1]}",
            )
        else:
            site.limits, site.world_size, site.rank = limits, world, dist.get_rank(group)
    _sites[key] = site
    return site


def _workspace_tokens(limits: th.Limits) -> int:
    cap = _MAX_COMM_SIZE // (limits.world_size * limits.hidden * 2)
    return max(1, min(limits.fused_max_tokens, cap))


def _ensure_workspace(
    site: _Site, group: dist.ProcessGroup, input: torch.Tensor
) -> Workspace | None:
    if site.workspace is not None and not site.workspace.released:
        return site.workspace
    if torch.cuda.is_current_stream_capturing():
        return None
    assert site.limits is not None, "only a site without a reason gets here; it has limits"
    site.workspace = create_workspace(
        group, input.shape[-1], input.dtype, _workspace_tokens(site.limits)
    )
    return site.workspace


def prepare(group: dist.ProcessGroup, hidden: int, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Create the workspace for (group, hidden, dtype) now - before CUDA-graph capture.
    Collective. Returns False (reason logged) when the fused kernel does not apply."""
    probe = torch.empty(1, hidden, dtype=dtype, device=torch.cuda.current_device())
    site = _site(probe, group)
    if site.reason is not None:
        _fallback(*site.reason)
        return False
    return _ensure_workspace(site, group, probe) is not None


# ---- the unfused path on GPU: NCCL + one compiled epilogue ----------------------------------

_epilogues: dict[tuple, Any] = {}
_eager_epilogue = False


def _epilogue(has_residual: bool, has_scale: bool, dtype: torch.dtype):
    """A compiled epilogue per variant; each gets its own code object, hence its own dynamo
    cache, so variants do not eat each other's recompile budget."""
    key = (has_residual, has_scale, dtype)
    fn = _epilogues.get(key)
    if fn is None:
        tag = (
            f"_epilogue_{'r' if has_residual else 'n'}{'q' if has_scale else ''}_"
            f"{str(dtype).split('.')[-1]}"
        )
        code = exact.epilogue.__code__.replace(co_name=tag)
        fn = torch.compile(
            types.FunctionType(code, exact.epilogue.__globals__, tag), dynamic=True, fullgraph=True
        )
        _epilogues[key] = fn
    return fn


def unfused(input, residual, weight, scale, eps, weight_bias, group):
    """NCCL allreduce + the compiled add+RMSNorm(+FP8) epilogue: the fastest unfused path."""
    global _eager_epilogue
    stats["unfused"] += 1
    reduced = exact.all_reduce(input, group)
    if not _eager_epilogue:
        try:
            return _epilogue(residual is not None, scale is not None, input.dtype)(
                reduced, residual, weight, scale, eps, weight_bias
            )
        except Exception as e:  # noqa: BLE001 - compile trouble must not fail the model
            _eager_epilogue = True
            _fallback(
                "epilogue-compile",
                f"compiling the add+RMSNorm epilogue failed "
                f"({type(e).__name__}: {str(e)[:200]}); running it eagerly",
                logging.WARNING,
            )
    return exact.epilogue(reduced, residual, weight, scale, eps, weight_bias)


# ---- the fused kernel ----------------------------------------------------------------------


def launch(
    strategy: str,
    ws: Workspace,
    input: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    eps: float,
    weight_bias: float,
    norm_out: torch.Tensor,
    residual_out: torch.Tensor,
    quant_out: torch.Tensor | None = None,
) -> None:
    """One kernel launch into preallocated outputs (tests poison them first)."""
    _, module = _loaded()
    hidden = input.shape[-1]
    tokens = input.numel() // hidden
    if tokens > ws.max_tokens:
        raise ValueError(f"{tokens} tokens exceed the workspace's {ws.max_tokens}")
    if strategy == "twoshot" and tokens <= ws.world_size:
        raise ValueError(f"two-shot needs tokens > world size ({tokens} <= {ws.world_size})")
    pattern = _pattern(scale is not None)
    if residual is None:
        residual = ws.zeros[:tokens].view(input.shape)
    gamma = weight if weight_bias == 0.0 else (weight.float() + weight_bias).to(weight.dtype)
    if not gamma.is_contiguous():
        gamma = gamma.contiguous()
    module.trtllm_allreduce_fusion(
        allreduce_in=input,
        world_size=ws.world_size,
        world_rank=ws.rank,
        token_num=tokens,
        hidden_dim=hidden,
        workspace_ptrs=ws.ptrs,
        launch_with_pdl=LAUNCH_WITH_PDL,
        use_oneshot=strategy == "oneshot",
        trigger_completion_at_end=True,
        fp32_acc=True,
        pattern_code=pattern,
        allreduce_out=None,
        residual_in=residual,
        residual_out=residual_out,
        norm_out=norm_out,
        quant_out=quant_out,
        scale_out=None,
        rms_gamma=gamma,
        rms_eps=float(eps),
        scale_factor=scale,
        layout_code=None,
    )


def _pattern(fp8: bool):
    comm, _ = _loaded()
    p = comm.AllReduceFusionPattern
    # The op returns norm_out too, so FP8 uses the Out variant (writes norm and quant).
    return p.kARResidualRMSNormOutFP8Quant if fp8 else p.kARResidualRMSNorm


def backend(input, residual, weight, scale, eps, weight_bias, group):
    """The registered backend: fused kernel, or the fast unfused path; None off CUDA."""
    if not input.is_cuda:
        return None
    site = _site(input, group)
    if site.reason is not None:
        _fallback(
            *site.reason,
            logging.WARNING
            if site.reason[0] in ("flashinfer-missing", "arch", "device")
            else logging.INFO,
        )
        return unfused(input, residual, weight, scale, eps, weight_bias, group)
    ws = _ensure_workspace(site, group, input)
    if ws is None:
        _fallback(
            "capture",
            "the first call for this group/hidden/dtype came during CUDA-graph "
            "capture, where no workspace can be created; run once eagerly before "
            "capturing (or call arfuse.kernels.flashinfer.prepare)",
            logging.WARNING,
        )
        return unfused(input, residual, weight, scale, eps, weight_bias, group)
    lim = site.limits
    tokens = input.numel() // input.shape[-1]
    strategy, why = choose_strategy(
        tokens,
        site.world_size,
        lim.oneshot_max_tokens,
        lim.fused_max_tokens,
        ws.max_tokens,
        _forced,
    )
    if strategy == "unfused":
        _fallback(*why)
        return unfused(input, residual, weight, scale, eps, weight_bias, group)
    misaligned = [
        name
        for name, t in (("input", input), ("residual", residual), ("weight", weight))
        if t is not None and t.data_ptr() % 16
    ]
    if misaligned:  # the kernel moves 16-byte vectors; a view at an odd offset would corrupt
        _fallback(
            "alignment",
            f"{', '.join(misaligned)} not 16-byte aligned (a view at an "
            "offset?): the fused kernel needs aligned tensors",
        )
        return unfused(input, residual, weight, scale, eps, weight_bias, group)
    stats[strategy] += 1
    norm_out = torch.empty_like(input)
    residual_out = torch.empty_like(input)
    quant_out = None if scale is None else torch.empty_like(input, dtype=exact.FP8)
    launch(
        strategy,
        ws,
        input,
        residual,
        weight,
        scale,
        eps,
        weight_bias,
        norm_out,
        residual_out,
        quant_out,
    )
    return quant_out, norm_out, residual_out
