"""Kernel dispatch for the fused ops: the one place where a fast kernel plugs in.

`run_fused` asks each registered backend (in order) whether it takes this call; the first that
returns a result wins, otherwise the exact path runs. A backend is a callable
`(FusedArgs) -> FusedResult | None` that returns None when the call is not for it
(FlashInfer's: any non-CUDA input). A backend that takes a call always returns a result: where
its kernel does not apply (size past the threshold, library missing, unsupported shape) it runs
its own unfused path, having logged the reason once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

from arfuse.kernels import exact
from arfuse.kernels.args import FusedArgs, FusedResult

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName  # a NewType of str

__all__ = ["Backend", "FusedArgs", "FusedResult", "register_backend", "resolve_group", "run_fused"]

Backend = Callable[[FusedArgs], FusedResult | None]

_BACKENDS: list[Backend] = []


def register_backend(backend: Backend) -> None:
    if backend not in _BACKENDS:
        _BACKENDS.append(backend)


def resolve_group(group_name: str) -> dist.ProcessGroup:
    """The process group registered under `group_name`, or a ValueError saying what exists."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"process group {group_name!r} requested but torch.distributed is not "
            "initialized; call torch.distributed.init_process_group first"
        )
    try:
        return dist.distributed_c10d._resolve_process_group(cast("GroupName", group_name))
    except (RuntimeError, ValueError, KeyError) as e:
        known = sorted(dist.distributed_c10d._world.pg_names.values())
        raise ValueError(
            f"unknown process group name {group_name!r}; known groups: {known}. "
            "Pass group.group_name of an existing group"
        ) from e


def all_reduce(input: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return exact.all_reduce(input, group)


_gpu_backends_loaded = False


def _load_gpu_backends() -> None:
    """Register the FlashInfer backend on the first CUDA call (it imports FlashInfer lazily
    itself, so importing arfuse on CPU never touches FlashInfer or CUDA)."""
    global _gpu_backends_loaded
    _gpu_backends_loaded = True
    from arfuse.kernels import flashinfer

    register_backend(flashinfer.backend)


def run_fused(args: FusedArgs) -> FusedResult:
    if args.input.is_cuda and not _gpu_backends_loaded:
        _load_gpu_backends()
    for backend in _BACKENDS:
        result = backend(args)
        if result is not None:
            return result
    return exact.unfused(args)
