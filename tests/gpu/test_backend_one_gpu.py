"""The FlashInfer backend on one GPU: `pytest -m gpu tests/gpu` on the GPU machine.

The fused kernel needs 2+ ranks (tests/gpu/test_flashinfer_gpu.py), but a TP1 group still goes
through the backend: its plan says "world size 1", and the GPU unfused path runs. Skipped
cleanly without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from arfuse.process_group import SpawnedGroup  # noqa: E402
from tests.gpu import gpu_checks as gc  # noqa: E402
from tests.gpu.gpu_checks import SAFE_ENV, TOL, assert_row  # noqa: E402


def test_world_size_one_runs_the_unfused_path_exactly():
    with SpawnedGroup(world_size=1, backend="nccl", timeout=240, env=SAFE_ENV) as group:
        out = group.run(gc.check_single_rank, timeout=420)[0]
    assert [r["ran"] for r in out["rows"]] == ["unfused"] * len(out["rows"])
    for row in out["rows"]:
        assert_row(row, tol=TOL)
    assert set(out["reasons"]) == {"world"}, out["reasons"]  # not epilogue-compile, not missing
    assert "world size 1" in out["reasons"]["world"]
    # the epilogue is one Triton kernel per variant: no Dynamo graph, no guard per call
    assert out["graphs_compiled"] == 0, out["graphs_compiled"]
