"""The unfused path on GPU: NCCL allreduce + one compiled add+RMSNorm(+FP8) epilogue.

It runs wherever the fused kernel does not (past the threshold, unsupported shape, FlashInfer
missing), so it is the fastest unfused form rather than the exact path's eager epilogue.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from arfuse.kernels import exact
from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.kernels.flashinfer.plan import fallback, stats

_epilogues: dict[tuple, Any] = {}
_eager_epilogue = False


def _compiled_epilogue(has_residual: bool, has_scale: bool, dtype: torch.dtype) -> Any:
    """A compiled epilogue per variant; each gets its own code object, hence its own dynamo
    cache, so variants do not eat each other's recompile budget."""
    key = (has_residual, has_scale, dtype)
    fn = _epilogues.get(key)
    if fn is None:
        tag = (
            f"_epilogue_{'r' if has_residual else 'n'}{'q' if has_scale else ''}_"
            f"{str(dtype).split('.')[-1]}"
        )
        code = exact.epilogue.__code__.replace(co_name=tag)
        fn = torch.compile(
            types.FunctionType(code, exact.epilogue.__globals__, tag), dynamic=True, fullgraph=True
        )
        _epilogues[key] = fn
    return fn


def unfused(args: FusedArgs) -> FusedResult:
    global _eager_epilogue
    stats["unfused"] += 1
    inputs = exact.epilogue_inputs(args, exact.all_reduce(args.input, args.group))
    if not _eager_epilogue:
        try:
            variant = (args.residual is not None, args.scale is not None, args.input.dtype)
            return FusedResult(*_compiled_epilogue(*variant)(*inputs))
        except Exception as e:  # noqa: BLE001 - compile trouble must not fail the model
            _eager_epilogue = True
            fallback(
                "epilogue-compile",
                f"compiling the add+RMSNorm epilogue failed "
                f"({type(e).__name__}: {str(e)[:200]}); running it eagerly",
            )
    return exact.epilogue(*inputs)
