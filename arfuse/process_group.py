"""A reusable group of spawned ranks that runs functions on every rank.

Spawning a gloo process group costs seconds; tests run hundreds of checks. A `SpawnedGroup`
starts `world_size` processes once, initialises a real `torch.distributed` group in each, and
then runs any importable function on all ranks, returning the per-rank results. Every call has a
timeout: a hang (a rank that never reaches a collective) fails fast and tears the group down
instead of eating the CI budget.

    with SpawnedGroup(world_size=2) as group:
        results = group.run(my_module.check_fusion, "bf16")   # [rank0_result, rank1_result]
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class RankError(RuntimeError):
    """A function raised on one or more ranks; the message carries each rank's traceback."""


@dataclass(frozen=True)
class _Failure:
    rank: int
    traceback: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    env: dict[str, str],
    tasks: Any,
    results: Any,
) -> None:
    os.environ.update(env)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args, kwargs = task
        try:
            results.put((rank, fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - shipped to the parent with its traceback
            results.put((rank, _Failure(rank, traceback.format_exc())))
    dist.destroy_process_group()
    # Tearing down an interpreter that loaded Inductor takes seconds, and the parent waits for
    # it; every result is delivered, so leave at once.
    results.close()
    results.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class SpawnedGroup:
    """`world_size` spawned processes, each a rank of a real process group (gloo by default)."""

    def __init__(
        self,
        world_size: int = 2,
        backend: str = "gloo",
        timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.backend = backend
        self.timeout = timeout
        ctx = mp.get_context("spawn")
        port = _free_port()
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_worker,
                daemon=True,
                args=(r, world_size, port, backend, dict(env or {}), self._tasks[r], self._results),
            )
            for r in range(world_size)
        ]
        for p in self._procs:
            p.start()

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """Run `fn(*args, **kwargs)` on every rank; return the results ordered by rank.

        `fn` must be importable by name (a module-level function). Raises `RankError` with every
        failing rank's traceback, or `TimeoutError` (after killing the group) on a hang.
        """
        if not self.alive:
            raise RuntimeError("the spawned group is closed or one of its ranks died")
        for q in self._tasks:
            q.put((fn, args, kwargs))
        out: dict[int, Any] = {}
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        name = getattr(fn, "__name__", repr(fn))
        while len(out) < self.world_size:
            try:
                rank, value = self._results.get(timeout=1.0)
            except queue.Empty:
                missing = sorted(set(range(self.world_size)) - set(out))
                if not self.alive:
                    codes = [p.exitcode for p in self._procs]
                    self.close(force=True)
                    raise RankError(
                        f"{name}: a rank died (exit codes {codes}); no result from ranks {missing}"
                    ) from None
                if time.monotonic() > deadline:
                    self.close(force=True)
                    raise TimeoutError(
                        f"{name} did not finish on ranks {missing} within "
                        f"{limit:.0f} s; the group was killed"
                    ) from None
                continue
            out[rank] = value
        failures = [v for v in out.values() if isinstance(v, _Failure)]
        if failures:
            raise RankError("\n".join(f"--- rank {f.rank} ---\n{f.traceback}" for f in failures))
        return [out[r] for r in range(self.world_size)]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def close(self, force: bool = False) -> None:
        if not force:
            for q in self._tasks:
                with contextlib.suppress(ValueError, OSError):
                    q.put(None)
            for p in self._procs:
                p.join(timeout=10)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = []

    def __enter__(self) -> SpawnedGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
