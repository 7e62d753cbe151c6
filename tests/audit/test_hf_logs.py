"""Offline audit of a real multi-model log: three tiny transformers models (llama, gpt2, bert)
compiled with dynamic=True in one process, `torch._dynamo.reset()` between them, recorded by
tests/audit/tools/capture_hf_log.py (aot_eager, torch 2.13 CPU)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arfuse.audit import audit_logs
from arfuse.audit.cli import audit as audit_cmd
from arfuse.audit.offline import load_traces
from arfuse.audit.trace.reader import parse_bytes
from arfuse.audit.trace.records import CompilationMetrics, CompileId, CreateSymbol
from arfuse.audit.trace.token_source import AmbiguousTokenSource, infer_token_sources

HF = Path(__file__).resolve().parent / "data" / "hf-llama-gpt2-bert-torch-2.13.0.log.gz"
TOKENS = "L['kwargs']['input_ids'].size()[1]"


def test_token_source_is_the_tensor_size_not_a_float_attribute():
    traces, run = load_traces(HF)
    # dynamic=True also makes symbols of eps, dropout p and math.pi: 49 sources, 1 a size
    sources = {e.source for e in traces[0].of(CreateSymbol)}
    assert len(sources) > 30 and "G['__import_transformers_dot_activations'].math.pi" in sources
    assert run.token_sources == [TOKENS]


def test_models_compiled_after_a_reset_stay_separate():
    report = audit_logs(HF)
    # one compile per model: compile ids restart at 0/0 after each torch._dynamo.reset()
    assert report.summary["compiles"] == 3
    (t,) = load_traces(HF)[0].values()
    ids = {m.metrics_compile_id for m in t.of(CompilationMetrics)}
    assert ids == {CompileId(0, 0), CompileId(0, 0, generation=1), CompileId(0, 0, generation=2)}
    assert [str(i) for i in sorted(ids)] == ["0/0", "0/0@1", "0/0@2"]
    # bert's position-embedding slice: the only guard on the token count that can fail
    assert [(f.code, Path(f.path).name, f.line, f.compile_id) for f in report.findings] == [
        ("ARF102", "modeling_bert.py", 85, "0/0@2")
    ]


def test_cli_on_the_hf_log():
    res = CliRunner().invoke(audit_cmd, ["--trace", str(HF), "--format", "json", "--no-progress"])
    assert res.exit_code == 1, res.output
    summary = json.loads(res.stdout)["summary"]
    assert summary["token_sources"] == [TOKENS] and summary["compiles"] == 3


def _log(*symbols):
    lines = []
    for fcid, sym, val, src in symbols:
        body = {
            "create_symbol": {"symbol": sym, "val": val, "vr": "[2, int_oo]", "source": src},
            "frame_id": 0,
            "frame_compile_id": fcid,
            "attempt": 0,
        }
        lines.append(
            f"V1127 14:36:18.743000 1 torch/fx/experimental/symbolic_shapes.py:1] "
            f"{json.dumps(body)}\n"
        )
    return {0: parse_bytes("".join(lines).encode())}


def test_token_inputs_are_preferred_when_sizes_differ():
    traces = _log(
        (0, "s0", "8", "L['input_ids'].size()[1]"),
        (0, "s1", "24", "L['attention_mask'].size()[1]"),
        (0, "zf2", "1e-06", "L['self'].norm.eps"),
    )
    assert infer_token_sources(traces) == ["L['input_ids'].size()[1]"]
    traces = _log(
        (0, "s0", "8", "L['inputs_embeds'].size()[1]"),
        (0, "s1", "8", "L['position_ids'].size()[1]"),
        (0, "s2", "40", "L['past_key_values'].size()[2]"),
    )
    assert infer_token_sources(traces) == [
        "L['inputs_embeds'].size()[1]",
        "L['position_ids'].size()[1]",
    ]


def test_still_ambiguous_lists_sizes_only():
    traces = _log(
        (0, "s0", "4", "L['input_ids'].size()[0]"),
        (0, "s1", "8", "L['input_ids'].size()[1]"),
        (0, "zf2", "0.1", "L['self'].drop.p"),
    )
    with pytest.raises(AmbiguousTokenSource) as err:
        infer_token_sources(traces)
    assert "L['input_ids'].size()[0]" in str(err.value)
    assert "drop.p" not in str(err.value)


def test_one_model_compiled_twice_after_a_reset_counts_both_runs():
    import io

    from arfuse.audit import analyze
    from arfuse.audit.trace.reader import parse_stream, read_bytes

    log = read_bytes(Path(__file__).resolve().parent / "data" / "torch-2.13.0-branch.log.gz")
    once = analyze({0: parse_stream(io.BytesIO(log))})
    twice = analyze({0: parse_stream(io.BytesIO(log + log))})
    assert (once.summary["compiles"], once.summary["recompiles"]) == (4, 3)
    assert (twice.summary["compiles"], twice.summary["recompiles"]) == (8, 6)

    def key(report):
        return [(f.code, f.line, f.num_tokens, f.compile_id) for f in report.findings]

    assert key(twice) == key(once)  # the details list the compiles of both runs
