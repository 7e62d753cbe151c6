"""`arfuse tune` on synthetic measurements, and a CPU smoke run of `arfuse bench`."""

import json
import math

import pytest
from click.testing import CliRunner

from arfuse.bench import report
from arfuse.bench.tune import choose
from arfuse.cli import main
from tests.bench_rows import bench_row

# TP4-like: one-shot wins small, two-shot from 512 tokens, unfused from 2048 (hidden 4096)
TP4 = [
    bench_row(1, 5, None, 15, 12),
    bench_row(64, 10, 24, 21, 17),
    bench_row(256, 25, 30, 38, 35),
    bench_row(512, 48, 40, 52, 47),
    bench_row(1024, 97, 67, 75, 71),
    bench_row(2048, 191, 123, 121, 116),
    bench_row(4096, 379, 237, 218, 205),
]


def test_tune_picks_the_crossovers():
    c = choose(TP4, "sm90", 4)
    assert c.within_tolerance
    assert c.oneshot_max_mb == pytest.approx(2.0, rel=1e-6)  # 256 tokens x 4096 x 2 B
    assert c.fused_max_mb == pytest.approx(8.0, rel=1e-6)  # 1024 tokens x 4096 x 2 B
    assert c.worst_ratio <= 1.02


def test_tune_reports_when_no_thresholds_fit():
    rows = [bench_row(1, 10, None, 12, 9), bench_row(64, 8, 30, 20, 25)]  # fused loses, wins
    c = choose(rows, "sm90", 2, tolerance=0.02)
    assert not c.within_tolerance
    assert c.worst_ratio == pytest.approx(10 / 9)


def test_tune_file_and_cli_diff(tmp_path):
    result = {"env": {"capability": "9.0", "world_size": 4, "card": "NVIDIA H100"}, "rows": TP4}
    bench_json = tmp_path / "b.json"
    bench_json.write_text(json.dumps(result))
    out = tmp_path / "thr.json"
    r = CliRunner().invoke(main, ["tune", str(bench_json), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (
        "sm90 TP4 all hidden: one-shot max / fused max" in r.output and "->  2 / 8 MB" in r.output
    )
    assert "sm90 TP4 hidden 4096: one-shot max / fused max" in r.output
    table = json.loads(out.read_text())
    assert table["sm90"]["4"]["fused_max_mb"] == pytest.approx(8.0)
    assert table["sm90"]["4"]["hidden"]["4096"]["fused_max_mb"] == pytest.approx(8.0)
    from arfuse import thresholds

    parsed = thresholds.parse_table(table)
    assert parsed["sm90"][4].oneshot_max_mb == pytest.approx(2.0)


def test_tune_refuses_cpu_results(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"env": {"world_size": 2, "card": "CPU"}, "rows": TP4}))
    r = CliRunner().invoke(main, ["tune", str(path)])
    assert r.exit_code == 2 and "needs GPU measurements" in r.output


def test_report_names_its_baseline():
    d = report.derived(TP4[0])
    assert d["best_unfused"] == "unfused_compiled"
    assert d["fused_speedup"] == pytest.approx(12 / 5)
    md = report.markdown(
        {
            "env": {
                "card": "NVIDIA H100 80GB HBM3",
                "capability": "9.0",
                "world_size": 4,
                "torch": "2.11",
                "python": "3.12",
                "date": "2026-11-27",
                "command": "arfuse bench",
            },
            "rows": TP4,
        }
    )
    assert "NVIDIA H100 80GB HBM3" in md and "`best unfused` = faster of" in md
    assert "| 1 | 0.00781 | 15.0 | 12.0 | 5.0 | n/a | n/a | n/a | unfused_compiled | 2.40x |" in md


@pytest.mark.timeout(300)
def test_bench_cpu_smoke_run(tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "--tokens",
            "1,8",
            "--hidden",
            "64",
            "--backend",
            "gloo",
            "--strategies",
            "unfused_eager,fused_oneshot,arfuse",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
            "--timeout",
            "240",
        ],
    )
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["env"]["world_size"] == 2 and "gloo" in result["env"]["card"]
    rows = result["rows"]
    assert [row["tokens"] for row in rows] == [1, 8]
    for row in rows:
        assert row["times_us"]["unfused_eager"] > 0 and row["times_us"]["arfuse"] > 0
        assert row["times_us"]["fused_oneshot"] is None
        assert "needs CUDA" in row["notes"]["fused_oneshot"]
        assert math.isclose(row["mb"], row["tokens"] * 64 * 2 / 2**20)
    assert (tmp_path / "smoke.md").exists() and (tmp_path / "smoke.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "value, message", [("abc", "give comma-separated integers"), ("0,32", "give integers >= 1")]
)
def test_decoder_bench_rejects_bad_split_points(value, message):
    r = CliRunner().invoke(main, ["bench", "--decoder", "--ranges", value])
    assert r.exit_code == 2 and message in r.output and "--ranges" in r.output, r.output


def test_bench_without_gpus_refuses_instead_of_a_long_gloo_sweep():
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("GPUs visible: the real sweep would run")
    r = CliRunner().invoke(main, ["bench"])
    assert r.exit_code == 2 and "needs 2+ GPUs" in r.output and "--backend gloo" in r.output
    r = CliRunner().invoke(main, ["bench", "--decoder", "--model", "llama"])
    assert r.exit_code == 2 and "needs 2+ GPUs" in r.output


def test_hf_model_names_agree():
    from arfuse.bench.cli import HF_MODELS
    from arfuse.examples.hf_models import MODELS

    assert HF_MODELS == MODELS


def test_local_work_refuses_without_a_gpu_and_with_decoder():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real local-work run would start")
    r = CliRunner().invoke(main, ["bench", "--local-work"])
    assert r.exit_code == 2 and "needs 1+ GPUs" in r.output and "--backend gloo" in r.output
    r = CliRunner().invoke(main, ["bench", "--local-work", "--decoder", "--backend", "gloo"])
    assert r.exit_code == 2 and "two different benchmarks" in r.output, r.output


@pytest.mark.parametrize(
    "kernel, kind",
    [  # names from the 2026-12-04 H200 run
        ("triton_poi_fused_all_reduce_mul_0", "producer"),
        ("Memcpy DtoD (Device -> Device)", "copy"),
        ("void at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)", "copy"),
        ("triton_red_fused__fused_rms_norm__to_copy_add_clamp_div_1", "epilogue"),
        ("add_rms_norm", "epilogue"),
        ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "allreduce"),
    ],
)
def test_local_work_sorts_kernels(kernel, kind):
    from arfuse.bench.local import kind_of

    assert kind_of(kernel) == kind


def _local_row(tokens, graph, eager, kernels):
    from arfuse.bench.local import LocalRow
    from arfuse.bench.sweep import Case

    row = LocalRow(Case(4096, "bf16", True, "none"), tokens, graph, eager, kernels)
    return row.to_json()


def test_local_work_table_subtracts_the_producer_and_splits_the_gap():
    from arfuse.bench import local

    prod = "triton_poi_fused_mul_0"
    rows = [
        _local_row(  # at the pass's limit: its column is the op's (marked), held to nothing
            2,
            {"inductor": 10.0, "op": 11.0, "pass": 11.0},
            {"inductor": 20.0, "op": 40.0, "pass": 40.0},
            {v: {prod: 2.0} for v in ("inductor", "op", "pass")},
        ),
        # op: a 10 us copy and 2 us slower epilogue, 30 us more host time per eager call; the
        # pass: Inductor's kernels, 1 us more host time
        _local_row(
            4096,
            {"inductor": 100.0, "op": 112.0, "pass": 100.0},
            {"inductor": 150.0, "op": 192.0, "pass": 151.0},
            {
                "inductor": {prod: 50.0, "triton_per_fused_add_1": 50.0},
                "op": {prod: 50.0, "Memcpy DtoD (Device -> Device)": 10.0, "add_rms_norm": 52.0},
                "pass": {prod: 50.0, "triton_per_fused_add_1": 50.0},
            },
        ),
        _local_row(  # all as fast: 1.00x in both modes
            8192,
            {"inductor": 200.0, "op": 200.0, "pass": 200.0},
            {"inductor": 210.0, "op": 210.0, "pass": 210.0},
            {v: {prod: 100.0} for v in ("inductor", "op", "pass")},
        ),
    ]
    assert local.local_work(rows[1], "graph") == {"inductor": 50.0, "op": 62.0, "pass": 50.0}
    assert local.gap_split(rows[1]) == {"copy": 10.0, "epilogue": 2.0, "host": 30.0}
    env = {"card": "NVIDIA H200", "capability": "9.0", "world_size": 1, "torch": "2.11"}
    env |= {"python": "3.12", "date": "2026-12-04", "command": "arfuse bench --local-work"}
    md = local.markdown({"env": env, "rows": rows})
    assert (
        "| 2 | 8.0 | 9.0 | 9.0* | 0.89x | 0.89x* | 18.0 | 38.0 | 38.0* | 0.47x | 0.47x* "
        "| 0.0 | 0.0 | 19.0 |" in md
    )
    assert (
        "| 4096 | 50.0 | 62.0 | 50.0 | 0.81x | 1.00x | 100.0 | 142.0 | 101.0 | 0.70x | 0.99x "
        "| 10.0 | 2.0 | 30.0 |" in md
    )
    assert (
        "| 8192 | 100.0 | 100.0 | 100.0 | 1.00x | 1.00x | 110.0 | 110.0 | 110.0 | 1.00x | 1.00x "
        "| 0.0 | 0.0 | 0.0 |" in md
    )
    assert md.rstrip().endswith(
        "Below 0.98x, the bare pass above its limit: none.\n"
        "Below 0.98x, the op alone: hidden 4096 quant none 2 graph; "
        "hidden 4096 quant none 2 eager; hidden 4096 quant none 4096 graph; "
        "hidden 4096 quant none 4096 eager."
    )
