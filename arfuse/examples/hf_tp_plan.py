"""transformers' own tensor parallelism (`DistributedConfig(tp_plan="auto")`) with the fusion pass.

    torchrun --nproc-per-node 2 -m arfuse.examples.hf_tp_plan --model llama

Rank 0 writes a tiny random checkpoint of the model (`save_tiny`, no hub access); every rank
loads it with the model's own TP plan (`load`): vocab-parallel `embed_tokens`
(`embedding_rowwise`), q/k/v and gate/up `colwise`, o/down `rowwise`, Qwen3/Gemma 3's q/k norms
`replicated_with_grad_allreduce`. Then `run` compiles the base model with the pass, num_tokens
dynamic, calls it at a few sizes and compares each output with the same checkpoint loaded
without parallelism. Each decoder layer has two allreduce -> RMSNorm chains and the embedding
one more: 5 for the default 2 layers, all fused.

Needs `transformers` and `accelerate` (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

MODELS = ("llama", "qwen3", "gemma3", "mistral")
_CAUSAL_LM = {
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "mistral": "MistralForCausalLM",
}


def save_tiny(name: str, path: str | Path, num_layers: int = 2, seed: int = 0) -> Path:
    """A tiny random checkpoint of `name` ('llama', 'qwen3', 'gemma3', 'mistral') at `path`,
    its norm weights perturbed so that they matter. Call it on one rank only."""
    import transformers

    from arfuse.examples import hf_models

    if name not in _CAUSAL_LM:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    torch.manual_seed(seed)
    model = getattr(transformers, _CAUSAL_LM[name])(hf_models.config(name, num_layers=num_layers))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return Path(path)


def load(path: str | Path, dtype: torch.dtype = torch.float32, tp: bool = True):
    """The checkpoint at `path` in eval mode, sharded with its own plan (`tp_plan="auto"`, over
    every rank of the default group) or, with tp=False, whole on this process's device."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    # use_kernels=False: by default (transformers 5.25) a CUDA model swaps its RMSNorm for a hub
    # kernel (liger), an opaque op the pass cannot see into; it also needs the `kernels` package
    kwargs: dict[str, Any] = {"dtype": dtype, "use_kernels": False}
    if tp:
        # tp_size from the group when it is up (a spawned group has no WORLD_SIZE to read)
        size = dist.get_world_size() if dist.is_initialized() else None
        kwargs["distributed_config"] = DistributedConfig(tp_plan="auto", tp_size=size)
    elif torch.cuda.is_available():
        kwargs["device_map"] = torch.device("cuda", torch.cuda.current_device())
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _ids(seq: int, vocab: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seq)
    return torch.randint(0, vocab, (1, seq), generator=gen).to(device)


def run(
    path: str | Path,
    sizes: tuple[int, ...] = (5, 9, 17),
    dtype: torch.dtype = torch.float32,
    fusion: Any = None,
) -> dict[str, Any]:
    """Load `path` with tp_plan="auto", compile its base model with `fusion` (default: a new
    `arfuse.AllReduceFusionPass`) and num_tokens dynamic, and call it at `sizes` tokens.
    Returns the pass's counts and each size's relative L2 error against the same checkpoint
    run whole and eager."""
    import arfuse

    fusion = fusion if fusion is not None else arfuse.AllReduceFusionPass()
    model, whole = load(path, dtype), load(path, dtype, tp=False)
    vocab = model.config.vocab_size
    device = next(whole.parameters()).device
    torch._dynamo.reset()
    compiled = torch.compile(model.model, options={"post_grad_custom_post_pass": fusion})
    errors = {}
    with torch.no_grad():
        for seq in sizes:
            ids = _ids(seq, vocab, device)
            torch._dynamo.maybe_mark_dynamic(ids, 1)
            got = compiled(input_ids=ids, use_cache=False).last_hidden_state.double()
            want = whole.model(input_ids=ids, use_cache=False).last_hidden_state.double()
            errors[seq] = float((got - want).norm() / want.norm())
    return {
        "fused": fusion.num_matches,
        "matched": dict(fusion.matched),
        "skipped": list(fusion.skipped),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    import tempfile

    import torch.distributed as dist

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="llama")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
        path = Path(tmp) / args.model
        if dist.get_rank() == 0:
            save_tiny(args.model, path)
        # every rank reads rank 0's checkpoint: torchrun's ranks share this machine's /tmp
        path_list = [str(path)]
        dist.broadcast_object_list(path_list, src=0)
        dist.barrier()
        result = run(path_list[0], dtype=getattr(torch, args.dtype))
    if dist.get_rank() == 0:
        chains = result["fused"] + len(result["skipped"])
        worst = max(result["errors"].values())
        print(
            f"{args.model}: fused {result['fused']} of {chains} allreduce -> RMSNorm chains "
            f"{result['matched']}; max relative error vs the unsharded model {worst:.1e}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
