"""The slimming policy: a streamed trace keeps what the selected rules read, and nothing a rule
reads is lost (the rules find on a slimmed trace exactly what they find on the whole one)."""

import io
import json
from pathlib import Path

import pytest

from arfuse.audit import analyze
from arfuse.audit.rules import select_rules
from arfuse.audit.trace.reader import parse_bytes, parse_stream, read_bytes
from arfuse.audit.trace.records import Artifact, ChromiumEvent, GuardAddedFast, UnknownEvent
from arfuse.audit.trace.run_info import RunInfo
from arfuse.audit.trace.slim import DEFAULT, DIVERGENCE, GRAPHS, GUARDS, RANKS, Policy, policy_for

DATA = Path(__file__).resolve().parent / "data"
LOGS = sorted(DATA.glob("*.log.gz")) + sorted(DATA.glob("ranks-*/*.log.gz"))
HF_TOKENS = RunInfo(token_sources=["L['kwargs']['input_ids'].size()[1]"])


def _findings(traces, select, run=None):
    return [f.to_json() for f in analyze(traces, run, select=select).findings]


@pytest.mark.parametrize(
    "select", [["ARF1"], ["ARF2"], ["ARF3"], []], ids=["ARF1", "ARF2", "ARF3", "all"]
)
def test_slimmed_traces_give_the_whole_traces_findings(select):
    policy = policy_for(select_rules(select))
    for log in LOGS:
        data = read_bytes(log)
        run = HF_TOKENS if log.name.startswith("hf-") else None
        whole = _findings({0: parse_bytes(data)}, select, run)
        slim = _findings({0: parse_stream(io.BytesIO(data), policy=policy)}, select, run)
        assert slim == whole, log.name
    ranks = {
        int(p.name.split("_rank_")[1][0]): p
        for p in (DATA / "ranks-divergent-torch-2.13.0").glob("*.log.gz")
    }
    whole = _findings({r: parse_bytes(read_bytes(p)) for r, p in ranks.items()}, select)
    slim = _findings(
        {r: parse_stream(io.BytesIO(read_bytes(p)), policy=policy) for r, p in ranks.items()},
        select,
    )
    assert slim == whole and (whole or select == ["ARF2"])


def test_a_fusion_only_audit_keeps_no_guards():
    data = read_bytes(DATA / "torch-2.13.0-funcol_inductor.log.gz")
    fusion = parse_stream(io.BytesIO(data), policy=policy_for(select_rules(["ARF2"])))
    assert not list(fusion.of(GuardAddedFast)) and not list(fusion.of(ChromiumEvent))
    (graph,) = list(fusion.artifacts("inductor_post_grad_graph"))
    assert "_c10d_functional.all_reduce" in graph.payload  # the payload ARF201 reads, kept
    guards = parse_stream(io.BytesIO(data), policy=policy_for(select_rules(["ARF101"])))
    assert list(guards.of(GuardAddedFast))
    assert all(
        a.raw_payload is None for a in guards.of(Artifact) if a.name == "inductor_post_grad_graph"
    )
    assert {e.name for e in guards.of(UnknownEvent)} <= {"describe_tensor", "describe_source"}


def test_rule_needs_decide_the_policy():
    class R:  # a rule that reads one artifact only
        code, needs = "ARF199", frozenset({"artifact:my_artifact"})

    p = policy_for([R()])
    assert "my_artifact" in p.payloads and "recompile_reasons" not in p.payloads
    assert p == Policy.of({"artifact:my_artifact"})
    assert policy_for(select_rules(["ARF1"])).stacks == {
        "guard_added_fast",
        "guard_added",
        "symbolic_shape_specialization",
        "dynamo_start",  # the compiled frame (ARF104/106) and a library function's caller
    }
    # every rule declares its needs in its own module; none falls back to "everything"
    # (ARF104/106's compiled frame is part of GUARDS; ARF9xx read no trace)
    assert {r.needs for r in select_rules() if r.scope != "report"} == {
        GUARDS,
        GRAPHS,
        RANKS,
        DIVERGENCE,
    }
    assert policy_for(select_rules()) == DEFAULT  # the reader's default keeps what all rules read


def _vllm_log(report: bool) -> bytes:
    env = (
        'V1127 14:36:18.743000 1 torch/x.py:1] {{"artifact": {{"name": "{}", "encoding": '
        '"{}"}}, "frame_id": 0, "frame_compile_id": 0, "attempt": 0, "has_payload": "0"}}\n'
    )
    out = ""
    if report:
        out += (
            env.format("arfuse_fusion", "json")
            + "\t"
            + json.dumps({"matches": 0, "allreduce_ops": ["vllm::all_reduce"], "norm_ops": []})
            + "\n"
        )
    out += env.format("inductor_post_grad_graph", "string")
    out += (
        "\t        # File: /m/model.py:10 in forward, code: y = all_reduce(x)\n"
        '\t        ar: "f32[s0, 64]" = torch.ops.vllm.all_reduce.default(arg0_1)\n'
    )
    return out.encode()


def test_custom_allreduce_ops_named_by_the_pass_keep_their_graphs():
    # issue 14: the streaming reader emptied graphs whose only collective was vllm::all_reduce
    for report, kept in ((True, True), (False, False)):
        trace = parse_stream(io.BytesIO(_vllm_log(report)), chunk_size=97)
        (graph,) = list(trace.artifacts("inductor_post_grad_graph"))
        assert ("vllm.all_reduce" in graph.payload) is kept
    named = parse_stream(
        io.BytesIO(_vllm_log(False)),
        policy=policy_for(select_rules(["ARF2"]), ["vllm::all_reduce"]),
    )
    assert "vllm.all_reduce" in next(named.artifacts("inductor_post_grad_graph")).payload
