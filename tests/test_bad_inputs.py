"""Bad input a user can hand arfuse gets a message saying what was wrong, never a traceback or a
silent wrong answer: `arfuse tune` on broken bench JSON (exit 2 naming the file and the row),
the fused ops on a non-contiguous weight or a negative eps (ValueError, eager and from the fake
kernels), and `arfuse.compile(ranges=...)` with something that is not a list of token counts.
No compiles: the ops are called eagerly and under FakeTensorMode, the way Inductor's
compile-time shape propagation calls their fake kernels."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch._subclasses.fake_tensor import FakeTensorMode

import arfuse
from arfuse.cli import main
from tests.bench_rows import bench_row

# ---- arfuse tune ----------------------------------------------------------------------------


def _result():
    return {
        "env": {"capability": "9.0", "world_size": 4},
        "rows": [
            bench_row(1, 5, None, 15, 12),
            bench_row(256, 25, 30, 38, 35),
            bench_row(1024, 97, 67, 75, 71),
            bench_row(4096, 379, 237, 218, 205),
        ],
    }


def _tune(tmp_path, content: bytes):
    path = tmp_path / "b.json"
    path.write_bytes(content)
    return path, CliRunner().invoke(main, ["tune", str(path), "--out", str(tmp_path / "t.json")])


def _broken(mutate):
    result = _result()
    mutate(result)
    return json.dumps(result).encode()


def _negate_all(result):
    for row in result["rows"]:
        row["times_us"] = {k: (-v if v is not None else None) for k, v in row["times_us"].items()}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            _broken(lambda r: r["rows"][2]["times_us"].update(unfused_compiled=0)),
            "row 2: times_us['unfused_compiled'] is 0; "
            "each time is a positive number of microseconds",
        ),
        (_broken(lambda r: r["rows"][1].pop("times_us")), "row 1: has no times_us"),
        (
            _broken(lambda r: r["rows"][3].update(mb="big")),
            "row 3: mb is 'big'; it must be the activation size in MB, a number > 0",
        ),
        (_broken(_negate_all), "row 0: times_us['unfused_eager'] is -15; each time is a positive"),
        (
            _broken(lambda r: r["rows"][0].update(tokens=True)),
            "row 0: tokens is True; it must be an integer >= 1",
        ),
        (_broken(lambda r: r["rows"].append(7)), "row 4: is int, not an object"),
        (_broken(lambda r: r["env"].update(capability="nine")), "env.capability is 'nine'"),
        (_broken(lambda r: r["env"].update(world_size=0)), "env.world_size is 0"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
        (b'{"env": {}, "rows": [', "not valid JSON"),
        (b"[1, 2]", 'not an `arfuse bench` JSON result (an object with "env" and "rows")'),
    ],
)
def test_tune_bad_file_exits_2_naming_the_file_and_row(tmp_path, content, message):
    path, r = _tune(tmp_path, content)
    assert r.exit_code == 2, r.output
    assert f"{path}: " in r.output and message in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "t.json").exists()  # nothing written from bad measurements


def test_tune_negative_tolerance_exits_2(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_result()))
    r = CliRunner().invoke(main, ["tune", str(path), "--tolerance", "-1"])
    assert r.exit_code == 2 and "tolerance -1.0: give a fraction >= 0" in r.output, r.output


def test_tune_skips_decoder_results_and_names_them(tmp_path):
    """`arfuse tune bench/results/*.json` (the README command) also matches `--decoder`
    results: they are skipped with a note, and a decoder result alone is exit 2."""
    good, decoder = tmp_path / "b.json", tmp_path / "decoder.json"
    good.write_text(json.dumps(_result()))
    decoder.write_text(
        json.dumps(
            {
                "env": {"capability": "9.0", "world_size": 4},
                "rows": [{"tokens": 1, "layers": 4, "compile_us": 9.0}],
            }
        )
    )
    r = CliRunner().invoke(main, ["tune", str(good), str(decoder)])
    assert r.exit_code == 0, r.output
    assert f"skipped {decoder}: an `arfuse bench --decoder` result" in r.stderr
    assert '"source": "tuned by arfuse tune from b.json;' in r.stdout
    r = CliRunner().invoke(main, ["tune", str(decoder)])
    assert r.exit_code == 2 and "no `arfuse bench` strategy sweep" in r.output, r.output


def test_tune_skips_local_work_results(tmp_path):
    """`--local-work` results (one rank, no strategies) sit in bench/results/ too."""
    good, local = tmp_path / "b.json", tmp_path / "local.json"
    good.write_text(json.dumps(_result()))
    row = {"tokens": 8, "hidden": 4096, "graph_us": {"op": 3.0}, "eager_us": {"op": 9.0}}
    local.write_text(json.dumps({"env": {"capability": "9.0", "world_size": 1}, "rows": [row]}))
    r = CliRunner().invoke(main, ["tune", str(good), str(local)])
    assert r.exit_code == 0, r.output
    assert f"skipped {local}: an `arfuse bench --local-work` result" in r.stderr


# ---- ARFUSE_THRESHOLDS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0); point it at a thresholds JSON file"),
        (b'{"sm90": ', "not valid JSON (Expecting value at line 1, column 10)"),
    ],
)
def test_thresholds_file_that_is_not_json_says_how_to_get_one(
    tmp_path, monkeypatch, content, message
):
    # a non-UTF-8 file escaped as a bare UnicodeDecodeError before the file reader was shared
    from arfuse import thresholds

    path = tmp_path / "t.json"
    path.write_bytes(content)
    monkeypatch.setenv(thresholds.ENV_VAR, str(path))
    thresholds.reload()
    try:
        with pytest.raises(ValueError) as info:
            thresholds.table()
    finally:
        monkeypatch.delenv(thresholds.ENV_VAR)
        thresholds.reload()
    assert str(info.value).startswith(f"{thresholds.ENV_VAR}={str(path)!r}: {message}")


# ---- the fused ops --------------------------------------------------------------------------


def _op_args(weight=None, eps=1e-6):
    x = torch.randn(4, 8)
    return {
        "input": x,
        "residual": torch.randn(4, 8),
        "weight": torch.ones(8) if weight is None else weight,
        "eps": eps,
        "group_name": "0",
    }


def _strided_weight():
    w = torch.ones(16)[::2]
    assert w.shape == (8,) and not w.is_contiguous()
    return w


BAD_OPS = [
    (
        {"weight": _strided_weight()},
        r"weight \(strides \(2,\)\) is not contiguous; call \.contiguous\(\) first",
    ),
    ({"eps": -1e-6}, r"eps -1e-06 must be a finite number >= 0 \(the RMSNorm epsilon"),
    ({"eps": math.nan}, r"eps nan must be a finite number >= 0"),
    ({"eps": math.inf}, r"eps inf must be a finite number >= 0"),
]


@pytest.mark.parametrize("bad, message", BAD_OPS)
@pytest.mark.parametrize("fake", [False, True], ids=["eager", "fake"])
def test_fused_op_rejects_bad_weight_and_eps(bad, message, fake):
    """Eager: the check runs before the group is resolved (group "0" does not exist here, so a
    missing check would fail differently). Fake: what Inductor runs at compile time."""
    args = {**_op_args(**bad), "scale": torch.ones(())}
    mode = FakeTensorMode()
    if fake:
        args = {
            k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()
        }
    scale = args.pop("scale")
    with mode if fake else torch.no_grad():
        with pytest.raises(ValueError, match="arfuse::fused_allreduce_rmsnorm: " + message):
            arfuse.ops.fused_allreduce_rmsnorm(**args)
        for name in ("fused_allreduce_rmsnorm_fp8", "fused_allreduce_rmsnorm_quant_fp8"):
            with pytest.raises(ValueError, match=f"arfuse::{name}: " + message):
                getattr(arfuse.ops, name)(
                    args["input"],
                    args["residual"],
                    args["weight"],
                    scale,
                    args["eps"],
                    args["group_name"],
                )


def test_rms_norm_op_rejects_negative_eps_and_keeps_zero():
    x = torch.randn(3, 8, dtype=torch.float64).float()
    with pytest.raises(ValueError, match=r"arfuse::rms_norm: eps -0.5 must be a finite number"):
        arfuse.ops.rms_norm(x, torch.ones(8), -0.5)
    out = arfuse.ops.rms_norm(x, torch.ones(8), 0.0)  # eps 0 is allowed: a valid (if bare) norm
    ref = x.double() / x.double().pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def test_eps_tensor_overload_checks_the_value_when_it_runs():
    args = _op_args()
    with pytest.raises(ValueError, match="eps -1.0 must be a finite number >= 0"):
        torch.ops.arfuse.fused_allreduce_rmsnorm.eps_tensor(
            args["input"], args["residual"], args["weight"], torch.tensor(-1.0), 0.0, "0"
        )


# ---- arfuse.compile(ranges=...) -------------------------------------------------------------


@pytest.mark.parametrize(
    "ranges, shown",
    [
        ([2.7], "ranges=[2.7]: 2.7 is not a split point"),
        (["128"], "ranges=['128']: '128' is not a split point"),
        ([True], "ranges=[True]: True is not a split point"),
        ([math.inf], "ranges=[inf]: inf is not a split point"),
        ([128, 0], "ranges=[128, 0]: 0 is not a split point"),
        (128, "ranges=128 is not a list"),
        ("fast", "ranges='fast': "),
    ],
)
def test_compile_rejects_what_is_not_a_split_point(ranges, shown):
    with pytest.raises(ValueError) as e:
        arfuse.compile(torch.nn.Linear(8, 8), ranges=ranges)
    assert shown in str(e.value)
    assert "a split point is a positive int token count" in str(e.value)
    assert "give 'auto' or a list of split points, e.g. ranges=[128, 2048]" in str(e.value)


def test_compile_takes_int_like_split_points():
    from arfuse.ranges import split_points

    np = pytest.importorskip("numpy")
    assert split_points((np.int64(2048), 128, 128)) == [128, 2048]
    assert split_points([]) == [] and split_points("auto") == "auto"
    assert arfuse.compile(torch.nn.Linear(8, 8), ranges=(2048, 128)).backend.requested == [
        128,
        2048,
    ]
