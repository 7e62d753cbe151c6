"""`arfuse thresholds`: the fused-kernel threshold table in force for this machine."""

from __future__ import annotations

import json
import os
import subprocess

import click

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _this_gpu() -> tuple[str, tuple[int, int]] | None:
    """The GPU torch would use (the first of CUDA_VISIBLE_DEVICES), asked of nvidia-smi: the
    table needs no torch, and importing it would take seconds."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible is not None else "0"
    if not first or first.startswith("-"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", first, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    name, _, cap = lines[0].rpartition(",") if lines else ("", "", "")
    major, _, minor = cap.strip().partition(".")
    if not name.strip() or not (major.isdigit() and minor.isdigit()):
        return None
    return name.strip(), (int(major), int(minor))


def _fmt_mb(mb: float) -> str:
    return f"{mb:g} MB"


@click.command()
@click.option(
    "--capability",
    metavar="CC",
    help="compute capability to show, e.g. 9.0 or sm90 (default: this machine's GPU, "
    "or every entry when there is none)",
)
@click.option("--world-size", "world_size", type=int, help="show only this TP world size")
@click.option("--hidden", type=int, help="also print the limits in tokens for this hidden size")
@click.option(
    "--dtype",
    type=click.Choice(sorted(_DTYPES)),
    default="bf16",
    show_default=True,
    help="activation dtype for --hidden",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print the table as JSON, in the format ARFUSE_THRESHOLDS files take",
)
def thresholds(
    capability: str | None, world_size: int | None, hidden: int | None, dtype: str, as_json: bool
) -> None:
    """Print the threshold table in force: when the fused kernel runs one-shot, two-shot, or
    leaves the work to the unfused path (NCCL allreduce + compiled add+RMSNorm).

    Sizes are MB (MiB) of the per-rank activation [tokens, hidden]. Overrides: a JSON file named
    by ARFUSE_THRESHOLDS (same format as --json prints), or arfuse.thresholds.set_override()."""
    from arfuse import thresholds as th

    try:
        tbl = th.table()
        arch = th.arch_of(capability) if capability else None
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if hidden is not None and hidden < 1:
        raise click.BadParameter("must be >= 1", param_hint="--hidden")
    gpu = None
    if arch is None:
        gpu = _this_gpu()
        if gpu is not None:
            arch = th.arch_of(gpu[1])
    shown = {
        a: {ws: e for ws, e in per_world.items() if world_size in (None, ws)}
        for a, per_world in tbl.items()
        if arch in (None, a)
    }
    shown = {a: per_world for a, per_world in shown.items() if per_world}
    if as_json:
        click.echo(json.dumps(th.to_json(shown), indent=2))
        return
    path = os.environ.get(th.ENV_VAR)
    if gpu is not None:
        click.echo(f"this GPU: {gpu[0]} (compute capability {gpu[1][0]}.{gpu[1][1]} -> {arch})")
    elif arch is None:
        click.echo(
            "no CUDA GPU here (per nvidia-smi): showing every entry (pass --capability to pick one)"
        )
    click.echo(f"{th.ENV_VAR}: {path if path else 'not set (built-in defaults)'}")
    if not shown:
        click.echo(
            f"no entry for {arch}"
            + (f" at world size {world_size}" if world_size else "")
            + ": the fused kernel does not run; the unfused path does"
        )
        return
    torch_dtype = None
    if hidden is not None:  # token counts need the dtype's size: only here is torch imported
        import torch

        torch_dtype = getattr(torch, _DTYPES[dtype])
    for a, per_world in sorted(shown.items(), key=lambda kv: int(kv[0][2:])):
        for ws, limits in sorted(per_world.items()):
            line = (
                f"{a} TP{ws}: one-shot <= {_fmt_mb(limits.oneshot_max_mb)}, "
                f"fused <= {_fmt_mb(limits.fused_max_mb)}"
            )
            lim = None  # without --hidden; with it, never None: (a, ws) is in the table
            if hidden is not None and torch_dtype is not None:
                lim = th.lookup(a, ws, torch_dtype, hidden)
            if lim is not None:
                two = (
                    f"two-shot {lim.oneshot_max_tokens + 1}..{lim.fused_max_tokens}"
                    if lim.fused_max_tokens > lim.oneshot_max_tokens
                    else "no two-shot"
                )
                line += (
                    f" | hidden {hidden} {dtype}: one-shot <= {lim.oneshot_max_tokens} "
                    f"tokens, {two}, unfused > {lim.fused_max_tokens}"
                )
            click.echo(line)
            click.echo(f"    source: {limits.source}")
            for h, sub in limits.hidden:
                click.echo(
                    f"    hidden {h}: one-shot <= {_fmt_mb(sub.oneshot_max_mb)}, "
                    f"fused <= {_fmt_mb(sub.fused_max_mb)}  ({sub.source})"
                )
