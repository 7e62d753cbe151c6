"""The op table: which ops are allreduces, collectives, norms and fused ops, and the dtype,
hidden-size and FP8 policy of the fused kernel. Torch-free, so the offline audit, the rules and
the trace reader read the same facts as the matcher and the ranges without importing torch.

Ops are named once, as qualified names (`namespace::op`). Two derived spellings exist:

    qualified   "_c10d_functional::all_reduce_"   (torch.library, FusionConfig.allreduce_ops)
    graph text  "_c10d_functional.all_reduce_"    (an FX node target printed in a graph dump,
                                                    after `torch.ops.`, before the overload)

`is_allreduce`, `is_collective`, `is_norm` and `is_fused` take either the graph text of a target
("_c10d_functional.all_reduce_.default", with or without the `torch.ops.` prefix) or the str()
of an OpOverload (which prints the same way), plus the extra qualified names a `FusionConfig`
adds (`allreduce_ops`, `norm_ops`).
"""

from __future__ import annotations

from collections.abc import Iterable

# ---- op identities ---------------------------------------------------------------------------

#: Functional sum-allreduces the pass fuses (by form: see `arfuse.patterns.spec`).
C10D_ALLREDUCE = ("_c10d_functional::all_reduce", "_c10d_functional::all_reduce_")
C10D_WAIT = "_c10d_functional::wait_tensor"
ARFUSE_ALLREDUCE = "arfuse::all_reduce"
#: Older graph dumps (torch < 2.4) print the functional collectives without the underscore.
_LEGACY_ALLREDUCE = ("c10d_functional::all_reduce",)
ALLREDUCE_OPS = C10D_ALLREDUCE + (ARFUSE_ALLREDUCE,)

#: RMSNorm ops (norm form `custom_op` for arfuse's; the aten ones are what ARF201 recognises in
#: graphs that kept a norm op whole).
ARFUSE_RMS_NORM = "arfuse::rms_norm"
NORM_OPS = ("aten::rms_norm", "aten::_fused_rms_norm", ARFUSE_RMS_NORM)

#: The fused ops the pass inserts; every one's name starts with FUSED_PREFIX.
FUSED_PREFIX = "arfuse::fused_allreduce"
# the pass's run-time branch on the token count (`arfuse.token_branch`): the subgraph with the
# chain as it was, which runs above the fusion limit (unfused there by design), and the one
# with the fused op
UNFUSED_BRANCH = "arfuse_unfused"
FUSED_BRANCH = "arfuse_fused"
FUSED_RMSNORM = "arfuse::fused_allreduce_rmsnorm"
FUSED_RMSNORM_FP8 = "arfuse::fused_allreduce_rmsnorm_fp8"  # quant and the bf16 norm
FUSED_RMSNORM_QUANT_FP8 = "arfuse::fused_allreduce_rmsnorm_quant_fp8"  # quant only

#: Collectives every rank must issue in the same order (ARF304), by namespace and op name.
COLLECTIVE_NAMESPACES = ("_c10d_functional", "c10d_functional", "c10d", "_dtensor")
COLLECTIVE_NAMES = (
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "send",
    "recv",
    "barrier",
)

# ---- fused-kernel policy ----------------------------------------------------------------------

#: Activation dtypes the fused ops accept (torch dtype names); the exact path runs them all.
SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
#: Dtypes FlashInfer's fused kernel runs; float32 takes the unfused path on GPU.
KERNEL_DTYPES = ("bfloat16", "float16")
#: The fused kernel loads 16-byte vectors: hidden must be a multiple of this.
HIDDEN_MULTIPLE = 8
#: TP sizes FlashInfer's allreduce-fusion kernel supports.
KERNEL_WORLD_SIZES = (2, 4, 8)
#: GPU architectures it runs on (`thresholds.arch_of` keys): Hopper and Blackwell.
KERNEL_ARCHS = ("sm90", "sm100")
#: Static per-tensor FP8 quant: the dtype and its largest finite value (the clamp bound).
FP8_DTYPE = "float8_e4m3fn"
FP8_MAX = 448.0


# ---- spellings ---------------------------------------------------------------------------------


def graph_name(qualified: str) -> str:
    """`ns::op` -> `ns.op`, as a graph dump prints the target."""
    return qualified.replace("::", ".")


def op_of(target: str) -> str:
    """`torch.ops.ns.op.overload`, `ns.op.overload` or `ns::op` -> `ns.op`."""
    target = str(target)
    target = target.removeprefix("torch.ops.")
    target = graph_name(target)
    parts = target.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else target


def _names(qualified: Iterable[str]) -> frozenset[str]:
    return frozenset(graph_name(q) for q in qualified)


_ALLREDUCE = _names(ALLREDUCE_OPS + _LEGACY_ALLREDUCE)
_NORMS = _names(NORM_OPS)


def is_allreduce(target: str, extra: Iterable[str] = ()) -> bool:
    """A functional sum-allreduce: the built-in forms or one of `extra` (qualified names)."""
    op = op_of(target)
    return op in _ALLREDUCE or op in _names(extra)


def is_fused(target: str) -> bool:
    return op_of(target).startswith(graph_name(FUSED_PREFIX))


def is_collective(target: str, extra: Iterable[str] = ()) -> bool:
    """Any collective every rank must issue in step: c10d/DTensor collectives, the allreduces
    (built-in and `extra`) and the fused allreduce ops."""
    op = op_of(target)
    if is_fused(op) or is_allreduce(op, extra):
        return True
    ns, _, name = op.partition(".")
    # a name prefix covers the in-place and tensor variants: all_reduce_, all_gather_into_tensor
    return ns in COLLECTIVE_NAMESPACES and name.startswith(COLLECTIVE_NAMES)


def is_norm(target: str, extra: Iterable[str] = ()) -> bool:
    op = op_of(target)
    return op in _NORMS or op in _names(extra)


#: Byte markers for a fast scan of a graph dump: a dump without any of them holds no
#: collective and no fused op (custom ops named in a FusionConfig are checked by name).
TEXT_MARKERS = (b"c10d", b"_dtensor.", b"arfuse.")


def text_has_collective(payload: bytes, extra: Iterable[str] = ()) -> bool:
    """Whether a printed graph may hold a collective or fused op (a cheap superset test)."""
    return any(m in payload for m in TEXT_MARKERS) or any(
        graph_name(q).encode() in payload for q in extra
    )
