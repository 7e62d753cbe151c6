"""An audit target: a tiny HF Llama under DTensor TP on 2 gloo ranks, compiled with the pass.

    arfuse audit arfuse.examples.hf_audit:llama_tp

Every rank builds the sharded model after the process group is up (`build`); the auditor
drives it over its token sweep with input_ids [1, num_tokens] (token dim 1) and reports any
num_tokens guard, recompile or unfused allreduce + RMSNorm chain.
"""

from __future__ import annotations

import torch

from arfuse.audit import AuditTarget
from arfuse.audit.live.target import with_fusion_pass


def _build(name: str):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from arfuse.examples import hf_models

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = hf_models.build(name, mesh)
    vocab = model.config.vocab_size

    def make_inputs(n: int):
        return (torch.randint(0, vocab, (1, n)),)

    return with_fusion_pass(model, make_inputs)


def llama_tp() -> AuditTarget:
    return AuditTarget(
        build=lambda: _build("llama"),
        world_size=2,
        token_dims={0: 1},
        sizes=[16, 255, 256, 2047],
        name="HF Llama (tiny), DTensor TP2",
    )
