"""transformers' own tensor parallelism on a GPU: the four tiny checkpoints of
tests/test_hf_tp_plan.py loaded with `tp_plan="auto"` on two gloo ranks sharing one GPU (CUDA
IPC within the device), bf16, compiled by Inductor with the pass. Correctness only: never time
two ranks on one GPU. Skipped cleanly without CUDA or transformers."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from arfuse.testing import SpawnedGroup  # noqa: E402
from tests import dist_checks as dc  # noqa: E402
from tests.gpu.gpu_checks import SAFE_ENV  # noqa: E402
from tests.test_hf_tp_plan import EXPECTED, MODELS, audit  # noqa: E402


def test_tp_plan_auto_on_one_shared_gpu_is_fully_fused_and_matches(tmp_path):
    with SpawnedGroup(world_size=2, backend="gloo", timeout=600, env=SAFE_ENV) as group:
        r0, r1 = group.run(dc.check_hf_tp_plan, str(tmp_path), MODELS, "bf16", timeout=840)
    for name in MODELS:
        r = r0[name]
        print(f"\n[hf tp_plan gpu] {name}: {r['matched']} errors {r['errors']}")
        assert r["matched"] == EXPECTED[name] and r["skipped"] == [], (name, r["skipped"])
        assert r1[name]["matched"] == r["matched"]
        [before], [after] = r["before"], r["after"]
        assert dc.count_allreduces(before) == 5 and dc.count_allreduces(after) == 0
        assert dc.count_fused(after) == 5
        # bf16 on both sides; the fused kernel sums in its own order
        assert all(e <= 2e-2 for e in r["errors"].values()), (name, r["errors"])
        done = audit(tmp_path / "traces" / name)
        assert done.returncode == 0, done.stdout + done.stderr
