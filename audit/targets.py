"""arfuse's own audit targets: the CI gate (ci/gate.sh) audits each of them against
audit/baseline.json. Every target is a tensor-parallel model on 2 gloo ranks compiled by
Inductor with AllReduceFusionPass; they differ in how the model is written (plain collectives,
arfuse custom ops, DTensor-sharded HF layers).

    arfuse audit audit/targets.py:tp_decoder_custom_ops --baseline audit/baseline.json
"""

from arfuse.audit import AuditTarget
from arfuse.audit.live.default_target import SIZES, tp_decoder  # noqa: F401 - the default target
from arfuse.audit.live.target import with_fusion_pass


def _build_custom_ops():
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(
        num_layers=2, hidden=64, intermediate=128, allreduce="arfuse", norm="custom_op"
    )
    return with_fusion_pass(model, make_inputs)


def tp_decoder_custom_ops() -> AuditTarget:
    """The same decoder written with arfuse::all_reduce and the arfuse::rms_norm custom op."""
    return AuditTarget(
        build=_build_custom_ops,
        world_size=2,
        sizes=SIZES,
        compile_ranks="audited",
        name="TP decoder with arfuse custom ops (world size 2, gloo)",
    )


def _build_hf_llama_dtensor():
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from arfuse.examples.hf_llama import LlamaStack, parallelize

    torch.manual_seed(0)  # same weights on every rank before sharding
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = parallelize(LlamaStack(num_layers=2), mesh).eval()

    def make_inputs(num_tokens: int):
        gen = torch.Generator().manual_seed(num_tokens)
        return (torch.randn(1, num_tokens, 64, generator=gen),)  # [batch, seq, hidden]

    return with_fusion_pass(model, make_inputs)


def hf_llama_dtensor() -> AuditTarget:
    """HF-style Llama layers sharded by DTensor's ColwiseParallel/RowwiseParallel plan; the
    input is [batch, seq, hidden] and seq carries the tokens (token_dims={0: 1})."""
    return AuditTarget(
        build=_build_hf_llama_dtensor,
        world_size=2,
        token_dims={0: 1},
        sizes=(2, 16, 255, 256, 2047, 2048, 2049),
        compile_ranks="all",
        name="HF Llama layers, DTensor TP (world size 2, gloo, [1, seq, 64])",
    )


def _build_ranges():
    import arfuse
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(num_layers=2, hidden=64, intermediate=128)
    # fusion pays up to 64 tokens here (a stand-in threshold: CPU has no thresholds table)
    fusion = arfuse.FusionConfig(fused_max_tokens=64)
    return model, make_inputs, {"backend": arfuse.ranges.backend([64, 1024], fusion=fusion)}


def tp_decoder_ranges() -> AuditTarget:
    """The decoder under compile ranges [1, 64] [65, 1024] [1025, inf): fused only in the
    first; the sweep crosses every split point +-1."""
    return AuditTarget(
        build=_build_ranges,
        world_size=2,
        thresholds=(64, 1024),
        sizes=(2, 16, 63, 64, 65, 255, 1023, 1024, 1025, 2048),
        compile_ranks="audited",
        name="TP decoder under arfuse compile ranges (world size 2, gloo)",
    )
