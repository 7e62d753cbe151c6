"""Read an FX graph back from its printed form (the `inductor_post_grad_graph` payload).

    # File: /m/model.py:12 in forward, code: h = y + res
    add_9: "f32[s77, 64][64, 1]cpu" = torch.ops.aten.add.Tensor(wait_tensor, arg3_1);  ...

becomes `Node(name="add_9", target="aten.add.Tensor", args=("wait_tensor", "arg3_1"),
source=Frame("/m/model.py", 12, "forward", "h = y + res"))`. Only the data flow between named
nodes is kept - enough to find an all_reduce whose result reaches an add or an RMSNorm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from arfuse.audit.trace.records import Frame

_COMMENT = re.compile(r"^\s*# File: (.+?):(\d+) in ([^,]+), code: (.*)$")
_NODE = re.compile(r"^\s*(\w+)(?:: \"[^\"]*\")? = ([\w.]+)\((.*)\)(?:;.*)?$")
_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
# a subgraph printed inside its parent (a `cond` branch, say): `    class true_graph_0(...)`
_SUBGRAPH = re.compile(r"^\s+class (\w+)\(torch\.nn\.Module\):\s*$")


@dataclass
class Node:
    name: str  # "add_9"; in a subgraph "arfuse_unfused_0.add_9" (its names are its own)
    target: str  # "aten.add.Tensor", "_c10d_functional.all_reduce_.default", "operator.getitem"
    args: tuple[str, ...]
    source: Frame | None
    users: list[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        """`aten.add.Tensor` -> `aten.add`; `arfuse.fused_allreduce_rmsnorm.default` -> ..."""
        parts = self.target.split(".")
        return ".".join(parts[:2]) if len(parts) >= 2 else self.target

    @property
    def module(self) -> str:
        """The subgraph the node is in ("" for the graph itself)."""
        return self.name.rpartition(".")[0]


@dataclass
class Graph:
    nodes: dict[str, Node]

    def users(self, name: str) -> list[Node]:
        node = self.nodes.get(name)
        return [self.nodes[u] for u in node.users] if node else []


# The fusion rules and the cross-rank checks each read the same post-grad graphs (and ranks of
# one job print identical ones): parse each text once. Callers only read the result.
@lru_cache(maxsize=256)
def parse_graph(text: str) -> Graph:
    nodes: dict[str, Node] = {}
    source: Frame | None = None
    scope = ""  # subgraphs are printed after the graph, each to the end or the next one
    for line in text.splitlines():
        sub = _SUBGRAPH.match(line)
        if sub:
            scope, source = f"{sub.group(1)}.", None
            continue
        c = _COMMENT.match(line)
        if c:
            path, lineno, fn, code = c.groups()
            source = Frame(path, int(lineno), fn.strip(), code.strip())
            continue
        m = _NODE.match(line)
        if not m:
            if not line.strip():
                source = None
            continue
        name, target, argtext = m.groups()
        if target.startswith("torch.ops."):
            target = target[len("torch.ops.") :]
        args = tuple(scope + a for a in _IDENT.findall(argtext) if scope + a in nodes)
        node = Node(scope + name, target, args, source)
        nodes[node.name] = node
        for a in dict.fromkeys(args):
            nodes[a].users.append(node.name)
    return Graph(nodes)
