"""FlashInfer IPC workspaces: created collectively, once per (group, hidden, dtype, max tokens).

A workspace is a set of CUDA IPC buffers (no multicast) every rank of the TP group maps. It is
created on the first call that needs it - after the caller's `torch.cuda.set_device`, with the
op's own group, never WORLD implicitly - and lives until `release_workspaces(group)`
(collective: call it on every rank before destroying the group) or process exit. Its pointers
never change, so a captured CUDA graph replays the fused op; create it before capture.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from arfuse.kernels.flashinfer import library

log = logging.getLogger(__name__)

#: FlashInfer's cap on one lamport buffer, in bytes.
MAX_COMM_BYTES = 2147483647 & ~((1 << 21) - 1)


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
    comm, _ = library.require()
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
    call it on every rank, before `destroy_process_group`. Returns how many were destroyed.

    A destroyed workspace is marked `released`; whoever held it creates a new one on its next
    call, so nothing else needs to be told."""
    done = 0
    for key, ws in list(_workspaces.items()):
        if group is not None and ws.group_name != group.group_name:
            continue
        del _workspaces[key]
        if ws.released:
            continue
        ws.released = True
        torch.cuda.synchronize()
        flag_ptr = int(ws.ptrs[-1].item())  # the 5-int flag block the create call mallocs
        comm, _ = library.require()
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
