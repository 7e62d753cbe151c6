"""The threshold table: lookup, overrides (in-process and ARFUSE_THRESHOLDS file), the
`arfuse thresholds` CLI, and the FlashInfer backend's pure strategy choice. CPU only: where
torch.cuda appears it is monkeypatched, so no GPU is touched and no skipif is needed."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from arfuse import thresholds as th
from arfuse.cli import main


@pytest.fixture(autouse=True)
def clean_table(monkeypatch):
    monkeypatch.delenv(th.ENV_VAR, raising=False)
    th.set_override(None)
    th.reload()
    yield
    th.set_override(None)
    th.reload()


@pytest.mark.parametrize("cap", [(9, 0), "9.0", "sm90", "sm_90a", 90, "90", [9, 0]])
def test_arch_of_hopper_spellings(cap):
    assert th.arch_of(cap) == "sm90"


@pytest.mark.parametrize("cap", [(10, 0), (10, 3), "10.0", "sm100", "sm_100a", 100])
def test_arch_of_blackwell_spellings(cap):
    assert th.arch_of(cap) == "sm100"


@pytest.mark.parametrize("cap", ["xx", "", None, (), "sm"])
def test_arch_of_rejects_garbage(cap):
    with pytest.raises(ValueError, match="compute capability"):
        th.arch_of(cap)


def test_default_sm90_entries_are_what_tune_makes_of_the_recorded_bench():
    """The measured entries come from `arfuse tune bench/results/*.json` (the README command):
    re-derive them from the recorded JSON, so a re-run bench that moves a crossover, or an
    edit to the table, fails here. The table keeps the limits without tune's 1e-9 slack."""
    from pathlib import Path

    from arfuse.bench.tune import load, tune

    results = sorted((Path(__file__).parents[1] / "bench" / "results").glob("*.json"))
    loaded, skipped = load(results)
    assert sorted(p.name for p, _ in loaded) == ["h200_tp2_bench.json", "h200_tp4_bench.json"]
    choices = tune([data for _, data in loaded])
    assert {(c.arch, c.world_size, c.hidden) for c in choices} == {
        ("sm90", ws, h) for ws in (2, 4) for h in (None, 4096, 8192)
    }
    for c in choices:
        general = th.entry((9, 0), c.world_size)
        got = general if c.hidden is None else dict(general.hidden)[c.hidden]
        assert got.oneshot_max_mb == pytest.approx(c.oneshot_max_mb, rel=1e-8), c
        assert got.fused_max_mb == pytest.approx(c.fused_max_mb, rel=1e-8), c
        assert got.source.startswith(f"tuned by arfuse tune on H200 TP{c.world_size}")
        if c.hidden is None:
            assert (
                f"worst {c.worst_ratio:.3f}x of best at {c.worst_at.rsplit(',', 1)[0]}"
                in got.source
            )
    assert th.entry((9, 0), 8).source.startswith("seed")


def test_lookup_converts_mb_to_tokens():
    lim = th.lookup((9, 0), 4, torch.bfloat16, 2048)  # the general TP4 entry
    assert lim.oneshot_max_tokens == int(2.015625 * 2**20) // (2048 * 2) == 516
    assert lim.fused_max_tokens == int(15.984375 * 2**20) // (2048 * 2) == 4092
    lim = th.lookup((9, 0), 4, torch.bfloat16, 4096)  # its hidden-4096 entry: 2 / 8.008 MB
    assert lim.oneshot_max_tokens == 2 * 2**20 // (4096 * 2) == 256
    assert lim.fused_max_tokens == int(8.0078125 * 2**20) // (4096 * 2) == 1025
    lim32 = th.lookup("sm90", 4, torch.float32, 4096)
    assert (lim32.oneshot_max_tokens, lim32.fused_max_tokens) == (128, 512)
    assert lim.token_counts() == [255, 256, 257, 1024, 1025, 1026]
    assert th.threshold_token_counts((9, 0), 2, torch.float16, 8192) == [16383, 16384, 16385]


def test_lookup_without_entry_is_none():
    assert th.lookup((8, 0), 2, torch.bfloat16, 4096) is None
    assert th.lookup((9, 0), 3, torch.bfloat16, 4096) is None
    with pytest.raises(ValueError, match="hidden"):
        th.lookup((9, 0), 2, torch.bfloat16, 0)


def test_oneshot_never_exceeds_fused():
    with pytest.warns(UserWarning, match="oneshot_max_mb 16 > fused_max_mb 4"):
        th.set_override({"sm90": {2: {"oneshot_max_mb": 16, "fused_max_mb": 4}}})
    lim = th.lookup((9, 0), 2, torch.bfloat16, 4096)
    assert lim.oneshot_max_tokens == lim.fused_max_tokens == 512


def test_override_replaces_only_named_entries_and_bumps_generation():
    gen = th.generation()
    with th.override({"sm90": {"4": {"oneshot_max_mb": 3, "fused_max_mb": 6}}}):
        assert th.generation() != gen
        assert th.entry((9, 0), 4) == th.Thresholds(3, 6, "override")
        assert th.entry((9, 0), 2).fused_max_mb == 256  # untouched
    assert th.entry((9, 0), 4).fused_max_mb == 15.984375


def test_env_file_override(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "sm90": {"8": {"oneshot_max_mb": 1, "fused_max_mb": 2}},
                "sm120": {"2": {"oneshot_max_mb": 4, "fused_max_mb": 4}},
            }
        )
    )
    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    with pytest.warns(UserWarning, match="'sm120' .* is never used"):
        assert th.entry((9, 0), 8) == th.Thresholds(1, 2, f"{th.ENV_VAR} file {path}")
    assert th.entry((12, 0), 2).fused_max_mb == 4
    # the in-process override wins over the file
    th.set_override({"sm90": {8: {"oneshot_max_mb": 0.25, "fused_max_mb": 0.5}}})
    assert th.entry((9, 0), 8).fused_max_mb == 0.5


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "not valid JSON"),
        ('["x"]', "expected an object"),
        ('{"sm90": {"two": {}}}', "not an integer"),
        ('{"sm90": {"2": {"fused_max_mb": 1}}}', "lacks"),
        ('{"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": -1}}}', "finite number"),
        ('{"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": 1, "x": 2}}}', "unknown keys"),
        # 1e308 MB is finite, but not as bytes: it used to pass and fail later in lookup (NaN)
        (
            '{"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": 1e308}}}',
            r"entry sm90/2: fused_max_mb must be a finite number of MB in \[0, 1048576\]",
        ),
        (
            '{"sm90": {"2": {"oneshot_max_mb": 1e999, "fused_max_mb": 1}}}',
            r"entry sm90/2: oneshot_max_mb must be a finite number of MB in \[0, 1048576\]"
            r".*got inf",
        ),
        (
            '{"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": 1, "hidden": {"8192": '
            '{"oneshot_max_mb": 1, "fused_max_mb": 1048577}}}}}',
            r"entry sm90/2/hidden 8192: "
            r"fused_max_mb must be a finite number of MB in \[0, 1048576\]",
        ),
        ('{"sm90": {"2": {"oneshot_max_mb": true, "fused_max_mb": 1}}}', "got True"),
    ],
)
def test_bad_env_file_is_a_clear_error(tmp_path, monkeypatch, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    with pytest.raises(ValueError, match=match):
        th.table()


def test_bad_env_file_error_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    path.write_text('{"sm90": {"4": {"oneshot_max_mb": 1, "fused_max_mb": 1e308}}}')
    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    with pytest.raises(ValueError) as e:
        th.lookup((9, 0), 4, torch.bfloat16, 4096)
    assert str(e.value).startswith(f"{th.ENV_VAR} file {path}: entry sm90/4: fused_max_mb ")
    assert "got 1e+308" in str(e.value)


def test_largest_allowed_limit_still_converts_to_tokens():
    th.set_override({"sm90": {2: {"oneshot_max_mb": th.MAX_MB, "fused_max_mb": th.MAX_MB}}})
    lim = th.lookup((9, 0), 2, torch.float32, 1)
    assert lim.oneshot_max_tokens == lim.fused_max_tokens == 2**40 // 4


def _read_with_warnings(path, monkeypatch):
    import warnings

    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        th.table()
    return [str(w.message) for w in caught]


def test_entries_the_kernel_never_uses_are_kept_and_warned_once(tmp_path, monkeypatch):
    path = tmp_path / "odd.json"
    path.write_text(
        json.dumps(
            {
                "sm80": {"2": {"oneshot_max_mb": 4, "fused_max_mb": 4}},
                "sm90": {
                    "3": {"oneshot_max_mb": 1, "fused_max_mb": 2},
                    "2": {
                        "oneshot_max_mb": 16,
                        "fused_max_mb": 4,
                        "hidden": {"8192": {"oneshot_max_mb": 9, "fused_max_mb": 8}},
                    },
                },
            }
        )
    )
    where = f"{th.ENV_VAR} file {path}"
    assert _read_with_warnings(path, monkeypatch) == [
        f"{where}: entry 'sm80' (sm80) is never used: the fused kernel runs only on sm90, sm100, "
        "so sm80 always takes the unfused path",
        f"{where}: entry sm90/3 is never used: the fused kernel runs only at world sizes (2, 4, 8)",
        f"{where}: entry sm90/2/hidden 8192: oneshot_max_mb 9 > fused_max_mb 8; nothing above the "
        "fusion limit is fused, so one-shot stops at fused_max_mb too",
        f"{where}: entry sm90/2: oneshot_max_mb 16 > fused_max_mb 4; nothing above the fusion "
        "limit is fused, so one-shot stops at fused_max_mb too",
    ]
    assert th.entry((8, 0), 2).fused_max_mb == 4  # kept: the file says what it says
    lim = th.lookup((9, 0), 2, torch.bfloat16, 4096)
    assert lim.oneshot_max_tokens == lim.fused_max_tokens == 4 * 2**20 // (4096 * 2)
    assert _read_with_warnings(path, monkeypatch) == []  # re-read: once is enough


def test_missing_env_file(monkeypatch, tmp_path):
    monkeypatch.setenv(th.ENV_VAR, str(tmp_path / "nope.json"))
    th.reload()
    with pytest.raises(ValueError, match="cannot read"):
        th.table()


def test_json_round_trip():
    data = th.to_json()
    assert th.parse_table(data) == th.table()


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_lists_every_entry_without_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, as torch would see it
    result = CliRunner().invoke(main, ["thresholds"])
    assert result.exit_code == 0, result.output
    assert "no CUDA GPU here" in result.output
    assert "sm90 TP4: one-shot <= 2.01562 MB, fused <= 15.9844 MB" in result.output
    assert "hidden 8192: one-shot <= 3 MB, fused <= 16.0156 MB" in result.output
    assert "sm100 TP2" in result.output
    assert result.output.index("sm90 TP2") < result.output.index("sm100 TP2")


def test_cli_tokens_for_hidden():
    result = CliRunner().invoke(
        main, ["thresholds", "--capability", "9.0", "--world-size", "4", "--hidden", "4096"]
    )
    assert result.exit_code == 0, result.output
    assert "one-shot <= 256 tokens, two-shot 257..1025, unfused > 1025" in result.output
    assert "sm90 TP2" not in result.output


def test_cli_json_is_a_valid_override_file(tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["thresholds", "--capability", "sm90", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"sm90"} and set(data["sm90"]) == {"2", "4", "8"}
    path = tmp_path / "t.json"
    path.write_text(result.output)
    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    assert th.entry((9, 0), 4).fused_max_mb == 15.984375
    assert th.entry((9, 0), 4).for_hidden(8192).fused_max_mb == 16.015625
    shown = CliRunner().invoke(main, ["thresholds", "--capability", "9.0"])
    assert str(path) in shown.output


def test_cli_errors_exit_2():
    assert CliRunner().invoke(main, ["thresholds", "--capability", "xx"]).exit_code == 2
    assert CliRunner().invoke(main, ["thresholds", "--hidden", "0"]).exit_code == 2


def test_cli_no_entry():
    result = CliRunner().invoke(main, ["thresholds", "--capability", "8.0"])
    assert result.exit_code == 0
    assert "no entry for sm80" in result.output


# ---- the backend's strategy choice (pure; the GPU tests check the kernels) -----------------


def test_flashinfer_module_imports_on_cpu_without_flashinfer():
    import arfuse.kernels.flashinfer as fb
    from arfuse.kernels import FusedArgs
    from arfuse.kernels.flashinfer import library

    loaded_before = library.is_loaded()
    args = FusedArgs(torch.ones(2, 8), None, torch.ones(8), None, 1e-6, 0.0, None)  # type: ignore[arg-type]
    assert fb.backend(args) is None  # not a CUDA tensor: not for this backend
    assert library.is_loaded() == loaded_before  # and FlashInfer was not imported for it


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (1, "oneshot"),
        (2, "oneshot"),
        (256, "oneshot"),
        (257, "twoshot"),
        (1024, "twoshot"),
        (1025, "unfused"),
        (0, "unfused"),
    ],
)
def test_choose_strategy_auto(tokens, expected):
    from arfuse.kernels.flashinfer import choose_strategy

    assert choose_strategy(tokens, 4, 256, 1024, 1024, twoshot=True)[0] == expected


def test_two_shot_is_on_by_default_and_its_window_runs_unfused_when_turned_off():
    from arfuse.kernels.flashinfer import choose_strategy, settings

    assert settings.twoshot
    assert choose_strategy(257, 4, 256, 1024, 1024) == ("twoshot", None)
    strategy, (key, message) = choose_strategy(257, 4, 256, 1024, 1024, twoshot=False)
    assert (strategy, key) == ("unfused", "twoshot-off") and "ARFUSE_TWOSHOT=0" in message
    assert choose_strategy(256, 4, 256, 1024, 1024, twoshot=False)[0] == "oneshot"
    assert choose_strategy(3, 4, 0, 1024, 1024, twoshot=False)[0] == "oneshot"  # tokens <= ranks
    assert choose_strategy(257, 4, 256, 1024, 1024, forced="twoshot", twoshot=False)[0] == "twoshot"


def test_choose_strategy_twoshot_needs_more_tokens_than_ranks():
    from arfuse.kernels.flashinfer import choose_strategy

    assert choose_strategy(4, 4, 0, 1024, 1024, twoshot=True)[0] == "oneshot"
    assert choose_strategy(5, 4, 0, 1024, 1024, twoshot=True)[0] == "twoshot"
    assert choose_strategy(3, 4, 0, 1024, 1024, forced="twoshot")[0] == "oneshot"


def test_choose_strategy_forced_and_workspace():
    from arfuse.kernels.flashinfer import choose_strategy

    assert choose_strategy(2000, 2, 8, 16, 4096, forced="oneshot")[0] == "oneshot"
    assert choose_strategy(2000, 2, 8, 16, 4096, forced="twoshot")[0] == "twoshot"
    assert choose_strategy(10, 2, 8, 16, 4096, forced="unfused")[1][0] == "forced"
    strategy, (key, message) = choose_strategy(5000, 2, 8, 16, 4096, forced="oneshot")
    assert (strategy, key) == ("unfused", "workspace") and "5000 tokens" in message
    assert choose_strategy(17, 2, 8, 16, 4096)[1][0] == "threshold"


def test_force_strategy_validates():
    from arfuse.kernels import flashinfer as fb

    with pytest.raises(ValueError, match="unknown strategy"):
        fb.force_strategy("fast")
    with fb.forced_strategy("oneshot"):
        assert fb.settings.strategy == "oneshot"
    assert fb.settings.strategy == "auto"


def test_per_hidden_entries_take_precedence_and_round_trip():
    import torch

    from arfuse import thresholds as th

    table = {
        "sm90": {
            "2": {
                "oneshot_max_mb": 32,
                "fused_max_mb": 32,
                "hidden": {"8192": {"oneshot_max_mb": 256, "fused_max_mb": 256}},
            }
        }
    }
    with th.override(table):
        at_4096 = th.lookup((9, 0), 2, torch.bfloat16, 4096)
        at_8192 = th.lookup((9, 0), 2, torch.bfloat16, 8192)
        assert at_4096.fused_max_tokens == 32 * 2**20 // (4096 * 2) == 4096
        assert at_8192.fused_max_tokens == 256 * 2**20 // (8192 * 2) == 16384
        dumped = th.to_json()["sm90"]["2"]
        assert dumped["hidden"]["8192"]["fused_max_mb"] == 256
        assert th.parse_table({"sm90": {"2": dumped}})["sm90"][2] == th.table()["sm90"][2]


def test_per_hidden_entry_errors_say_what_to_write():
    import pytest

    from arfuse import thresholds as th

    with pytest.raises(ValueError, match="hidden size 'x' is not an integer"):
        th.parse_table(
            {"sm90": {"2": {"oneshot_max_mb": 1, "fused_max_mb": 1, "hidden": {"x": {}}}}}
        )
    with pytest.raises(ValueError, match=r"hidden 8192 has unknown keys \['hidden'\]"):
        th.parse_table(
            {
                "sm90": {
                    "2": {
                        "oneshot_max_mb": 1,
                        "fused_max_mb": 1,
                        "hidden": {"8192": {"oneshot_max_mb": 1, "fused_max_mb": 1, "hidden": {}}},
                    }
                }
            }
        )


def test_flashinfer_settings_come_from_the_environment_and_feed_the_compile_policy():
    """One switch: ARFUSE_TWOSHOT decides the run-time dispatch and the compile-time policy."""
    from arfuse.kernels.flashinfer import settings
    from arfuse.policy import FusionPolicy
    from arfuse.settings import Settings

    env = {
        "ARFUSE_TWOSHOT": "0",
        "ARFUSE_FLASHINFER_PDL": "0",
        "ARFUSE_FLASHINFER_STRATEGY": "OneShot",
    }
    assert Settings.from_env(env) == Settings(strategy="oneshot", twoshot=False, pdl=False)
    assert Settings.from_env({}) == Settings(strategy="auto", twoshot=True, pdl=True)
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        Settings.from_env({"ARFUSE_FLASHINFER_STRATEGY": "fast"})
    saved = settings.twoshot
    try:
        settings.twoshot = False
        assert FusionPolicy.current().twoshot is False
        settings.twoshot = True
        assert FusionPolicy.current().twoshot is True
    finally:
        settings.twoshot = saved
