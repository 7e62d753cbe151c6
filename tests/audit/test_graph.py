"""ARF201's chain finder on printed post-grad graphs (every allreduce and norm form)."""

from pathlib import Path

from arfuse.audit.rules.fusion import unfused_chains
from arfuse.audit.trace.graph import parse_graph

HEADER = (
    "class <lambda>(torch.nn.Module):\n"
    '    def forward(self, arg0_1: "f32[s0, 64]", arg1_1: "f32[64]", arg2_1: "f32[s0, 64]"):\n'
)


def _graph(body: str):
    return parse_graph(HEADER + "\n".join("        " + line for line in body.strip().splitlines()))


def test_custom_op_allreduce_add_custom_norm():
    g = _graph("""
# File: /m/model.py:10 in forward, code: y = arfuse_ops.all_reduce(x, group)
all_reduce: "f32[s0, 64]" = torch.ops.arfuse.all_reduce.default(arg0_1, '0')
# File: /m/model.py:11 in forward, code: h = y + residual
add: "f32[s0, 64]" = torch.ops.aten.add.Tensor(all_reduce, arg2_1)
# File: /m/model.py:12 in forward, code: out = rms_norm(h, w, eps)
rms_norm: "f32[s0, 64]" = torch.ops.arfuse.rms_norm.default(add, arg1_1, 1e-05)
return (rms_norm, add)""")
    ((ar, add, norm),) = unfused_chains(g)
    assert ar.name == "all_reduce" and add.name == "add" and [n.name for n in norm] == ["rms_norm"]
    assert add.source.line == 11


def test_functional_allreduce_through_wait_view_and_cast_to_hf_norm_without_residual():
    g = _graph("""
all_reduce: "f32[s0, 64]" = torch.ops._c10d_functional.all_reduce.default(arg0_1, 'sum', '0')
wait_tensor: "f32[s0, 64]" = torch.ops._c10d_functional.wait_tensor.default(all_reduce)
view: "f32[s0, 64]" = torch.ops.aten.view.default(wait_tensor, [-1, 64])
convert: "f32[s0, 64]" = torch.ops.prims.convert_element_type.default(view, torch.float32)
pow_1: "f32[s0, 64]" = torch.ops.aten.pow.Tensor_Scalar(convert, 2)
mean: "f32[s0, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
add_1: "f32[s0, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
rsqrt: "f32[s0, 1]" = torch.ops.aten.rsqrt.default(add_1)
mul: "f32[s0, 64]" = torch.ops.aten.mul.Tensor(convert, rsqrt)
return (mul,)""")
    ((ar, add, norm),) = unfused_chains(g)
    assert add is None and {n.op for n in norm} == {"aten.mean", "aten.rsqrt"}


def test_fused_graph_and_lonely_allreduce_are_clean():
    fused = _graph("""
fused = torch.ops.arfuse.fused_allreduce_rmsnorm.default(arg0_1, arg2_1, arg1_1, 1e-05, '0')
getitem: "f32[s0, 64]" = fused[0]
return (getitem,)""")
    assert list(unfused_chains(fused)) == []
    lonely = _graph("""
all_reduce: "f32[s0, 64]" = torch.ops._c10d_functional.all_reduce_.default(arg0_1, 'sum', '0')
wait_tensor: "f32[s0, 64]" = torch.ops._c10d_functional.wait_tensor.default(all_reduce)
mm: "f32[s0, 64]" = torch.ops.aten.mm.default(wait_tensor, arg0_1)
return (mm,)""")
    assert list(unfused_chains(lonely)) == []


# The bare pass's run-time branch as Inductor prints it (torch 2.13, `TORCH_LOGS=post_grad_graphs`
# on a block compiled with FusionConfig(fused_max_tokens=16); paths and some types trimmed), with
# the unfused branch's name left as `{unfused}`.
BRANCH = (Path(__file__).parent / "data" / "branch_post_grad.txt").read_text()


def test_subgraph_nodes_are_scoped_and_the_pass_unfused_branch_is_not_a_finding():
    """A subgraph's node names are its own (`mul` here is not the parent's `mul`); the chain in
    the pass's `arfuse_unfused_N` branch runs only above the fusion limit: not ARF201. The same
    chain in any other subgraph (a user's own torch.cond) is."""
    g = parse_graph(BRANCH.replace("{unfused}", "arfuse_unfused_0"))
    assert g.nodes["arfuse_unfused_0.add_9"].args == ("arfuse_unfused_0.wait_tensor",)
    assert [u.name for u in g.users("mul")] == ["sym_size_int_1", "cond"]
    fused = g.nodes["arfuse_fused_0.fused_allreduce_rmsnorm_default"]
    assert (fused.module, g.nodes["cond"].module) == ("arfuse_fused_0", "")
    assert list(unfused_chains(g)) == []
    user = parse_graph(BRANCH.replace("{unfused}", "false_graph_0"))
    ((ar, add, norm),) = unfused_chains(user)
    assert (ar.name, add.name, add.source.line) == (
        "false_graph_0.all_reduce",
        "false_graph_0.add_9",
        12,
    )
    assert {n.op for n in norm} == {"aten.mean", "aten.rsqrt"}


def _artifact(name: str, payload: str, fcid: int = 0) -> str:
    meta = {
        "artifact": {"name": name, "encoding": "json"},
        "frame_id": 0,
        "frame_compile_id": fcid,
        "attempt": 0,
        "has_payload": "x",
    }
    import json

    return f"V1127 14:36:18.743000 1 torch/x.py:1] {json.dumps(meta)}\n" + "".join(
        f"\t{line}\n" for line in payload.splitlines()
    )


def test_fusion_artifact_rules_skipped_and_disabled():
    import json

    from arfuse.audit.api import analyze
    from arfuse.audit.trace.reader import parse_bytes

    graph = HEADER + (
        "        # File: /m/model.py:12 in forward, code: out = self.norm(h)\n"
        '        rms_norm: "f32[s0, 64]" = torch.ops.aten.rms_norm.default(arg0_1, [64], arg1_1)\n'
    )
    text = (
        _artifact("inductor_post_grad_graph", graph)
        + _artifact(
            "arfuse_fusion",
            json.dumps(
                {
                    "matches": 1,
                    "specs": ["c10d_hf_residual"],
                    "disabled": None,
                    "skipped": [
                        {"reason": "hidden size 100 is not a multiple of 8", "node": "rms_norm"},
                        {"reason": "hidden size 100 is not a multiple of 8", "node": "rms_norm"},
                    ],
                }
            ),
        )
        + _artifact(
            "arfuse_fusion",
            json.dumps(
                {
                    "matches": 0,
                    "specs": [],
                    "disabled": "world size 1 of group '0'",
                    "skipped": [{"reason": "world size 1 of group '0'", "node": "x"}],
                }
            ),
            fcid=1,
        )
    )
    report = analyze({0: parse_bytes(text.encode())})
    by_code = {f.code: f for f in report.findings}
    assert set(by_code) == {"ARF202", "ARF203"}  # the disabled reason is not repeated as 203
    assert (by_code["ARF203"].path, by_code["ARF203"].line) == ("/m/model.py", 12)
    assert "not a multiple of 8" in by_code["ARF203"].message
    assert len(by_code["ARF203"].details) == 2  # one finding per (line, reason), both listed
    assert report.summary["fusion"] == {"graphs": 2, "matches": 1, "post_grad_graphs": 1}
