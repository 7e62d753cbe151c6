"""Post-grad graphs without code generation: the graph Inductor's custom passes see, in ~1 s.

`PostGradCapture(pass_).backend` is a Dynamo backend that runs AOTAutograd with Inductor's
decompositions, then Inductor's joint-graph and post-grad passes (with the given
`post_grad_custom_post_pass`), and keeps each resulting FX GraphModule in `.graphs`; the graph
runs eagerly (op by op), so tests can check numerics of the rewritten graph without paying for
an Inductor compile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._higher_order_ops.auto_functionalize import (
    auto_functionalized,
    auto_functionalized_v2,
)
from torch._inductor import config as inductor_config
from torch._inductor.decomposition import select_decomp_table
from torch._inductor.fx_passes.joint_graph import joint_graph_passes
from torch._inductor.fx_passes.post_grad import post_grad_passes
from torch._inductor.virtualized import V

_FUNCTIONALIZED = (auto_functionalized, auto_functionalized_v2)


class PostGradCapture:
    """A Dynamo backend that keeps every post-grad graph it produced, in order."""

    def __init__(self, custom_post_pass: Any = None) -> None:
        self.custom_post_pass = custom_post_pass
        self.graphs: list[torch.fx.GraphModule] = []
        self.backend = aot_autograd(fw_compiler=self._compile, decompositions=select_decomp_table())

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        fake_mode = torch._guards.detect_fake_mode(example_inputs)
        with (
            inductor_config.patch(post_grad_custom_post_pass=self.custom_post_pass),
            V.set_fake_mode(fake_mode),
        ):
            joint_graph_passes(gm)
            post_grad_passes(gm, True)
        gm.recompile()
        self.graphs.append(gm)
        return gm.forward


def op_counts(gm: torch.fx.GraphModule | torch.fx.Graph) -> Counter[str]:
    """Count call_function nodes by op name, e.g. 'arfuse.fused_allreduce_rmsnorm.default',
    '_c10d_functional.all_reduce_.default', 'aten.rsqrt.default'. A functionalized call of a
    mutating op (`auto_functionalized[_v2](op, ...)`, as the fusion pass emits the fused op)
    counts as that op."""
    graph = gm.graph if isinstance(gm, torch.fx.GraphModule) else gm
    return Counter(
        str(n.args[0] if n.target in _FUNCTIONALIZED else n.target)
        for n in graph.nodes
        if n.op == "call_function"
    )
