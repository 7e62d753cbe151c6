"""The op table: one definition of each op identity, read by the matcher, the audit rules, the
ranges and the pass's cache key (issue 14)."""

import subprocess
import sys

import pytest

import arfuse
from arfuse import optable
from arfuse.audit import analyze
from arfuse.audit.trace.reader import parse_bytes
from arfuse.policy import FusionPolicy
from arfuse.thresholds import Thresholds


def test_optable_imports_without_torch():
    code = (
        "import importlib.util, sys; s = importlib.util.spec_from_file_location('t', "
        f"{optable.__file__!r}); m = importlib.util.module_from_spec(s); "
        "s.loader.exec_module(m); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "target,extra,allreduce,collective",
    [
        ("torch.ops._c10d_functional.all_reduce_.default", (), True, True),
        ("_c10d_functional.all_reduce.default", (), True, True),
        ("arfuse.all_reduce.default", (), True, True),
        ("_c10d_functional.all_gather_into_tensor.default", (), False, True),
        ("_c10d_functional.wait_tensor.default", (), False, False),
        ("arfuse.fused_allreduce_rmsnorm_fp8.eps_tensor", (), False, True),
        ("vllm.all_reduce.default", (), False, False),
        ("vllm.all_reduce.default", ("vllm::all_reduce",), True, True),
    ],
)
def test_identities(target, extra, allreduce, collective):
    assert optable.is_allreduce(target, extra) is allreduce
    assert optable.is_collective(target, extra) is collective


def _log(graph_body: str, report: dict) -> bytes:
    import json

    def event(head: str, payload: str) -> str:
        lines = "".join("\t" + ln + "\n" for ln in payload.splitlines())
        return (
            f'V1129 12:00:00.000000 1 x.py:1] {{{head}, "frame_id": 0, "frame_compile_id": '
            f'0, "attempt": 0, "has_payload": "0"}}\n' + lines
        )

    graph = (
        'class <lambda>(torch.nn.Module):\n    def forward(self, arg0_1: "f32[s0, 64]", '
        'arg1_1: "f32[64]", arg2_1: "f32[s0, 64]"):\n'
        + "".join("        " + ln + "\n" for ln in graph_body.strip().splitlines())
    )
    return (
        event('"artifact": {"name": "arfuse_fusion", "encoding": "json"}', json.dumps(report))
        + event('"artifact": {"name": "inductor_post_grad_graph", "encoding": "string"}', graph)
        + 'V1129 12:00:00.100000 1 x.py:1] {"compilation_metrics": {"compile_id": "0/0", '
        '"co_name": "forward", "co_filename": "/m/model.py", "co_firstlineno": 9}, '
        '"frame_id": 0, "frame_compile_id": 0, "attempt": 0}\n'
    ).encode()


VLLM_CHAIN = """
# File: /m/model.py:10 in forward, code: y = vllm_all_reduce(x)
all_reduce: "f32[s0, 64]" = torch.ops.vllm.all_reduce.default(arg0_1, '0')
# File: /m/model.py:11 in forward, code: h = y + residual
add: "f32[s0, 64]" = torch.ops.aten.add.Tensor(all_reduce, arg2_1)
# File: /m/model.py:12 in forward, code: out = rms_norm(h, w, eps)
rms_norm: "f32[s0, 64]" = torch.ops.aten.rms_norm.default(add, [64], arg1_1, 1e-05)
return (rms_norm, add)"""


@pytest.mark.parametrize("configured", [True, False])
def test_arf201_sees_an_allreduce_op_named_in_the_fusion_config(configured):
    """A chain over `vllm::all_reduce` that the pass left unfused is ARF201 when the pass's
    FusionConfig named the op (its report says so), and not an allreduce otherwise."""
    report = {
        "matches": 0,
        "specs": [],
        "disabled": None,
        "skipped": [],
        "token_range": None,
        "by_range": [],
        "allreduce_ops": ["vllm::all_reduce"] if configured else [],
        "norm_ops": [],
    }
    findings = analyze({0: parse_bytes(_log(VLLM_CHAIN, report))}, select=["ARF201"]).findings
    if configured:
        (f,) = findings
        assert (f.code, f.path, f.line) == ("ARF201", "/m/model.py", 11)
        assert f.expr == "vllm.all_reduce -> add -> RMSNorm"
    else:
        assert findings == []


def test_pass_reports_its_configured_ops():
    config = arfuse.FusionConfig(allreduce_ops=("vllm::all_reduce",), norm_ops=("x::norm",))
    import torch

    report = arfuse.AllReduceFusionPass(config).apply(torch.fx.Graph())
    assert report["allreduce_ops"] == ["vllm::all_reduce"] and report["norm_ops"] == ["x::norm"]


def test_uuid_changes_with_the_policy():
    table = FusionPolicy().table
    base = arfuse.AllReduceFusionPass(policy=FusionPolicy(table, twoshot=True))
    same = arfuse.AllReduceFusionPass(policy=FusionPolicy(table, twoshot=True))
    assert base.uuid() == same.uuid()
    twoshot_off = arfuse.AllReduceFusionPass(policy=FusionPolicy(table, twoshot=False))
    changed = {arch: dict(per_world) for arch, per_world in table.items()}
    changed["sm90"][4] = Thresholds(oneshot_max_mb=1, fused_max_mb=4, source="test")
    threshold = arfuse.AllReduceFusionPass(policy=FusionPolicy(changed, twoshot=True))
    assert len({base.uuid(), twoshot_off.uuid(), threshold.uuid()}) == 3


def test_policy_digest_names_its_content_and_resolves_to_the_object():
    import torch

    from arfuse.kernels.args import FusedArgs
    from arfuse.policy import resolve

    table = FusionPolicy().table
    on, off = FusionPolicy(table, twoshot=True), FusionPolicy(table, twoshot=False)
    assert on.digest() != off.digest() and len(on.digest()) == 16
    assert FusionPolicy(table, twoshot=True).digest() == on.digest()  # content, not identity
    # an equal policy registered first (the default pass's) may answer: same content, same plan
    assert resolve(on.digest()) == on and resolve(off.digest()) == off
    unique = {arch: dict(per_world) for arch, per_world in table.items()}
    unique["sm90"][8] = Thresholds(oneshot_max_mb=1, fused_max_mb=3, source="this test only")
    custom = FusionPolicy(unique)
    assert resolve(custom.digest()) is custom
    assert resolve("") == FusionPolicy.current()  # a direct call of the op: the policy in force
    assert resolve("").digest() == FusionPolicy.current().digest()
    with pytest.raises(ValueError, match="policy '0123456789abcdef'.*build the pass"):
        resolve("0123456789abcdef")
    args = FusedArgs(torch.ones(2, 8), None, torch.ones(8), None, 1e-6, 0.0, None)  # type: ignore[arg-type]
    assert args.policy == ""


def test_run_time_policy_follows_a_thresholds_override():
    from arfuse import thresholds as th
    from arfuse.policy import resolve

    before = resolve("")
    changed = {"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": 2}}}
    with th.override(changed):
        during = resolve("")
        assert during == FusionPolicy.current() and during.digest() != before.digest()
    assert resolve("").digest() == before.digest()
