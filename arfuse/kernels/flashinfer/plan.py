"""Per-call planning: which strategy runs this call, on host data only (no sync, no guard).

    one-shot   tokens <= oneshot_max_tokens                  (the policy's thresholds table)
    two-shot   oneshot_max_tokens < tokens <= fused_max_tokens, tokens > world_size
    unfused    everything else, with the reason logged once (`fallback_reasons`)

The thresholds and the two-shot switch are those of the FusionPolicy the pass fused under: the
op carries its digest (`FusedArgs.policy`, "" for a direct call: the policy in force now) and
`arfuse.policy.resolve` gives it back. What depends only on (device, group, hidden, dtype,
policy) - whether the kernel applies at all, the limits, the workspace - is resolved once into a
`Site` (a digest names immutable content, so a site never goes stale; "" resolves to the digest
of the table in force); what depends on the token count is `choose_strategy`, a pure function.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

from arfuse import optable
from arfuse import thresholds as th
from arfuse.kernels.flashinfer import library
from arfuse.kernels.flashinfer.workspace import MAX_COMM_BYTES, Workspace, create_workspace
from arfuse.policy import FusionPolicy, resolve
from arfuse.settings import STRATEGY_ENV, TWOSHOT_ENV

log = logging.getLogger("arfuse.kernels.flashinfer")

SUPPORTED_WORLD_SIZES = optable.KERNEL_WORLD_SIZES
SUPPORTED_ARCHS = optable.KERNEL_ARCHS
FUSED_DTYPES = tuple(getattr(torch, name) for name in optable.KERNEL_DTYPES)
HIDDEN_MULTIPLE = optable.HIDDEN_MULTIPLE

#: What ran, per call: "oneshot", "twoshot", "unfused". Tests and benchmarks read it.
stats: Counter = Counter()
#: Every fallback reason seen in this process (each was logged once).
fallback_reasons: dict[str, str] = {}

Reason = tuple[str, str]  # (key, message)
#: Reasons that mean the installation or the caller is wrong, not that the size is
WARN_REASONS = ("flashinfer-missing", "arch", "device", "capture", "epilogue-compile")


def fallback(key: str, message: str) -> None:
    """Record why a call runs unfused; logged once per reason key."""
    if key not in fallback_reasons:
        fallback_reasons[key] = message
        level = logging.WARNING if key in WARN_REASONS else logging.INFO
        log.log(level, "arfuse: unfused allreduce+RMSNorm path: %s", message)


def choose_strategy(
    tokens: int,
    world_size: int,
    oneshot_max_tokens: int,
    fused_max_tokens: int,
    workspace_tokens: int,
    forced: str = "auto",
    twoshot: bool = True,
) -> tuple[str, Reason | None]:
    """Pure decision: ('oneshot'|'twoshot'|'unfused', None or the reason it is unfused).
    `twoshot`: whether the thresholds' two-shot window may run two-shot; a forced 'twoshot'
    always may."""
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
    if forced == "auto" and not twoshot:
        return "unfused", (
            "twoshot-off",
            f"{tokens} tokens fall in the two-shot window, and two-shot is off ({TWOSHOT_ENV}=0)",
        )
    return "twoshot", None


def workspace_tokens(limits: th.Limits) -> int:
    """Tokens the workspace for these limits holds: the fusion threshold, capped by FlashInfer."""
    cap = MAX_COMM_BYTES // (limits.world_size * limits.hidden * 2)
    return max(1, min(limits.fused_max_tokens, cap))


@dataclass
class Site:
    """What one (device, group, hidden, dtype, policy) needs, resolved once."""

    reason: Reason | None  # set when the kernel never applies here
    policy: FusionPolicy
    limits: th.Limits | None = None
    world_size: int = 0
    workspace: Workspace | None = None

    def ensure_workspace(self, group: dist.ProcessGroup, input: torch.Tensor) -> Workspace | None:
        """This site's live workspace, created (collectively) on first need; None during
        CUDA-graph capture, where none can be created."""
        if self.workspace is not None and not self.workspace.released:
            return self.workspace
        if torch.cuda.is_current_stream_capturing():
            return None
        assert self.limits is not None, "only a site without a reason gets here; it has limits"
        self.workspace = create_workspace(
            group, input.shape[-1], input.dtype, workspace_tokens(self.limits)
        )
        return self.workspace


_sites: dict[tuple, Site] = {}


def _site_reason(input: torch.Tensor, group: dist.ProcessGroup) -> Reason | None:
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
    missing = library.unavailable_reason()
    if missing is not None:
        return ("flashinfer-missing", missing)
    return None


def site_for(input: torch.Tensor, group: dist.ProcessGroup, policy: str = "") -> Site:
    """The site of this input's shape and group under the policy with this digest."""
    resolved = resolve(policy)
    key = (input.device.index, group.group_name, input.shape[-1], input.dtype, resolved.digest())
    site = _sites.get(key)
    if site is not None:
        return site
    reason = _site_reason(input, group)
    site = Site(reason=reason, policy=resolved)
    if reason is None:
        cap = torch.cuda.get_device_capability(input.device)
        world = dist.get_world_size(group)
        limits = resolved.limits(cap, world, input.dtype, input.shape[-1])
        if limits is None or limits.fused_max_tokens < 1:
            site.reason = (
                "no-entry",
                f"no fused range in the thresholds table for "
                f"{th.arch_of(cap)} TP{world} at hidden {input.shape[-1]}",
            )
        else:
            site.limits, site.world_size = limits, world
    _sites[key] = site
    return site
