"""arfuse's own audit targets: the CI gate (ci/gate.sh) audits each of them against
audit/baseline.json. Every target is the built-in tensor-parallel decoder on 2 gloo ranks,
compiled by Inductor with AllReduceFusionPass; they differ in how the model is written.

    arfuse audit audit/targets.py:tp_decoder_custom_ops --baseline audit/baseline.json
"""

from arfuse.audit import AuditTarget
from arfuse.audit.default_target import SIZES, tp_decoder  # noqa: F401 - the default target


def _build_custom_ops():
    import arfuse
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(num_layers=2, hidden=64, intermediate=128,
                                          allreduce="arfuse", norm="custom_op")
    return model, make_inputs, {"options": {"post_grad_custom_post_pass":
                                            arfuse.AllReduceFusionPass()}}


def tp_decoder_custom_ops() -> AuditTarget:
    """The same decoder written with arfuse::all_reduce and the arfuse::rms_norm custom op."""
    return AuditTarget(build=_build_custom_ops, world_size=2, sizes=SIZES,
                       compile_ranks="audited",
                       name="TP decoder with arfuse custom ops (world size 2, gloo)")
