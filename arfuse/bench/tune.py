"""Thresholds from measurements: per (arch, world size), the one-shot and fusion limits (MB)
under which the strategy arfuse dispatches is never slower than the best measured strategy by
more than `tolerance` at any measured size.

The dispatch policy being tuned (see arfuse.kernels.flashinfer.choose_strategy):
one-shot while MB <= oneshot_max, two-shot (one-shot at tokens <= world size) while
MB <= fused_max, the unfused path above. The unfused path is costed as unfused_compiled (NCCL +
compiled add+RMSNorm), the fastest unfused strategy the fallback can be.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arfuse.bench.strategies import ALL
from arfuse.jsonfile import read_json

SLACK = 1 + 1e-9  # MB limits sit a hair above a measured size so MB -> tokens keeps it
_TIMES = "each time is a positive number of microseconds, or null for a strategy that did not run"


def load(paths: Iterable[Path | str]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Read `arfuse bench` JSON results: ([(path, result)], [note per file skipped]).

    Every row is checked here, so `tune` gets only rows it can use; anything else is a
    ValueError naming the file and the row. Decode-step results (`arfuse bench --decoder`) and
    one-rank local-work results (`--local-work`), which `bench/results/*.json` also matches,
    carry no per-strategy times and are skipped."""
    loaded, skipped = [], []
    for path in map(Path, paths):
        data = read_json(path, str(path), "give the JSON file `arfuse bench` wrote")
        other = _other_bench(data)
        if other:
            skipped.append(
                f"skipped {path}: an `arfuse bench {other}` result (no per-strategy "
                "times to tune from)"
            )
            continue
        check(data, str(path))
        loaded.append((path, data))
    if not loaded:
        raise ValueError(
            "no `arfuse bench` strategy sweep among the files given (only "
            "`--decoder` / `--local-work` results); run `arfuse bench` without them first"
        )
    return loaded, skipped


def _other_bench(data: Any) -> str | None:
    """'--decoder' or '--local-work' when `data` is such a result, else None."""
    rows = data.get("rows") if isinstance(data, dict) else None
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
        return None
    if any("times_us" in r for r in rows):
        return None
    if all("layers" in r for r in rows):
        return "--decoder"
    if all("graph_us" in r and "eager_us" in r for r in rows):
        return "--local-work"
    return None


def check(result: Any, where: str) -> None:
    """ValueError naming `where` and the row when `result` is not a usable bench result."""
    if not (
        isinstance(result, dict)
        and isinstance(result.get("env"), dict)
        and isinstance(result.get("rows"), list)
    ):
        raise ValueError(
            f'{where}: not an `arfuse bench` JSON result (an object with "env" and "rows")'
        )
    env = result["env"]
    if "capability" not in env:
        raise ValueError(
            f"{where}: bench result has no GPU capability (a CPU smoke run?); tune "
            "needs GPU measurements"
        )
    cap = env["capability"]
    parts = cap.split(".") if isinstance(cap, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f'{where}: env.capability is {cap!r}; write it as "major.minor", e.g. "9.0"'
        )
    if not _positive_int(env.get("world_size")):
        raise ValueError(
            f"{where}: env.world_size is {env.get('world_size')!r}; it must be the "
            "number of ranks (an integer >= 1)"
        )
    for i, row in enumerate(result["rows"]):
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"{where}: row {i}: {problem}")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"is {type(row).__name__}, not an object"
    for key in ("tokens", "hidden"):
        if not _positive_int(row.get(key)):
            return f"{key} is {row.get(key)!r}; it must be an integer >= 1"
    if not _positive_number(row.get("mb")):
        return f"mb is {row.get('mb')!r}; it must be the activation size in MB, a number > 0"
    if not isinstance(row.get("dtype"), str):
        return f'dtype is {row.get("dtype")!r}; it must be a name such as "bf16"'
    times = row.get("times_us")
    if not isinstance(times, dict):
        return (
            f"times_us is {times!r}; it must map strategy names to times ({_TIMES})"
            if "times_us" in row
            else f"has no times_us ({_TIMES})"
        )
    for name, t in times.items():
        if t is not None and not _positive_number(t):
            return f"times_us[{name!r}] is {t!r}; {_TIMES}"
    return None


@dataclass(frozen=True)
class Choice:
    arch: str
    world_size: int
    hidden: int | None  # None: the entry for every hidden size without its own
    oneshot_max_mb: float
    fused_max_mb: float
    worst_ratio: float  # policy time / best measured time, worst over measured sizes
    worst_at: str  # where the worst ratio occurs
    within_tolerance: bool
    sizes: int


def _policy_time(row: dict, world: int, oneshot_max: float, fused_max: float) -> float:
    t = row["times_us"]
    get = lambda n: t.get(n) if t.get(n) is not None else math.inf  # noqa: E731
    if row["mb"] <= oneshot_max:
        return get("fused_oneshot")
    if row["mb"] <= fused_max:
        return get("fused_twoshot") if row["tokens"] > world else get("fused_oneshot")
    fallback = get("unfused_compiled")
    return fallback if fallback < math.inf else get("unfused_eager")


def _best(row: dict) -> float:
    vals = [row["times_us"].get(n) for n in ALL if n != "arfuse"]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else math.inf


def choose(
    rows: list[dict], arch: str, world: int, tolerance: float = 0.02, hidden: int | None = None
) -> Choice:
    """Search every (oneshot_max, fused_max) pair over the measured sizes."""
    rows = [r for r in rows if _best(r) < math.inf]
    if not rows:
        raise ValueError(f"no measured rows for {arch} TP{world}; run `arfuse bench` first")
    sizes = sorted({0.0} | {r["mb"] for r in rows})
    best_key, best = None, None
    for one, fused in itertools.combinations_with_replacement(sizes, 2):
        ratios = [(_policy_time(r, world, one * SLACK, fused * SLACK) / _best(r), r) for r in rows]
        worst, at = max(ratios, key=lambda x: x[0])
        if math.isinf(worst):
            continue
        # feasible pairs: closest to the per-size best overall; otherwise: the least bad worst case
        violates = worst > 1 + tolerance
        total = sum(x for x, _ in ratios)
        key = (violates, worst if violates else total, total, -fused)
        if best_key is None or key < best_key:
            best_key = key
            best = Choice(
                arch,
                world,
                hidden,
                round(one * SLACK, 9) if one else 0.0,
                round(fused * SLACK, 9) if fused else 0.0,
                worst,
                f"{at['tokens']} tokens, hidden {at['hidden']}, {at['dtype']}",
                worst <= 1 + tolerance,
                len(rows),
            )
    if best is None:
        raise ValueError(
            f"{arch} TP{world}: no threshold pair gives a finite time at every "
            "size (a strategy failed at every size?)"
        )
    return best


def tune(results: list[dict], tolerance: float = 0.02) -> list[Choice]:
    """Per (arch, world size): one Choice over every measured hidden size together (the
    entry for unmeasured sizes) and one per measured hidden size. `results` as `load` reads
    them (checked)."""
    from arfuse import thresholds

    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(
            f"tolerance {tolerance!r}: give a fraction >= 0 (0.02 = 2% slower than "
            "the best at most)"
        )
    groups: dict[tuple[str, int], list[dict]] = {}
    for result in results:
        env = result["env"]
        major, minor = (int(x) for x in env["capability"].split("."))
        key = (thresholds.arch_of((major, minor)), int(env["world_size"]))
        groups.setdefault(key, []).extend(result["rows"])
    choices = []
    for (arch, world), rows in sorted(groups.items()):
        choices.append(choose(rows, arch, world, tolerance))
        for hidden in sorted({r["hidden"] for r in rows}):
            choices.append(
                choose([r for r in rows if r["hidden"] == hidden], arch, world, tolerance, hidden)
            )
    return choices


def to_table(choices: list[Choice], source: str) -> dict:
    """The override-file JSON (`ARFUSE_THRESHOLDS`) for the choices."""
    table: dict = {}
    for c in choices:
        entry = {
            "oneshot_max_mb": c.oneshot_max_mb,
            "fused_max_mb": c.fused_max_mb,
            "source": f"{source}; worst {c.worst_ratio:.3f}x of best at {c.worst_at}",
        }
        per_world = table.setdefault(c.arch, {})
        if c.hidden is None:
            per_world[str(c.world_size)] = {**entry, **per_world.get(str(c.world_size), {})}
        else:
            slot = per_world.setdefault(str(c.world_size), {})
            slot.setdefault("hidden", {})[str(c.hidden)] = entry
    return table
