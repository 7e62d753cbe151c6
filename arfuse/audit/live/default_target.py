"""What `arfuse audit` with no target audits: the built-in tensor-parallel decoder
(`arfuse.examples.build_tp_decoder`, 1 layer, hidden 64) on 2 gloo ranks, rank 0 compiled by
Inductor with `arfuse.AllReduceFusionPass`. A clean result means the fusion pass keeps
num_tokens dynamic and fused both allreduce + residual + RMSNorm chains: the post-attention norm
and the final norm (residual output dead). A second layer would only repeat the first chain's
form and cost seconds of compile.
"""

from __future__ import annotations

from arfuse.audit.live.target import AuditTarget, with_fusion_pass

SPEC = "arfuse.audit.live.default_target:tp_decoder"
# num_tokens 1 is left out: it always compiles its own graph (torch's 0/1 specialization),
# which would double the run time without telling anything about the model.
SIZES = (2, 16, 255, 256, 2047, 2048, 2049, 4096)


def _build():
    import torch.distributed as dist

    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(num_layers=1, hidden=64, intermediate=128)
    if dist.get_rank() != 0:  # compile_ranks="audited": the other rank runs eager and needs
        return model, make_inputs  # no pass (creating one would import Inductor there)

    return with_fusion_pass(model, make_inputs)


def tp_decoder() -> AuditTarget:
    # The example serves up to 4096 tokens (its sweep's top). Above that, Inductor's CPU codegen
    # switches its reduction helper (`s <= 4096` in cpp.py's need_use_acc_helper): with
    # `--max-tokens 8192` the audit reports that switch as ARF106.
    return AuditTarget(
        build=_build,
        world_size=2,
        sizes=SIZES,
        compile_ranks="audited",
        max_tokens=4096,
        name="built-in TP decoder (arfuse.examples, 1 layer, hidden 64, "
        "world size 2, gloo, Inductor + AllReduceFusionPass)",
    )
