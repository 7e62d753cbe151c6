"""FusedArgs: what every kernel path reads of one fused call (no process group needed)."""

from __future__ import annotations

import pytest
import torch

from arfuse.kernels import FusedArgs, FusedResult


def _args(shape, scale):
    x = torch.ones(*shape, dtype=torch.bfloat16)
    weight = torch.ones(shape[-1], dtype=torch.bfloat16)
    return FusedArgs(x, None, weight, scale, 1e-6, 0.0, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape, tokens", [((5, 64), 5), ((2, 3, 64), 6), ((1, 64), 1)])
def test_tokens_are_the_rows_that_reach_the_allreduce(shape, tokens):
    args = _args(shape, None)
    assert (args.tokens, args.hidden) == (tokens, 64)


def test_new_outputs_have_the_call_shapes_and_fp8_only_with_a_scale():
    plain = _args((2, 3, 64), None).new_outputs()
    assert isinstance(plain, FusedResult) and plain.quant is None
    assert [(t.shape, t.dtype) for t in plain[1:]] == [((2, 3, 64), torch.bfloat16)] * 2
    fp8 = _args((2, 3, 64), torch.ones(1)).new_outputs()
    assert fp8.quant is not None
    assert (fp8.quant.shape, fp8.quant.dtype) == ((2, 3, 64), torch.float8_e4m3fn)


def test_args_are_frozen():
    args = _args((2, 64), None)
    with pytest.raises(AttributeError):
        args.eps = 1e-5  # type: ignore[misc]
