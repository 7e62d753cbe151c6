"""Hugging Face transformers models under DTensor tensor parallelism, as people run them.

    model = arfuse.examples.hf_models.build("llama", mesh, size="tiny")   # or "8b"
    out = model(input_ids=ids, use_cache=False).last_hidden_state

`build` makes the base model (`LlamaModel`, `Qwen3Model`, `Gemma3TextModel`, `MistralModel`)
from a config with random weights (identical on every rank), in eval mode, and shards it with
the model's own `base_model_tp_plan` (q/k/v and gate/up colwise, o/down rowwise) through
`torch.distributed.tensor.parallel.parallelize_module`. Each decoder layer then has two
`all_reduce -> + residual -> RMSNorm` chains, the ones the fusion pass replaces.

Needs `transformers` (`pip install -e '.[test]'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MODELS = ("llama", "qwen3", "gemma3", "mistral")

# name -> (config class, model class, real shapes: "8b"-class checkpoints' dimensions)
_KINDS = {
    "llama": (
        "LlamaConfig",
        "LlamaModel",
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3Model",
        {
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3TextModel",
        {
            "hidden_size": 3840,
            "intermediate_size": 15360,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 256,
        },
    ),
    "mistral": (
        "MistralConfig",
        "MistralModel",
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
    ),
}

#: A tiny configuration of every model: seconds to compile on CPU.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
}


def config(name: str, size: str = "tiny", num_layers: int = 2, **overrides: Any):
    """The transformers config of `name` ('llama', 'qwen3', 'gemma3', 'mistral') at `size`
    ('tiny', or 'real': the 8B/12B-class dimensions above)."""
    import transformers

    if name not in _KINDS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    if size not in ("tiny", "real"):
        raise ValueError(f"size={size!r}: choose 'tiny' or 'real'")
    config_cls, _, real = _KINDS[name]
    dims: dict[str, Any] = dict(TINY if size == "tiny" else real)
    if size == "real":
        dims["vocab_size"] = 32000  # the embedding is not part of the measured chains
    dims.update(num_hidden_layers=num_layers, max_position_embeddings=16384)
    if name == "gemma3":  # every layer global: no sliding window shorter than the sizes swept
        dims.update(sliding_window=16384, layer_types=["full_attention"] * num_layers)
    dims.update(overrides)
    cfg = getattr(transformers, config_cls)(**dims)
    cfg._attn_implementation = "sdpa"
    return cfg


def tp_plan(cfg) -> dict[str, Any]:
    """The model's own `base_model_tp_plan` as DTensor parallel styles (colwise/rowwise only:
    Qwen3/Gemma 3's per-head q/k norms stay replicated)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    return {k: styles[v]() for k, v in (cfg.base_model_tp_plan or {}).items() if v in styles}


def build(
    name: str,
    mesh,
    size: str = "tiny",
    num_layers: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **overrides: Any,
) -> PreTrainedModel:
    """The base model `name` with random weights (same on every rank), built on the mesh's
    device (the current CUDA device for a CUDA mesh), sharded over the 1-D `mesh` with its TP
    plan, in eval mode."""
    import transformers
    from torch.distributed.tensor.parallel import parallelize_module

    cfg = config(name, size, num_layers, **overrides)
    torch.manual_seed(seed)  # seeds CUDA too: the same weights on every rank
    device = torch.device(mesh.device_type)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    with device:  # unsharded modules (embedding, norms, rotary) must live there too
        model = getattr(transformers, _KINDS[name][1])(cfg).to(dtype).eval()
    with torch.no_grad():  # norms start at 1 (or 0 for Gemma): perturb them so they matter
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    parallelize_module(model, mesh, tp_plan(cfg))
    return model
