"""What users feel: one decode step of a TP decoder stack, torch.compile with vs without arfuse.

The stack is `arfuse.examples.TPDecoder` with Llama-8B-like shapes (hidden 4096, intermediate
14336, 32 heads; random weights; `num_layers` layers, default 4) in bf16. A decode step of T
tokens is one forward of [T, hidden]. Both variants are compiled once with the token dim
dynamic; each step is timed as CUDA-graph replays of the compiled call (graphs on, as serving
engines run decode), median, slowest rank. A third variant, `arfuse.compile(ranges=...)`,
compiles once per num_tokens range: fused below the fusion threshold, plain Inductor above.
A fourth, the same without narrowing the token symbol's bounds per range (`bound_symbols=False`),
shows what the bounds buy; the code Inductor generated for each is summarised too (how many
modules and persistent reductions, and whether the two differ).
"""

from __future__ import annotations

import contextlib
import hashlib
import re

import torch
import torch.distributed as dist

from arfuse.bench.timing import slowest, time_cuda_graph, time_eager


def run_decoder_sweep(tokens: tuple[int, ...], num_layers: int = 4, hidden: int = 4096,
                      intermediate: int = 14336, heads: int = 32, n_inner: int = 4,
                      reps: int = 20, ranges: list[int] | str = "auto") -> list[dict]:
    import arfuse
    from arfuse.examples import build_tp_decoder

    # compile afresh: a graph served from the FX cache skips the pass and its counters
    torch._inductor.config.fx_graph_cache = False
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    model, make_inputs = build_tp_decoder(num_layers, hidden, intermediate, heads,
                                          dtype=torch.bfloat16, device=device)
    fusion = arfuse.AllReduceFusionPass()
    variants = {
        "compile": torch.compile(model),
        "compile+arfuse": torch.compile(model, options={"post_grad_custom_post_pass": fusion}),
        "arfuse.compile": arfuse.compile(model, ranges=ranges),
        "arfuse.compile bounds off": arfuse.compile(model, ranges=ranges, bound_symbols=False),
    }
    codegen: dict[str, list[str]] = {name: [] for name in variants}
    group = dist.group.WORLD
    rows = []
    with torch.no_grad():
        for t in tokens:
            buffers = [make_inputs(t + 1000 * k)[0][:t] for k in range(2)]
            for x in buffers:
                torch._dynamo.maybe_mark_dynamic(x, 0)
            row = {"tokens": t, "layers": num_layers, "hidden": hidden}
            outs = {}
            for name, compiled in variants.items():
                step = lambda i, c=compiled: c(buffers[i])  # noqa: E731
                with _generated_code(codegen[name]):
                    outs[name] = compiled(buffers[0]).float()
                us = time_cuda_graph(step, 2, group, n_inner, reps) if on_gpu else \
                    time_eager(step, 2, group)
                row[f"{name}_us"] = slowest(us, group, device)
            for name in list(variants)[1:]:
                diff = (outs[name] - outs["compile"]).norm() / outs["compile"].norm()
                row[f"{name}_rel_l2"] = float(diff)
                row[f"{name}_speedup"] = row["compile_us"] / row[f"{name}_us"]
            rows.append(row)
    rows and rows[0].update(fused_ops=fusion.num_matches,
                            ranges=[str(r) for r in variants["arfuse.compile"].ranges],
                            codegen={name: _summary(code) for name, code in codegen.items()})
    return rows


@contextlib.contextmanager
def _generated_code(sink: list[str]):
    """Collect the source of every module Inductor loads (its output code) while active."""
    from torch._inductor.codecache import PyCodeCache

    original = PyCodeCache.load_by_key_path

    def load(key, path, *args, **kwargs):
        with open(path) as f:
            sink.append(f.read())
        return original(key, path, *args, **kwargs)

    PyCodeCache.load_by_key_path = load
    try:
        yield
    finally:
        PyCodeCache.load_by_key_path = original


def _summary(sources: list[str]) -> dict:
    # paths and timestamps differ between identical compiles; compare code only
    code = "\n".join(re.sub(r"#.*", "", s) for s in sources)
    return {"modules": len(sources),
            "persistent_reductions": code.count("persistent_reduction("),
            "sha1": hashlib.sha1(code.encode()).hexdigest()[:12]}
