"""What `arfuse audit` with no target audits: the built-in tensor-parallel decoder
(`arfuse.examples.build_tp_decoder`, 2 layers, hidden 64) on 2 gloo ranks, compiled by Inductor
with `arfuse.AllReduceFusionPass`. A clean result means the fusion pass keeps num_tokens
dynamic and fused every allreduce + residual + RMSNorm chain (2 per layer).
"""

from __future__ import annotations

from arfuse.audit.target import AuditTarget

SPEC = "arfuse.audit.default_target:tp_decoder"
# num_tokens 1 is left out: it always compiles its own graph (torch's 0/1 specialization),
# which would double the run time without telling anything about the model.
SIZES = (2, 16, 255, 256, 2047, 2048, 2049, 4096)


def _build():
    import arfuse
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(num_layers=2, hidden=64, intermediate=128)
    return model, make_inputs, {"options": {"post_grad_custom_post_pass":
                                            arfuse.AllReduceFusionPass()}}


def tp_decoder() -> AuditTarget:
    return AuditTarget(build=_build, world_size=2, sizes=SIZES, compile_ranks="audited",
                       name="built-in TP decoder (arfuse.examples, 2 layers, hidden 64, "
                            "world size 2, gloo, Inductor + AllReduceFusionPass)")
