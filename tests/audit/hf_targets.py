"""Audit targets on real models, on the GPU when there is one (the production target), else on
the CPU: a plain Llama-style block and tiny Hugging Face Llama / Gemma 3 configs.

    arfuse audit tests/audit/hf_targets.py:hf_gemma3          # device picked here
    ARFUSE_AUDIT_BACKEND=aot_eager arfuse audit ...            # Dynamo's guards only (fast CPU)

Tiny configs, real code paths: HF's masking utilities, RoPE, GQA, Gemma 3's sliding-window
layers (window 512, so its guard is inside the default token domain, as 4096 is for the real
model). Inputs are `[1, num_tokens]` token ids: the token dim is dim 1. bf16 on the GPU.
"""

from __future__ import annotations

import os

import torch

from arfuse.audit import AuditTarget
from tests.audit.fixtures.llama_block import LlamaBlock

SIZES = (16, 255, 256, 2047)
SLIDING_WINDOW = 512


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(dev: str) -> torch.dtype:
    # bf16 is what serves on the GPU (and picks the fused SDPA kernels); fp32 on the CPU
    return torch.bfloat16 if dev == "cuda" else torch.float32


def _kwargs() -> dict:
    return {"backend": os.environ.get("ARFUSE_AUDIT_BACKEND", "inductor")}


def llama_block() -> AuditTarget:
    dev = _device()
    model = LlamaBlock().to(dev, _dtype(dev))
    return AuditTarget(
        model,
        lambda n: (torch.randn(n, 64, device=dev, dtype=_dtype(dev)),),
        _kwargs(),
        sizes=SIZES,
        name=f"Llama-style block on {dev}",
    )


def _hf(config) -> AuditTarget:
    dev = _device()
    from transformers import AutoModel

    model = AutoModel.from_config(config).to(dev, _dtype(dev)).eval()
    vocab = config.vocab_size
    return AuditTarget(
        model,
        lambda n: (torch.randint(0, vocab, (1, n), device=dev),),
        _kwargs(),
        token_dims={0: 1},
        sizes=SIZES,
        name=f"tiny HF {type(model).__name__} on {dev}",
    )


# the tiny shape every target shares (real code paths, seconds to compile)
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=131072,
)


def hf_llama() -> AuditTarget:
    from transformers import LlamaConfig

    return _hf(LlamaConfig(**TINY))


def hf_gemma3() -> AuditTarget:
    from transformers import Gemma3TextConfig

    return _hf(
        Gemma3TextConfig(
            **TINY,
            head_dim=16,
            sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        )
    )
