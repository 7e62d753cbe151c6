"""The benchmark sweep, run on every rank: cases x strategies x token counts -> rows."""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from arfuse.bench import strategies as st
from arfuse.bench.timing import slowest, time_cuda_graph, time_eager

# 1 .. 16384: powers of two and the 1.5x points between them, to locate crossovers
DEFAULT_TOKENS = tuple(sorted({2**i for i in range(15)} | {3 * 2**i for i in range(13)}))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    hidden: int
    dtype: str
    residual: bool
    quant: str  # "none" | "fp8"

    @property
    def label(self) -> str:
        return (
            f"hidden {self.hidden}, {self.dtype}, residual {'on' if self.residual else 'off'}"
            f", quant {self.quant}"
        )


@dataclass
class Row:
    case: Case
    tokens: int
    mb: float  # per-rank activation entering the allreduce, MiB
    times_us: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    picked: str = ""  # what arfuse's dispatch ran

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("case"))
        return d


def token_counts(case: Case, tokens: tuple[int, ...], world_size: int, device) -> list[int]:
    """The requested counts plus every threshold +-1 for this case."""
    counts = set(tokens)
    if device.type == "cuda":
        from arfuse import thresholds

        cap = torch.cuda.get_device_capability(device)
        counts |= {
            t
            for t in thresholds.threshold_token_counts(
                cap, world_size, DTYPES[case.dtype], case.hidden
            )
            if 1 <= t <= max(tokens)
        }
    return sorted(counts)


def environment(device: torch.device, world_size: int, command: str) -> dict[str, Any]:
    env = {
        "world_size": world_size,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "host": platform.node(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(device)
        env["capability"] = "{}.{}".format(*torch.cuda.get_device_capability(device))
        env["cuda"] = torch.version.cuda
        from importlib import metadata

        try:
            env["flashinfer"] = metadata.version("flashinfer-python")
        except metadata.PackageNotFoundError:
            env["flashinfer"] = "not installed"
    else:
        env["card"] = f"CPU ({platform.processor() or platform.machine()}), gloo"
    return env


def big_table(device: torch.device, world_size: int, mb: float) -> dict:
    """A thresholds override whose workspace just fits this case's largest forced-kernel run
    (a workspace far beyond the sizes used is wasted memory and untested kernel territory)."""
    from arfuse import thresholds

    arch = thresholds.arch_of(torch.cuda.get_device_capability(device))
    return {
        arch: {
            world_size: {
                "oneshot_max_mb": mb,
                "fused_max_mb": mb,
                "source": "arfuse bench: forced kernel runs",
            }
        }
    }


def run_sweep(
    cases: list[Case],
    tokens: tuple[int, ...],
    strategies: tuple[str, ...],
    command: str,
    n_inner: int = 16,
    reps: int = 30,
) -> dict[str, Any]:
    """Runs on every rank of the default group; returns {"env", "rows"} (slowest rank)."""
    group = dist.group.WORLD
    world = dist.get_world_size()
    rank = dist.get_rank()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available() and dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    on_gpu = device.type == "cuda"
    plan = [(case, token_counts(case, tokens, world, device)) for case in cases]
    total = sum(len(counts) for _, counts in plan) * len(strategies)
    progress = _progress(total) if rank == 0 else None
    rows: list[Row] = []
    with torch.no_grad():
        for case, counts in plan:
            dtype = DTYPES[case.dtype]
            elem = torch.empty((), dtype=dtype).element_size()
            case_rows = [Row(case, t, t * case.hidden * elem / 2**20) for t in counts]
            for name in strategies:
                for row in case_rows:
                    # a forced kernel gets a workspace sized to this run, as the thresholds
                    # would size it if they allowed the kernel here (one sized for the largest
                    # run slowed small one-shot calls 2x at TP4, hidden 8192 on H200)
                    big = big_table(device, world, row.mb * 1.001) if on_gpu else None
                    with st.strategy_context(name, big):
                        _measure(row, name, case, dtype, device, group, on_gpu, n_inner, reps)
                    if on_gpu and name in st.FUSED:
                        from arfuse.kernels import flashinfer

                        flashinfer.release_workspaces(group)
                    if progress:
                        progress.advance(f"{case.label}: {name} @ {row.tokens} tokens")
            rows.extend(case_rows)
    if progress:
        progress.close()
    return {"env": environment(device, world, command), "rows": [r.to_json() for r in rows]}


def _measure(
    row: Row, name: str, case: Case, dtype, device, group, on_gpu: bool, n_inner: int, reps: int
) -> None:
    buffers = st.make_buffers(
        row.tokens, case.hidden, dtype, device, case.residual, case.quant == "fp8"
    )
    step = st.build(name, buffers, group)
    # every rank must agree to skip, or the collectives below would hang
    skip = torch.tensor([isinstance(step, str)], dtype=torch.int32, device=device)
    dist.all_reduce(skip, group=group)
    if skip.item() or isinstance(step, str):  # a str step already made skip nonzero
        row.times_us[name] = None
        row.notes[name] = step if isinstance(step, str) else "skipped on another rank"
        return
    # unfused strategies sum into their input, and so may the fused op (its unfused branch)
    refill = buffers.refill
    if name == "arfuse" and on_gpu:
        row.picked = st.picked(step)
    try:
        if on_gpu:
            us = time_cuda_graph(step, buffers.count, group, n_inner, reps, refill=refill)
        else:
            us = time_eager(step, buffers.count, group, refill=refill)
        row.times_us[name] = slowest(us, group, device)
    except Exception as e:  # noqa: BLE001 - one failed cell must not lose the sweep
        row.times_us[name] = None
        row.notes[name] = f"{type(e).__name__}: {str(e)[:300]}"
        if on_gpu:
            torch.cuda.synchronize()
        dist.barrier(group=group)


class _progress:
    """Rank 0's progress line (rich), so a long sweep shows where it is."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(
            TextColumn("[bold]bench[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task("", total=total)

    def advance(self, what: str) -> None:
        self._p.update(self._task, advance=1, description=what)
        if not self._p.console.is_terminal:  # a log file: one line per finished cell
            print(f"bench: done {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._p.stop()
