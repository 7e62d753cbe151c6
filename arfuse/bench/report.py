"""Bench results as a terminal table, markdown, JSON and a log-log plot.

Every speedup names what it divides by: `best unfused` is the faster of unfused_eager and
unfused_compiled at that size; `best available` is the fastest of every strategy measured.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from arfuse.bench.strategies import ALL, FUSED, UNFUSED


def _min(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def best_unfused(row: dict) -> tuple[str, float] | None:
    got = [(n, row["times_us"].get(n)) for n in UNFUSED if row["times_us"].get(n) is not None]
    return min(got, key=lambda x: x[1]) if got else None


def derived(row: dict) -> dict[str, Any]:
    """Speedups of a row: best fused and arfuse's pick vs the best unfused; pick vs best."""
    t = row["times_us"]
    unfused = best_unfused(row)
    fused = _min(t.get(n) for n in FUSED)
    best = _min(t.get(n) for n in ALL)
    out: dict[str, Any] = {"best_unfused": unfused[0] if unfused else None}
    if unfused and fused:
        out["fused_speedup"] = unfused[1] / fused
    if unfused and t.get("arfuse"):
        out["arfuse_speedup"] = unfused[1] / t["arfuse"]
    if best and t.get("arfuse"):
        out["arfuse_vs_best"] = best / t["arfuse"]
    return out


def group_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["hidden"], r["dtype"], r["residual"], r["quant"])].append(r)
    return dict(groups)


def _fmt(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:.1f}{unit}" if unit != "x" else f"{v:.2f}x"


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        f"# arfuse bench: {env.get('card')} x{env['world_size']} (TP={env['world_size']})",
        "",
        f"- card: {env.get('card')} (compute capability {env.get('capability', 'n/a')}), "
        f"world size {env['world_size']}",
        f"- torch {env['torch']}, CUDA {env.get('cuda', 'n/a')}, FlashInfer "
        f"{env.get('flashinfer', 'n/a')}, Python {env['python']}",
        f"- date {env['date']}",
        f"- command: `{env['command']}`",
        "- method: us per call, median over CUDA-graph replays of 16 calls on rotating "
        "buffers (slowest rank), after warm-up; `best unfused` = faster of unfused_eager "
        "and unfused_compiled at that size; speedups divide the best unfused time by the "
        "fused (or arfuse) time; `pick/best` = fastest measured strategy / arfuse's pick "
        "(1.00x = arfuse picked the best).",
        "",
    ]
    for (hidden, dtype, residual, quant), rows in group_rows(result["rows"]).items():
        lines += [
            f"## hidden {hidden}, {dtype}, residual {'on' if residual else 'off'}, quant {quant}",
            "",
            "| tokens | MB | " + " | ".join(ALL) + " | arfuse ran | best unfused | "
            "best fused speedup | arfuse speedup | pick/best |",
            "|" + "---|" * (len(ALL) + 7),
        ]
        for r in rows:
            d = derived(r)
            lines.append(
                f"| {r['tokens']} | {r['mb']:.3g} | "
                + " | ".join(_fmt(r["times_us"].get(n)) for n in ALL)
                + f" | {r.get('picked') or 'n/a'} | {d['best_unfused'] or 'n/a'} | "
                f"{_fmt(d.get('fused_speedup'), 'x')} | {_fmt(d.get('arfuse_speedup'), 'x')} | "
                f"{_fmt(d.get('arfuse_vs_best'), 'x')} |"
            )
        notes = sorted({f"{n}: {msg}" for r in rows for n, msg in r.get("notes", {}).items()})
        if notes:
            lines += ["", "Not measured: " + "; ".join(notes[:6])]
        lines.append("")
    return "\n".join(lines)


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for (hidden, dtype, residual, quant), rows in group_rows(result["rows"]).items():
        table = Table(
            title=f"us per call - hidden {hidden}, {dtype}, residual "
            f"{'on' if residual else 'off'}, quant {quant} "
            f"({result['env'].get('card')}, TP={result['env']['world_size']})"
        )
        for col in ("tokens", "MB", *ALL, "ran", "fused/unfused", "pick/best"):
            table.add_column(col, justify="right")
        for r in rows:
            d = derived(r)
            table.add_row(
                str(r["tokens"]),
                f"{r['mb']:.3g}",
                *(_fmt(r["times_us"].get(n)) for n in ALL),
                r.get("picked") or "",
                _fmt(d.get("fused_speedup"), "x"),
                _fmt(d.get("arfuse_vs_best"), "x"),
            )
        console.print(table)


def plot(result: dict, path: Path, thresholds_mb: dict | None = None) -> Path | None:
    """Time vs message size per strategy, log-log, one panel per case; the thresholds in force
    for each panel's hidden size (`thresholds_mb`: hidden -> {label: MB}) marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = group_rows(result["rows"])
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.8), squeeze=False)
    for ax, ((hidden, dtype, residual, quant), rows) in zip(axes[0], groups.items(), strict=True):
        for name in ALL:
            pts = [
                (r["mb"], r["times_us"][name]) for r in rows if r["times_us"].get(name) is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=name)
        at: dict[float, list[str]] = {}
        for label, mb in (thresholds_mb or {}).get(hidden, {}).items():
            at.setdefault(mb, []).append(label)
        for mb, labels in at.items():
            label = " = ".join(labels)
            if mb and mb > 0:
                ax.axvline(mb, linestyle="--", color="grey", linewidth=1)
                ax.text(
                    mb,
                    ax.get_ylim()[1] if ax.lines else 1,
                    f" {label}",
                    rotation=90,
                    va="top",
                    fontsize=7,
                    color="grey",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("activation per rank (MB)")
        ax.set_ylabel("us per call (median, slowest rank)")
        ax.set_title(
            f"hidden {hidden}, {dtype}, residual {'on' if residual else 'off'}, {quant}", fontsize=9
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    env = result["env"]
    fig.suptitle(
        f"allreduce + add + RMSNorm: {env.get('card')}, TP={env['world_size']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict, out_dir: Path, stem: str, thresholds_mb: dict | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(result, indent=1))
    paths[1].write_text(markdown(result))
    png = plot(result, out_dir / f"{stem}.png", thresholds_mb)
    return paths + ([png] if png else [])


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
