"""The unfused path on GPU: what plain Inductor runs for the chain, called from inside the op.

    all_reduce_(input) in place (the op's `input` is its reduction buffer: no copy), then one
    Triton add+RMSNorm(+FP8) kernel writing fresh outputs (`triton_epilogue`)

It runs wherever the fused kernel does not (past the threshold, unsupported shape, FlashInfer
missing), so it does the local work of plain Inductor's all_reduce + fused norm kernel, with no
Dynamo guard evaluation per call. Without Triton it runs the exact path's eager epilogue (the
reason logged once).
"""

from __future__ import annotations

import torch

from arfuse.kernels import exact, triton_epilogue
from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.kernels.flashinfer.plan import fallback, stats

_c10d = torch.ops._c10d_functional


def unfused(args: FusedArgs) -> FusedResult:
    stats["unfused"] += 1
    # the collective Inductor emits for a dead input: in place, waited on by the current stream
    reduced = _c10d.wait_tensor(_c10d.all_reduce_(args.input, "sum", args.group.group_name))
    missing = triton_epilogue.available()
    if missing is None:
        return triton_epilogue.epilogue(args, reduced)
    fallback("epilogue-compile", f"{missing}; running the add+RMSNorm epilogue eagerly")
    got = exact.epilogue(*exact.epilogue_inputs(args, reduced))
    if args.residual is None:  # outputs never alias the op's input: copy the sum out of it
        got = got._replace(residual=got.residual.clone())
    return got if args.norm else got._replace(norm=None)
