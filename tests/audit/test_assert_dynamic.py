"""`arfuse.testing.assert_dynamic` in a user's pytest suite (runs in this process)."""

from pathlib import Path

import pytest
import torch

from arfuse.testing import assert_dynamic

pytestmark = pytest.mark.timeout(300)


class Clean(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.silu(x) * x.shape[0]


class Threshold(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] <= 256:
            return x * 2
        return x - 1


def test_clean_model_passes_and_returns_the_report():
    report = assert_dynamic(
        Clean(), lambda n: (torch.randn(n, 8),), sizes=[16, 255, 256, 257], backend="aot_eager"
    )
    assert report.findings == [] and report.summary["compiles"] == 1


def test_threshold_model_fails_with_the_line():
    with pytest.raises(AssertionError) as info:
        assert_dynamic(
            Threshold(),
            lambda n: (torch.randn(n, 8),),
            sizes=[16],
            thresholds=[256],
            backend="aot_eager",
        )
    text = str(info.value)
    assert "ARF102" in text and "if x.shape[0] <= 256:" in text
    src = Path(__file__).read_text().splitlines()
    line = next(i for i, t in enumerate(src, 1) if t.strip() == "if x.shape[0] <= 256:")
    assert f"test_assert_dynamic.py:{line}: ARF102" in text
    assert "num_tokens=257" in text  # the recompile when crossing


def test_3d_inputs_with_named_token_dims():
    class Seq(torch.nn.Module):
        def forward(self, x):  # [batch, seq, hidden]; seq carries the tokens
            return x.softmax(-1) * x.shape[1]

    report = assert_dynamic(
        Seq(),
        lambda n: (torch.randn(2, n, 8),),
        sizes=[16, 300],
        token_dims={0: 1},
        backend="aot_eager",
    )
    assert report.summary["token_sources"] == ["L['x'].size()[1]"]


def test_repeated_calls_see_fresh_guards():
    # dynamo caches compiled code per code object; assert_dynamic resets it, so a second
    # audit of the same class still sees (and reports) the guard
    for _ in range(2):
        with pytest.raises(AssertionError, match="ARF102"):
            assert_dynamic(
                Threshold(), lambda n: (torch.randn(n, 8),), sizes=[16, 300], backend="aot_eager"
            )
