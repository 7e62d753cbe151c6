"""transformers' own tensor parallelism: tiny Llama, Qwen3, Gemma 3 and Mistral checkpoints
loaded with `DistributedConfig(tp_plan="auto")` on the session's 2-rank gloo group, compiled by
Inductor with the pass (issue 25). One group call runs all four models (one compile each)."""

import subprocess
import sys

import pytest

from tests import dist_checks as dc

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FUSED = "arfuse.fused_allreduce_rmsnorm.default"
MODELS = ("llama", "qwen3", "gemma3", "mistral")
# 2 layers: the embedding's chain (vocab-parallel, its reduced value also the first residual)
# plus o_proj and down_proj per layer. Gemma 3 norms o/down outputs before the residual add.
EXPECTED = {
    "llama": {"c10d/hf/none/none": 1, "c10d/hf/res+ar/none": 4},
    "qwen3": {"c10d/hf/none/none": 1, "c10d/hf/res+ar/none": 4},
    "mistral": {"c10d/hf/none/none": 1, "c10d/hf/res+ar/none": 4},
    "gemma3": {"c10d/gemma/none/none": 5},
}


def audit(trace_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arfuse", "audit", "--trace", str(trace_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def hf_tp(gloo2, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tp_plan")
    if not gloo2.alive:
        pytest.fail("the 2-rank gloo group died in an earlier test; see that failure")
    return root, gloo2.run(dc.check_hf_tp_plan, str(root), MODELS, timeout=900)


@pytest.mark.parametrize("name", MODELS)
def test_tp_plan_auto_is_fully_fused_and_matches_the_unsharded_model(hf_tp, name):
    root, (r0, r1) = hf_tp
    r = r0[name]
    assert r["matched"] == EXPECTED[name] and r["skipped"] == [], r["skipped"]
    [before], [after] = r["before"], r["after"]  # one dynamic graph for the 3 sizes
    assert dc.count_allreduces(before) == 5 and dc.count_allreduces(after) == 0
    assert (
        after.get(FUSED) == 5
        and after.get("aten.rsqrt.default", 0) == before.get("aten.rsqrt.default") - 5
    )  # the final norm and Qwen3/Gemma 3's per-head q/k norms stay
    assert r1[name]["matched"] == r["matched"]
    # fp32 against the same checkpoint loaded whole and run eager: summation order only
    assert all(e <= 1e-6 for e in r["errors"].values()), r["errors"]
    assert set(r["errors"]) == {5, 9, 17}


@pytest.mark.parametrize("name", MODELS)
def test_audit_of_the_tp_plan_run_passes(hf_tp, name):
    root, _ = hf_tp
    done = audit(root / "traces" / name)
    assert done.returncode == 0, done.stdout + done.stderr
    # 5 chains in each rank's one graph
    assert "fusion pass: 10 allreduce chain(s) fused in 2 graph(s) over 2 ranks" in done.stdout
    assert "ranks read [0, 1] of world size unknown (offline: no run.json)" in done.stdout
