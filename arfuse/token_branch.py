"""The chain as a run-time branch on the token count: the fused op below the fusion limit,
plain Inductor's own kernels above it.

Where the graph's token count is dynamic and the chain has a fusion limit (the thresholds
table for its GPU and world size, or `FusionConfig.fused_max_tokens`), the pass emits, instead
of the op alone (bf16 Llama layer, limit 1024 tokens):

    sym_size = aten.sym_size.int(mm, 0)                       # tokens: every dim but the last
    le = sym_size <= 1024
    cond = higher_order.cond(le, arfuse_fused_0, arfuse_unfused_0, (mm, residual, weight))
    out = cond[0]
    add = cond[1]

    arfuse_fused_0(mm, residual, weight):
        fused = arfuse.fused_allreduce_rmsnorm(mm, residual, weight, 1e-5, 0.0, "0", "3f2a...")
        return (fused[0], fused[1])
    arfuse_unfused_0(mm, residual, weight):                   # the chain as it was
        all_reduce = _c10d_functional.all_reduce_(mm, "sum", "0")
        wait = _c10d_functional.wait_tensor(all_reduce)
        add = aten.add.Tensor(wait, residual) ... out = aten.mul(weight, ...)
        return (out, add)

Inductor compiles both branches and tests `le` in its wrapper on every call, with no guard.
Above the limit the compiled graph runs what plain torch.compile runs (the collective in place,
one add+RMSNorm kernel), so there the bare pass costs one host `if`: no op call, no Python.
The collective sums in place into `mm` only where nothing else reads `mm`, as Inductor's
reinplacing would decide (it does not run inside a branch); the fused branch likewise copies
`mm` first where something does, as the op may sum into its input.

Not under Inductor's own CUDA graphs (`mode="reduce-overhead"`): Inductor does not graph a
compiled `cond` over GPU tensors, so there the op is emitted alone and decides inside. Nor with
`FusionConfig(token_branch=False)`.

The host cost: each branch is a function of its own that re-checks its inputs' sizes and
strides, and the cond's outputs are checked again. That adds 3.6-5 us per chain and call on
this project's 2-core CPU machine and 7-10 us on the H200 machine (against 47-58 us for the op
alone above the limit; `bench/results/2026-12-04_local_work_h200_v3.md`). Under a CUDA graph
the cost is nil. Eagerly, it is paid on both sides of the limit.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.multiprocessing.reductions import StorageWeakRef

from arfuse import optable

_c10d = torch.ops._c10d_functional
# the in-place form of each functional collective plain Inductor reinplaces
_INPLACE = {_c10d.all_reduce.default: _c10d.all_reduce_.default}

#: builds the fused op's nodes into a graph: (graph, the graph's node for each outer node,
#: whether to copy the op's input first) -> the op's output nodes in the op's order
FusedBuilder = Callable[[Graph, Callable[[Node], Node], bool], list[Node]]


def tokens_of(x: Node) -> Any:
    """The token count of the chain's input: the product of every dim but the last (an int
    or a SymInt)."""
    rows: Any = 1
    for size in x.meta["val"].shape[:-1]:
        rows = rows * size
    return rows


def decided(tokens: Any, limit: int) -> bool | None:
    """True / False where `tokens <= limit` holds / fails for every size the graph serves,
    None where only the run time knows. Never adds a guard."""
    if statically_known_true(tokens <= limit):
        return True
    if statically_known_true(tokens > limit):
        return False
    return None


def is_dead_after(x: Node, chain: set[Node]) -> bool:
    """Whether the chain may sum into `x`'s buffer: only the chain reads it, and it is neither
    a graph input nor a view, nor viewed by another node (reinplacing's conditions)."""
    if x.op != "call_function" or any(u not in chain for u in x.users):
        return False
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor) or val._base is not None:
        return False
    storage = StorageWeakRef(val.untyped_storage())
    for node in x.graph.nodes:
        other = node.meta.get("val")
        if node is x or node in chain or not isinstance(other, torch.Tensor):
            continue
        if StorageWeakRef(other.untyped_storage()) == storage:
            return False
    return True


def _inputs_of(nodes: Iterable[Node], inside: set[Node]) -> list[Node]:
    """The nodes outside `inside` that `nodes` read, in first-read order."""
    seen: dict[Node, None] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in inside:
                seen.setdefault(arg, None)
    return list(seen)


def _subgraph(
    operands: list[Node], body: Callable[[Graph, Callable[[Node], Node]], list[Node]]
) -> GraphModule:
    graph = Graph()
    env: dict[Node, Node] = {}
    for node in operands:
        env[node] = graph.placeholder(node.name)
        env[node].meta.update(node.meta)
    outs = body(graph, env.__getitem__)
    graph.output(tuple(outs))
    graph.lint()
    return GraphModule(torch.nn.Module(), graph)


def _copy_chain(
    chain: list[Node], outputs: list[Node], inplace_input: Node | None
) -> Callable[[Graph, Callable[[Node], Node]], list[Node]]:
    """The unfused branch's body: the chain's nodes as they were, the collective in place on
    `inplace_input` where given."""

    def body(graph: Graph, outer: Callable[[Node], Node]) -> list[Node]:
        env: dict[Node, Node] = {}

        def lookup(n: Node) -> Node:
            return env[n] if n in env else outer(n)

        for node in chain:
            env[node] = graph.node_copy(node, lookup)
            if node.target in _INPLACE and node.args[0] is inplace_input:
                env[node].target = _INPLACE[node.target]
        return [env[o] for o in outputs]

    return body


def rewrite_as_branch(
    graph: Graph,
    chain: list[Node],
    x: Node,
    outputs: list[Node],
    fused: FusedBuilder,
    limit: int,
) -> list[Node]:
    """Replace `chain` (in graph order, reading `x` first) by cond(tokens <= limit, fused,
    unfused); `outputs`: the chain's nodes the op's outputs replace, in the op's order. Return
    the new cond's getitem nodes, in that order."""
    gm = graph.owning_module
    assert gm is not None, "the pass runs on a GraphModule's graph"
    members = set(chain)
    inplace = is_dead_after(x, members)

    # the fused branch's nodes, built once in a scratch graph to find what they read
    scratch = Graph()
    scratch_nodes: dict[Node, Node] = {}

    def scratch_lookup(n: Node) -> Node:
        if n not in scratch_nodes:
            scratch_nodes[n] = scratch.placeholder(n.name)
            scratch_nodes[n].meta.update(n.meta)
        return scratch_nodes[n]

    fused(scratch, scratch_lookup, not inplace)
    operands = list(dict.fromkeys([*_inputs_of(chain, members), *scratch_nodes]))

    true_gm = _subgraph(operands, lambda g, lookup: fused(g, lookup, not inplace))
    false_gm = _subgraph(operands, _copy_chain(chain, outputs, x if inplace else None))
    names = []
    for prefix, sub in ((optable.FUSED_BRANCH, true_gm), (optable.UNFUSED_BRANCH, false_gm)):
        i = 0
        while hasattr(gm, f"{prefix}_{i}"):
            i += 1
        gm.register_module(f"{prefix}_{i}", sub)
        names.append(f"{prefix}_{i}")

    stack_trace = chain[-1].meta.get("stack_trace")
    with graph.inserting_before(chain[-1]):
        # tokens_of(x) in the graph: a sym_size per dynamic dim, multiplied
        tokens: Any = None
        for d, size in enumerate(x.meta["val"].shape[:-1]):
            factor: Any = size
            if not isinstance(size, int):
                factor = graph.call_function(torch.ops.aten.sym_size.int, (x, d))
                factor.meta["val"] = size
            if tokens is not None:
                factor = graph.call_function(operator.mul, (tokens, factor))
                factor.meta["val"] = operator.mul(*(_v(a) for a in factor.args))
            tokens = factor
        pred = graph.call_function(operator.le, (tokens, limit))
        pred.meta["val"] = tokens_of(x) <= limit
        branches = [graph.get_attr(name) for name in names]
        cond = graph.call_function(torch.ops.higher_order.cond, (pred, *branches, tuple(operands)))
        cond.meta["val"] = [o.meta["val"] for o in outputs]
        results = []
        for i, out in enumerate(outputs):
            results.append(graph.call_function(operator.getitem, (cond, i)))
            results[-1].meta["val"] = out.meta["val"]
    for node in [cond, *results]:
        if stack_trace:
            node.meta["stack_trace"] = stack_trace
    return results


def _v(a: Any) -> Any:
    return a.meta["val"] if isinstance(a, Node) else a
