"""What users feel: one decode step of a TP decoder stack, torch.compile with vs without arfuse.

The stack is `arfuse.examples.TPDecoder` with Llama-8B-like shapes (hidden 4096, intermediate
14336, 32 heads; random weights; `num_layers` layers, default 4) in bf16, or (`model=`) an HF
transformers base model under DTensor TP (`arfuse.examples.hf_models`: Llama, Qwen3, Gemma 3,
Mistral at 8B/12B-class shapes, or tiny for a CPU smoke run). A decode step of T tokens is one
forward of [T, hidden] (HF: input_ids [1, T]). Both variants are compiled once with the token dim
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
from typing import Any

import torch
import torch.distributed as dist

from arfuse.bench.timing import slowest, time_cuda_graph, time_eager


def _example(num_layers, hidden, intermediate, heads, device):
    """arfuse's own TP decoder: forward(hidden_states [T, hidden])."""
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(
        num_layers, hidden, intermediate, heads, dtype=torch.bfloat16, device=device
    )

    def inputs(t: int, seed: int) -> tuple[tuple, dict]:
        x = make_inputs(t + 1000 * seed)[0][:t]
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return (x,), {}

    return model, inputs, lambda out: out


def _hf(name, num_layers, size, device):
    """An HF transformers base model under DTensor TP: forward(input_ids=[1, T])."""
    from torch.distributed.device_mesh import init_device_mesh

    from arfuse.examples import hf_models

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model = hf_models.build(name, mesh, size=size, num_layers=num_layers, dtype=torch.bfloat16)
    vocab = model.config.vocab_size

    def inputs(t: int, seed: int) -> tuple[tuple, dict]:
        ids = torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(t + seed))
        ids = ids.to(device)
        torch._dynamo.maybe_mark_dynamic(ids, 1)  # arfuse.compile finds input_ids by name
        return (), {"input_ids": ids, "use_cache": False}

    return model, inputs, lambda out: out.last_hidden_state


def run_decoder_sweep(
    tokens: tuple[int, ...],
    num_layers: int = 4,
    hidden: int = 4096,
    intermediate: int = 14336,
    heads: int = 32,
    n_inner: int = 4,
    reps: int = 20,
    ranges: list[int] | str = "auto",
    model: str = "example",
    size: str = "real",
) -> list[dict]:
    """model: 'example' (arfuse's TP decoder at hidden/intermediate/heads) or an HF model of
    `arfuse.examples.hf_models.MODELS` at `size` ('real' shapes or 'tiny')."""
    import arfuse

    # compile afresh: a graph served from the FX cache skips the pass and its counters
    torch._inductor.config.fx_graph_cache = False
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    if model == "example":
        net, inputs, output = _example(num_layers, hidden, intermediate, heads, device)
    else:
        net, inputs, output = _hf(model, num_layers, size, device)
    fusion = arfuse.AllReduceFusionPass()
    variants = {
        "compile": torch.compile(net),
        "compile+arfuse": torch.compile(net, options={"post_grad_custom_post_pass": fusion}),
        "arfuse.compile": arfuse.compile(net, ranges=ranges),
        "arfuse.compile bounds off": arfuse.compile(net, ranges=ranges, bound_symbols=False),
    }
    codegen: dict[str, list[str]] = {name: [] for name in variants}
    group = dist.group.WORLD
    assert group is not None, "run_decoder_sweep runs inside an initialized process group"
    rows = []
    with torch.no_grad():
        # capture every variant at a size models do not specialise (HF models pin 1 token)
        warm = inputs(16, 0)
        for name, compiled in variants.items():
            with _generated_code(codegen[name]):
                compiled(*warm[0], **warm[1])
        for t in tokens:
            calls = [inputs(t, k) for k in range(2)]
            row: dict[str, Any] = {"tokens": t, "layers": num_layers, "model": model}
            outs = {}
            for name, compiled in variants.items():
                step = lambda i, c=compiled, a=calls: c(*a[i][0], **a[i][1])  # noqa: E731
                with _generated_code(codegen[name]):
                    outs[name] = output(step(0)).float()
                us = (
                    time_cuda_graph(step, 2, group, n_inner, reps)
                    if on_gpu
                    else time_eager(step, 2, group)
                )
                row[f"{name}_us"] = slowest(us, group, device)
            for name in list(variants)[1:]:
                diff = (outs[name] - outs["compile"]).norm() / outs["compile"].norm()
                row[f"{name}_rel_l2"] = float(diff)
                row[f"{name}_speedup"] = row["compile_us"] / row[f"{name}_us"]
            rows.append(row)
    if rows:
        rows[0].update(
            fused_ops=fusion.num_matches,
            ranges=[str(r) for r in variants["arfuse.compile"].ranges],
            shapes=_shapes(net, model, hidden, intermediate, heads),
            codegen={name: _summary(code) for name, code in codegen.items()},
        )
    return rows


def _shapes(net, model: str, hidden: int, intermediate: int, heads: int) -> str:
    if model == "example":
        return f"arfuse TP decoder, hidden {hidden}, intermediate {intermediate}, {heads} heads"
    c = net.config
    return (
        f"HF {type(net).__name__}, hidden {c.hidden_size}, intermediate "
        f"{c.intermediate_size}, {c.num_attention_heads} heads / {c.num_key_value_heads} kv"
    )


@contextlib.contextmanager
def _generated_code(sink: list[str]):
    """Collect the source of every module Inductor loads (its output code) while active."""
    from torch._inductor.codecache import PyCodeCache

    original = PyCodeCache.load_by_key_path

    def load(key, path, *args, **kwargs):
        with open(path) as f:
            sink.append(f.read())
        return original(key, path, *args, **kwargs)

    # a deliberate patch of Inductor's loader for the duration of the block
    PyCodeCache.load_by_key_path = load  # type: ignore[method-assign]
    try:
        yield
    finally:
        PyCodeCache.load_by_key_path = original  # type: ignore[method-assign]


def _summary(sources: list[str]) -> dict:
    # paths and timestamps differ between identical compiles; compare code only
    code = "\n".join(re.sub(r"#.*", "", s) for s in sources)
    return {
        "modules": len(sources),
        "persistent_reductions": code.count("persistent_reduction("),
        "sha1": hashlib.sha1(code.encode()).hexdigest()[:12],
    }
