"""`arfuse bench` and `arfuse tune`."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from arfuse.bench.strategies import ALL

HF_MODELS = ("llama", "qwen3", "gemma3", "mistral")  # arfuse.examples.hf_models.MODELS


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give comma-separated integers", param_hint=what
        ) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give integers >= 1", param_hint=what)
    return values


# NVLink multicast stays off on every rank (DESIGN.md: Environments)
NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def _ranks(backend: str, world_size: int | None, gpus: int) -> tuple[str, int]:
    """(backend, world size) to spawn: nccl over every visible GPU with 2+, else 2 gloo ranks."""
    if backend == "auto":
        backend = "nccl" if gpus >= 2 else "gloo"
    world = world_size or (gpus if backend == "nccl" else 2)
    if backend == "nccl" and world > gpus:
        raise click.UsageError(f"--world-size {world} but only {gpus} GPUs are visible")
    if world < 2:
        raise click.UsageError("allreduce needs --world-size >= 2")
    return backend, world


def _spawn(world: int, backend: str, timeout: float, fn, *args):
    """Rank 0's result of `fn(*args)` run on `world` spawned ranks, multicast off."""
    from arfuse.process_group import SpawnedGroup

    os.environ.update(NO_MULTICAST)
    with SpawnedGroup(world, backend=backend, timeout=timeout, env=NO_MULTICAST) as group:
        return group.run(fn, *args)[0]


def run_bench_worker(cases, tokens, strategies, command, n_inner, reps):
    from arfuse.bench.sweep import run_sweep

    return run_sweep(cases, tokens, strategies, command, n_inner, reps)


@click.command()
@click.option(
    "--world-size",
    type=int,
    default=None,
    help="ranks to spawn (default: every visible GPU; 2 on CPU). Ignored under "
    "torchrun, which sets it",
)
@click.option(
    "--tokens",
    default=None,
    help="token counts (default: 1..16384, powers of two and the 1.5x points "
    "between); every threshold +-1 is added on GPU",
)
@click.option(
    "--hidden",
    default=None,
    help="hidden sizes [default: 4096,8192; 64 for a --backend gloo smoke run]",
)
@click.option(
    "--dtype", "dtypes", default="bf16", show_default=True, help="comma-separated: bf16, fp16, fp32"
)
@click.option(
    "--residual", type=click.Choice(["on", "off", "both"]), default="on", show_default=True
)
@click.option(
    "--quant", type=click.Choice(["none", "fp8", "both"]), default="none", show_default=True
)
@click.option(
    "--strategies", default=",".join(ALL), show_default=True, help="which of: " + ", ".join(ALL)
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
)
@click.option("--name", default=None, help="file stem (default: <card>_tp<N>_<date>)")
@click.option(
    "--backend",
    type=click.Choice(["auto", "nccl", "gloo"]),
    default="auto",
    show_default=True,
    help="auto: nccl with 2+ GPUs, else refuse; gloo: a short CPU smoke run of the "
    "harness (no GPU kernel, numbers mean nothing)",
)
@click.option("--reps", type=int, default=20, show_default=True, help="timed graph replays")
@click.option(
    "--n-inner", type=int, default=16, show_default=True, help="calls captured per CUDA graph"
)
@click.option(
    "--timeout",
    type=float,
    default=3600,
    show_default=True,
    help="seconds before a hung sweep is killed",
)
@click.option(
    "--decoder",
    is_flag=True,
    help="instead: time a decode step of a TP decoder stack (Llama-8B-like shapes), "
    "torch.compile with vs without arfuse, at --tokens (default powers of 2 up to "
    "1024, and 8192)",
)
@click.option(
    "--model",
    type=click.Choice(["example", *HF_MODELS]),
    default="example",
    show_default=True,
    help="with --decoder: arfuse's TP decoder, or an HF transformers model under "
    "DTensor TP (random weights, 8B/12B-class shapes; needs transformers)",
)
@click.option(
    "--model-size",
    type=click.Choice(["real", "tiny"]),
    default=None,
    help="with --decoder --model: real shapes [default] or tiny ones (the default "
    "with --backend gloo)",
)
@click.option(
    "--layers", type=int, default=None, help="with --decoder [default: 4; 1 with --backend gloo]"
)
@click.option(
    "--ranges",
    "split_points",
    default="auto",
    show_default=True,
    help="with --decoder: arfuse.compile's split points, e.g. 32,256,1025 (each "
    "fusion threshold must be one of them)",
)
@click.option(
    "--local-work",
    is_flag=True,
    help="instead: on ONE rank, time the fused op's unfused branch against the same "
    "all_reduce + add + RMSNorm (+FP8) compiled by plain Inductor, under a CUDA graph and "
    "eagerly, and split the gap into copy, epilogue kernel and host overhead",
)
def bench(
    world_size,
    tokens,
    hidden,
    dtypes,
    residual,
    quant,
    strategies,
    out_dir,
    name,
    backend,
    reps,
    n_inner,
    timeout,
    decoder,
    model,
    model_size,
    layers,
    split_points,
    local_work,
):
    """Time allreduce + add + RMSNorm: unfused (eager / compiled) vs fused one-shot / two-shot
    vs arfuse's dispatch, per token count; write markdown + JSON + PNG.

    Spawns one process per GPU itself (or runs under torchrun). Times are us per call: the
    median over CUDA-graph replays of many calls on rotating buffers, slowest rank."""
    import torch

    from arfuse.bench import report
    from arfuse.bench.sweep import DEFAULT_TOKENS, DTYPES, Case

    splits = "auto" if split_points == "auto" else _ints(split_points, "--ranges")
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    gpus = torch.cuda.device_count()
    need, what = (1, "its local work") if local_work else (2, "the fused GPU kernel")
    if not torchrun and backend == "auto" and gpus < need:
        raise click.UsageError(
            f"arfuse bench times {what} and needs {need}+ GPUs; {gpus} visible. For a short "
            "CPU smoke run of the harness (gloo, small sizes, numbers mean nothing) add "
            "--backend gloo"
        )
    smoke = backend == "gloo" and not torchrun
    token_counts = _ints(tokens, "--tokens") if tokens else (1, 8, 64) if smoke else DEFAULT_TOKENS
    hiddens = _ints(hidden or ("64" if smoke else "4096,8192"), "--hidden")
    dtype_names = [d.strip() for d in dtypes.split(",") if d.strip()]
    bad = [d for d in dtype_names if d not in DTYPES]
    if bad or not dtype_names:
        raise click.BadParameter(
            f"{bad or dtypes!r}: choose from {list(DTYPES)}", param_hint="--dtype"
        )
    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    if not chosen or set(chosen) - set(ALL):
        raise click.BadParameter(
            f"unknown {sorted(set(chosen) - set(ALL))}; choose from {ALL}",
            param_hint="--strategies",
        )
    residuals = {"on": [True], "off": [False], "both": [True, False]}[residual]
    quants = {"none": ["none"], "fp8": ["fp8"], "both": ["none", "fp8"]}[quant]
    cases = [
        Case(h, d, r, q) for h in hiddens for d in dtype_names for r in residuals for q in quants
    ]
    command = "arfuse bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    args = (cases, token_counts, chosen, command, n_inner, reps)
    if local_work:
        if decoder:
            raise click.UsageError("--local-work and --decoder are two different benchmarks")
        return _local_bench(
            backend, gpus, cases, token_counts, command, n_inner, reps, out_dir, name, timeout
        )
    if decoder:
        decode_tokens = (
            token_counts
            if tokens
            else (1, 4)
            if smoke
            else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 8192)
        )
        size = model_size or ("tiny" if smoke else "real")
        return _decoder_bench(
            world_size,
            backend,
            decode_tokens,
            layers or (1 if smoke else 4),
            splits,
            out_dir,
            name,
            command,
            timeout,
            model,
            size,
            smoke,
        )
    if torchrun:
        result = _under_torchrun(backend, args)
        if result is None:
            return
    else:
        backend, world = _ranks(backend, world_size, gpus)
        click.echo(
            f"arfuse bench: {len(cases)} case(s) x {len(token_counts)}+ token counts x "
            f"{len(chosen)} strategies on {world} ranks ({backend})",
            err=True,
        )
        result = _spawn(world, backend, timeout, run_bench_worker, *args)
    report.print_table(result)
    env = result["env"]
    stem = name or "{}_tp{}_{}".format(
        env.get("card", "cpu").split("(")[0].strip().replace(" ", "-").lower(),
        env["world_size"],
        env["date"][:10],
    )
    marks = _threshold_marks(result)
    paths = report.write(result, out_dir, stem, marks)
    for path in paths:
        click.echo(f"wrote {path}")
    if not any(p.suffix == ".png" for p in paths):
        click.echo("no plot: matplotlib is not installed (pip install 'arfuse[plot]')", err=True)


def _local_bench(backend, gpus, cases, tokens, command, n_inner, reps, out_dir, name, timeout):
    """`--local-work`: one spawned rank (NCCL on GPU 0, or gloo for a CPU smoke run)."""
    from arfuse.bench import local

    backend = "nccl" if backend == "auto" else backend
    if backend == "nccl" and gpus < 1:
        raise click.UsageError("--local-work --backend nccl needs a GPU; none is visible")
    click.echo(
        f"arfuse bench --local-work: {len(cases)} case(s) x {len(tokens)} token counts on one "
        f"rank ({backend})",
        err=True,
    )
    result = _spawn(
        1, backend, timeout, local.run_local_worker, cases, tokens, command, n_inner, reps
    )
    text = local.markdown(result)
    click.echo(text)
    env = result["env"]
    stem = name or "local_work_{}_{}".format(
        env.get("card", "cpu").split("(")[0].strip().replace(" ", "-").lower(), env["date"][:10]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    click.echo(f"wrote {out_dir / stem}.md and .json")


def run_decoder_worker(tokens, layers, splits, model, size, smoke):
    from arfuse.bench.decoder import run_decoder_sweep

    shapes = {"hidden": 256, "intermediate": 512, "heads": 4} if smoke else {}
    return run_decoder_sweep(tokens, layers, ranges=splits, model=model, size=size, **shapes)


def _decoder_bench(
    world_size,
    backend,
    tokens,
    layers,
    splits,
    out_dir,
    name,
    command,
    timeout,
    model="example",
    size="real",
    smoke=False,
):
    import torch

    from arfuse.bench.sweep import environment

    backend, world = _ranks(backend, world_size, torch.cuda.device_count())
    click.echo(
        f"arfuse bench --decoder: {model} ({size if model != 'example' else 'example'}), "
        f"{layers} layer(s), tokens {list(tokens)}, {world} ranks ({backend}); 4 "
        "compiled variants per size",
        err=True,
    )
    rows = _spawn(
        world, backend, timeout, run_decoder_worker, tokens, layers, splits, model, size, smoke
    )
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    result = {"env": environment(device, world, command), "rows": rows}
    e = result["env"]
    lines = [
        f"# Decode step, TP decoder stack: {e.get('card')} x{world}",
        "",
        f"- {layers} layers, {rows[0].get('shapes')}, bf16, random weights",
        f"- torch {e['torch']}, FlashInfer {e.get('flashinfer', 'n/a')}, date {e['date']}",
        f"- command: `{command}`",
        "- us per step: median over "
        + ("CUDA-graph replays of the compiled call" if backend == "nccl" else "eager loops (CPU)")
        + ", slowest rank",
        f"- chains fused by arfuse over all compiled graphs: {rows[0].get('fused_ops')}",
        "",
        f"- arfuse.compile ranges ({splits!r}): {rows[0].get('ranges')}",
        "- generated code (modules, persistent reductions, hash): "
        + "; ".join(
            f"{k}: {v['modules']}, {v['persistent_reductions']}, {v['sha1']}"
            for k, v in rows[0].get("codegen", {}).items()
        ),
        "",
        "rel L2: vs torch.compile's output. bounds off: `arfuse.compile(..., "
        "bound_symbols=False)`.",
        "",
        "| tokens | torch.compile | + arfuse pass | speedup | rel L2 | arfuse.compile "
        "(ranges) | speedup | rel L2 | bounds off | speedup | rel L2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r['tokens']}", f"{r['compile_us']:.1f}"]
        for v in ("compile+arfuse", "arfuse.compile", "arfuse.compile bounds off"):
            cells += [f"{r[v + '_us']:.1f}", f"{r[v + '_speedup']:.2f}x", f"{r[v + '_rel_l2']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    click.echo(text)
    stem = name or (
        f"decoder_tp{world}_{e['date'][:10]}"
        if model == "example"
        else f"decoder_{model}_tp{world}_{e['date'][:10]}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    click.echo(f"wrote {out_dir / stem}.md and .json")


def _under_torchrun(backend, args):
    import torch
    import torch.distributed as dist

    from arfuse.bench.sweep import run_sweep

    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    result = run_sweep(*args)
    rank = dist.get_rank()
    dist.destroy_process_group()
    return result if rank == 0 else None


def _threshold_marks(result: dict) -> dict:
    env = result["env"]
    if "capability" not in env:
        return {}
    from arfuse import thresholds

    major, minor = (int(x) for x in env["capability"].split("."))
    found = thresholds.entry((major, minor), env["world_size"])
    if found is None:
        return {}
    return {
        h: {
            "one-shot max": found.for_hidden(h).oneshot_max_mb,
            "fused max": found.for_hidden(h).fused_max_mb,
        }
        for h in {r["hidden"] for r in result["rows"]}
    }


@click.command()
@click.argument("results", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the thresholds JSON here (load it with ARFUSE_THRESHOLDS=PATH)",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.02,
    show_default=True,
    help="the dispatched strategy may be this much slower than the best, at most",
)
def tune(results, out_file, tolerance):
    """Choose thresholds from `arfuse bench` JSON files; print the diff against the table in
    force; write the thresholds JSON the pass loads."""
    from arfuse import thresholds
    from arfuse.bench.tune import load, to_table
    from arfuse.bench.tune import tune as run_tune

    if not results:
        raise click.UsageError(
            "give one or more bench JSON files (`arfuse bench` writes them under bench/results/)"
        )
    try:
        loaded, skipped = load(results)
        choices = run_tune([data for _, data in loaded], tolerance)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    for note in skipped:
        click.echo(note, err=True)
    source = "tuned by arfuse tune from " + ", ".join(p.name for p, _ in loaded)
    table = to_table(choices, source)
    current = thresholds.to_json()
    for c in choices:
        old = current.get(c.arch, {}).get(str(c.world_size))
        if old and c.hidden is not None:
            old = old.get("hidden", {}).get(str(c.hidden), old)
        was = f"{old['oneshot_max_mb']:g} / {old['fused_max_mb']:g} MB" if old else "no entry"
        flag = (
            ""
            if c.within_tolerance
            else f"  (!) no thresholds keep every size within {tolerance:.0%}"
        )
        scope = "all hidden" if c.hidden is None else f"hidden {c.hidden}"
        click.echo(
            f"{c.arch} TP{c.world_size} {scope}: one-shot max / fused max  {was}  ->  "
            f"{c.oneshot_max_mb:g} / {c.fused_max_mb:g} MB   worst {c.worst_ratio:.3f}x "
            f"of best at {c.worst_at} over {c.sizes} sizes{flag}"
        )
    if out_file:
        out_file.write_text(json.dumps(table, indent=2) + "\n")
        click.echo(f"wrote {out_file}; use it with ARFUSE_THRESHOLDS={out_file}")
    else:
        click.echo(json.dumps(table, indent=2))
