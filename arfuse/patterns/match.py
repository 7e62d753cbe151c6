"""Recognise `all_reduce -> [steps] -> [+ residual] -> RMSNorm -> [FP8 quant]` in a post-grad graph.

Each spec axis has its own recogniser; `match_chain` composes them starting from one allreduce
node and returns a `ChainMatch` naming the spec it found, or a `Miss` saying why this chain
cannot be fused. The post-grad forms recognised (bf16 shown; fp32 graphs have no converts):

    allreduce   c10d:     r = _c10d_functional.all_reduce[_](x, "sum", group); w = wait_tensor(r)
                arfuse:   w = arfuse.all_reduce(x, group)
    steps       w -> view/reshape/_unsafe_view ... (e.g. [T, H] -> [B, S, H]), and mul(w, s) by a
                number or a one-element graph input s (Gemma's embedding scale): replayed on
                the collective's input, as allreduce(x) * s == allreduce(x * s) up to rounding
    residual    h = add(w, res) | add(res, w)
    norm        hf:       f = convert(h, f32); n = mul(f, rsqrt(add(mean(pow(f, 2), [-1]), eps)))
                          out = mul(weight, convert(n, bf16))
                rms_norm: same n; out = convert(mul(n, convert?(weight)), bf16)
                gemma:    same n; out = convert(mul(n, add(convert(weight), 1.0)), bf16)
                custom_op: out = arfuse.rms_norm(h, weight, eps)
    quant       q = convert(clamp_max(clamp_min(div(convert(out, f32), scale), -448), 448), fp8)
                rms_norm / gemma before a quant may also keep the product in f32, without the
                convert to bf16 and back (torch 2.11's Inductor drops that round trip): the
                quant then divides the product itself
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.fx import Node

from arfuse import optable
from arfuse.optable import FP8_MAX
from arfuse.patterns.spec import FusionSpec

if TYPE_CHECKING:
    from arfuse.config import FusionConfig

aten = torch.ops.aten
prims = torch.ops.prims

VIEW_OPS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CONVERT = prims.convert_element_type.default
ADD = (aten.add.Tensor, aten.add.Scalar)
MUL = (aten.mul.Tensor,)
SUPPORTED = tuple(getattr(torch, name) for name in optable.SUPPORTED_DTYPES)
FP8 = getattr(torch, optable.FP8_DTYPE)


@dataclass
class ChainMatch:
    """One fusible chain. `nodes` are removed; the three outputs are rewired to the fused op."""

    spec: FusionSpec
    group_name: str
    allreduce_input: Node
    steps: list[Node]  # views and scalar multiplies, in order
    residual: Node | None
    weight: Node
    eps: float | Node  # a Node: a 0-d float tensor input (dynamic=True)
    weight_offset: float  # 1.0 for Gemma's (1 + weight), else 0.0
    scale: Node | None
    residual_out: Node  # the add, or the (viewed) allreduce result when no residual
    norm_out: Node
    quant_out: Node | None
    nodes: list[Node] = field(default_factory=list)
    # weight/eps-side nodes (a float32 copy of the weight, Gemma's 1 + w, eps casts): erased
    # only if left without users
    weight_nodes: list[Node] = field(default_factory=list)

    @property
    def last(self) -> Node:
        return self.quant_out if self.quant_out is not None else self.norm_out

    @property
    def norm_read(self) -> bool:
        """Whether anything outside the chain reads the norm's output (so the fused op must
        produce it; behind an FP8 quant it is often read by the quant alone)."""
        chain = set(self.nodes)
        return any(user not in chain for user in self.norm_out.users)


@dataclass(frozen=True)
class Miss:
    """A chain that looks like allreduce + norm but must stay unfused, and why."""

    reason: str
    node: str


# ---- small helpers ---------------------------------------------------------------------------


def _is(node: Any, *targets: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, Node) else None


def _dtype(node: Any) -> Any:  # torch.dtype or None
    v = _val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


# The graph walk below is untyped FX (args are `Argument`): helpers return Any, and every use
# is checked with `_is` / isinstance, which also rejects None.
def _only_user(node: Any) -> Any:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _users(node: Node, pred: Callable[[Node], Any]) -> list[Node]:
    return [u for u in node.users if pred(u)]


def _other(node: Any, this: Any) -> Any:
    a, b = node.args[0], node.args[1]
    return b if a is this else a if b is this else None


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _is_convert_to(node: Any, dtype: Any) -> bool:
    return _is(node, CONVERT) and node.args[1] == dtype


# ---- axis: allreduce -------------------------------------------------------------------------


@dataclass
class _AllReduce:
    form: str
    input: Node
    group_name: str
    out: Node
    nodes: list[Node]


_OVERLOADS: dict[str, tuple[Any, ...]] = {}


def _overloads(qualified: str) -> tuple[Any, ...]:
    """Every overload of the op `ns::name` (empty while the op is not registered)."""
    if qualified not in _OVERLOADS:
        ns, name = qualified.split("::")
        packet = getattr(getattr(torch.ops, ns), name, None)
        if packet is None:
            return ()  # not cached: the op may be registered later
        _OVERLOADS[qualified] = tuple(getattr(packet, o) for o in packet.overloads())
    return _OVERLOADS[qualified]


def _targets(qualified: Iterable[str]) -> frozenset[Any]:
    return frozenset(op for q in qualified for op in _overloads(q))


def _argument(node: Node, index: int) -> Any:
    """Argument `index` of an op call, by position, by keyword or the schema's default."""
    if index < len(node.args):
        return node.args[index]
    arg = cast(Any, node.target)._schema.arguments[index]
    return node.kwargs.get(arg.name, arg.default_value)


def _group_arg(schema: torch.FunctionSchema) -> int | None:
    for i, arg in enumerate(schema.arguments):
        if str(arg.type) == "str" and arg.name in ("group_name", "group"):
            return i
    return None


def custom_allreduce_ops(config: FusionConfig) -> dict[Any, int]:
    """OpOverload -> index of its group-name argument, for the ops named in the config."""
    found: dict[Any, int] = {}
    for qualified in config.allreduce_ops:
        for op in _overloads(qualified):
            idx = _group_arg(op._schema)
            if idx is not None:
                found[op] = idx
    return found


def match_allreduce(node: Node, custom_ops: dict[Any, int]) -> _AllReduce | Miss | None:
    if _is(node, *_targets(optable.C10D_ALLREDUCE)):
        inp, reduce_op, group = cast(Any, node.args[:3])
        if str(reduce_op).lower() != "sum":
            return Miss(f"all_reduce with reduce op {reduce_op!r}, only 'sum' fuses", node.name)
        wait = _only_user(node)
        if not _is(wait, *_overloads(optable.C10D_WAIT)):
            return Miss("all_reduce result is used before (or without) wait_tensor", node.name)
        return _AllReduce("c10d", inp, str(group), wait, [node, wait])
    if _is(node, *_overloads(optable.ARFUSE_ALLREDUCE)):
        return _AllReduce("arfuse", _argument(node, 0), str(_argument(node, 1)), node, [node])
    if node.op == "call_function" and node.target in custom_ops:
        group = _argument(node, custom_ops[node.target])
        return _AllReduce("custom", _argument(node, 0), str(group), node, [node])
    return None


# ---- axis: norm ------------------------------------------------------------------------------


@dataclass
class _Norm:
    form: str
    weight: Node
    eps: float | Node
    weight_offset: float
    out: Node
    nodes: list[Node]
    weight_nodes: list[Node] = field(default_factory=list)


def _custom_norm_targets(config: FusionConfig) -> frozenset[Any]:
    return _targets((optable.ARFUSE_RMS_NORM, *config.norm_ops))


def _first_user(node: Any, pred: Callable[[Node], Any]) -> Any:
    found = _users(node, pred)
    return found[0] if found else None


def _eps(x: Any) -> tuple[float | Node, list[Node]] | None:
    """eps as a number, or as a 0-d float tensor input (what Dynamo makes of a float attribute
    under dynamic=True) with the casts applied to it: (eps, cast nodes)."""
    number = _number(x)
    if number is not None:
        return number, []
    v = _val(x)
    if not isinstance(v, torch.Tensor) or v.dim() != 0 or not v.dtype.is_floating_point:
        return None
    if (
        _is(x, CONVERT)
        and isinstance(x.args[0], Node)
        and _val(x.args[0]) is not None
        and _val(x.args[0]).dim() == 0
    ):
        return x.args[0], [x]
    return x, []


def _adds_eps_to(mean: Node) -> Callable[[Node], bool]:
    return lambda u: _is(u, *ADD) and u.args[0] is mean and _eps(u.args[1]) is not None


def _multiplies(a: Node, b: Node) -> Callable[[Node], bool]:
    return lambda u: _is(u, *MUL) and _other(u, a) is b


def _divides(x: Node) -> Callable[[Node], bool]:
    return lambda u: _is(u, aten.div.Tensor) and u.args[0] is x


def _match_rsqrt_core(xf: Node) -> tuple[Node, float | Node, list[Node], list[Node]] | None:
    """n = xf * rsqrt(mean(xf^2, [-1], keepdim) + eps) -> (n, eps, nodes, eps cast nodes).

    Follows the first fitting user at each step, not the only one: a node with extra users
    still matches here and is refused by the caller's escape check, with a reason."""
    ndim = _val(xf).dim()
    for sq in _users(
        xf,
        lambda u: (
            (_is(u, aten.pow.Tensor_Scalar) and u.args[1] == 2)
            or (_is(u, *MUL) and u.args[0] is xf and u.args[1] is xf)
        ),
    ):
        mean = _first_user(
            sq,
            lambda u: (
                _is(u, aten.mean.dim)
                and len(u.args) >= 3
                and bool(u.args[2])
                and list(cast(Any, u.args[1])) in ([-1], [ndim - 1])
            ),
        )
        add = mean and _first_user(mean, _adds_eps_to(mean))
        rsqrt = add and _first_user(add, lambda u: _is(u, aten.rsqrt.default))
        n = rsqrt and _first_user(rsqrt, _multiplies(rsqrt, xf))
        found = _eps(add.args[1]) if n else None  # (`add` was picked for a readable eps)
        if found is not None:
            eps, casts = found
            return n, eps, [sq, mean, add, rsqrt, n], casts
    return None


def _weight_leaf(w: Any, dtype: torch.dtype) -> tuple[Node, list[Node]] | None:
    """The weight in the activation dtype, plus the converts that produced its float32 copy."""
    if not isinstance(w, Node):
        return None
    if _is(w, CONVERT) and isinstance(w.args[0], Node) and _dtype(w.args[0]) == dtype:
        return w.args[0], [w]
    return w, []


def match_norm(h: Node, config: FusionConfig) -> _Norm | Miss | None:
    dtype = _dtype(h)
    norm_ops = _custom_norm_targets(config)
    for user in h.users:
        if user.op == "call_function" and user.target in norm_ops and user.args[0] is h:
            # (input, weight, eps): eps may be a keyword or left to the schema's default
            weight, op_eps = _argument(user, 1), _number(_argument(user, 2))
            if isinstance(weight, Node) and op_eps is not None:
                return _Norm("custom_op", weight, op_eps, 0.0, user, [user])
    wide = dtype in (torch.float32, torch.float64)  # computed in its own dtype, no casts
    if wide:
        xf, up = h, []
    else:
        ups = _users(h, lambda u: _is_convert_to(u, torch.float32))
        if not ups:
            return None
        xf, up = ups[0], [ups[0]]
    core = _match_rsqrt_core(xf)
    if core is None:
        return None
    n, eps, core_nodes, eps_casts = core
    nodes = up + core_nodes
    nxt = _first_user(n, lambda u: _is(u, CONVERT, *MUL))
    if nxt is None:
        return None
    # hf: weight * convert(n, dtype)   (fp32: weight * n, weight first)
    if _is(nxt, CONVERT) and nxt.args[1] == dtype:
        mul = _only_user(nxt)
        if _is(mul, *MUL) and isinstance(_other(mul, nxt), Node):
            leaf = _weight_leaf(_other(mul, nxt), dtype)
            if leaf:
                return _Norm("hf", leaf[0], eps, 0.0, mul, nodes + [nxt, mul], leaf[1] + eps_casts)
        return None
    if not _is(nxt, *MUL):
        return None
    w = _other(nxt, n)
    form, bias, extra = "rms_norm", 0.0, []
    if _is(w, *ADD) and _number(w.args[1]) == 1.0 and isinstance(w.args[0], Node):
        form, bias, extra, w = "gemma", 1.0, [w], w.args[0]
    elif wide and nxt.args[0] is w:
        form = "hf"
    leaf = _weight_leaf(w, dtype)
    if leaf is None:
        return None
    out, tail = nxt, []
    if not wide:
        down = _only_user(nxt)
        if down is not None and _is_convert_to(down, dtype):
            out, tail = down, [down]
        elif match_quant(nxt) is None:
            return None
        # else the norm's float32 product goes straight into an FP8 quant: its round trip
        # through `dtype` was dropped (Inductor before torch 2.12 removes f32 -> bf16 -> f32
        # casts), or the model quantizes the float32 value itself. The norm stays float32 and
        # unread: the quant-only fused op applies.
    return _Norm(form, leaf[0], eps, bias, out, nodes + [nxt] + tail, extra + leaf[1] + eps_casts)


# ---- axis: quant -----------------------------------------------------------------------------


def _clamped(node: Node) -> tuple[Node, list[Node]] | None:
    """clamp(x, -448, 448) in any of its decompositions -> (last clamp node, nodes)."""
    if (
        _is(node, aten.clamp.default)
        and _number(node.args[1]) == -FP8_MAX
        and _number(node.args[2] if len(node.args) > 2 else None) == FP8_MAX
    ):
        return node, [node]
    if _is(node, aten.clamp_min.default) and _number(node.args[1]) == -FP8_MAX:
        hi = _only_user(node)
        if _is(hi, aten.clamp_max.default) and _number(hi.args[1]) == FP8_MAX:
            return hi, [node, hi]
    return None


def match_quant(out: Node) -> tuple[Node, Node, list[Node]] | None:
    """FP8 static quant of `out` -> (scale, quant_out, nodes)."""
    # a float32 `out` may still pass through a no-op convert to float32 first
    starts = ([out] if _dtype(out) == torch.float32 else []) + _users(
        out, lambda u: _is_convert_to(u, torch.float32)
    )
    for start in starts:
        up = [] if start is out else [start]
        for div in _users(start, _divides(start)):
            scale = div.args[1]
            if not isinstance(scale, Node) or _val(scale) is None or _val(scale).numel() != 1:
                continue
            nxt = _only_user(div)
            clamped = _clamped(nxt) if nxt is not None else None
            if clamped is None:
                continue
            q = _only_user(clamped[0])
            if q is not None and _is_convert_to(q, FP8):
                return scale, q, up + [div] + clamped[1] + [q]
    return None


# ---- composition -----------------------------------------------------------------------------

_ELEMENTWISE = frozenset(
    {
        *VIEW_OPS,
        CONVERT,
        *ADD,
        *MUL,
        aten.pow.Tensor_Scalar,
        aten.mean.dim,
        aten.div.Tensor,
        aten.sub.Tensor,
        aten.sum.dim_IntList,
        aten.sqrt.default,
        aten.rsqrt.default,
        aten.reciprocal.default,
    }
)


def _reaches_rsqrt(start: Node, depth: int = 8) -> bool:
    """Whether `start` reaches an rsqrt through elementwise ops and reductions alone (a norm
    right after it, not one behind a matmul in the next layer)."""
    seen, frontier = {start}, [start]
    for _ in range(depth):
        frontier = [
            u
            for n in frontier
            for u in n.users
            if u not in seen and u.op == "call_function" and u.target in _ELEMENTWISE
        ]
        if any(_is(u, aten.rsqrt.default) for u in frontier):
            return True
        seen.update(frontier)
    return False


def _external_users(nodes: Iterable[Node], allowed: set[Node]) -> list[str]:
    inside = set(nodes)
    return [n.name for n in inside - allowed if any(u not in inside for u in n.users)]


def _is_step(node: Node, value: Node) -> bool:
    """A view of the reduced value, or its product with a scalar known before the collective
    (a number, or a one-element graph input, maybe cast): both commute with the sum-allreduce."""
    if _is(node, *VIEW_OPS):
        return node.args[0] is value
    if not _is(node, *MUL) or len(node.args) != 2 or node.kwargs:
        return False
    s = _other(node, value)
    if _number(s) is not None:
        return True
    v = _val(s)
    leaf = s.args[0] if _is(s, CONVERT) else s  # a bf16 model casts its float32 buffer
    return (
        isinstance(leaf, Node)
        and leaf.op in ("placeholder", "get_attr")
        and isinstance(v, torch.Tensor)
        and v.numel() == 1
        and _dtype(node) == _dtype(value)
    )


def _leak_reason(reduced_leaks: bool) -> str:
    """Why a chain with a value used outside it stays unfused. The fused op returns the norm
    (and quant) output and residual_out; without a residual, residual_out is the reduced value
    itself, and the steps before it have no other user (`match_chain` follows only-users)."""
    if reduced_leaks:
        return (
            "the allreduce result is used outside the chain besides the residual add; the "
            "fused op returns only the sum, so fusing would drop it"
        )
    return (
        "an intermediate value of the norm is used outside the chain; the fused op does not "
        "produce it, so fusing would drop it"
    )


def match_chain(
    ar_node: Node, config: FusionConfig, custom_ops: dict[Any, int]
) -> ChainMatch | Miss | None:
    """Match the chain that starts at `ar_node`; None if it is not an allreduce + norm chain."""
    ar = match_allreduce(ar_node, custom_ops)
    if ar is None or isinstance(ar, Miss):
        return ar
    steps, cur = [], ar.out
    while (nxt := _only_user(cur)) is not None and _is_step(nxt, cur):
        steps.append(nxt)
        cur = nxt
    residual, residual_form, h = None, "none", cur
    # A norm of the reduced value itself wins over a norm behind an add: HF's vocab-parallel
    # embedding output feeds the first input_layernorm and is also the residual of the first
    # attention add. Fused here without a residual, the add takes this op's residual_out and
    # becomes the next allreduce's residual chain; read as that add's chain, the direct norm
    # would be left behind.
    adds = (
        []
        if match_norm(cur, config) is not None
        else _users(
            cur,
            lambda u: (
                _is(u, aten.add.Tensor)
                and len(u.args) == 2
                and "alpha" not in u.kwargs
                and isinstance(_other(u, cur), Node)
            ),
        )
    )
    for add in adds:
        res = _other(add, cur)
        if _dtype(res) == _dtype(cur) and match_norm(add, config) is not None:
            residual, h = res, add
            residual_form = "ar+res" if add.args[0] is cur else "res+ar"
            break
    if _dtype(h) not in SUPPORTED:
        return (
            Miss(f"activation dtype {_dtype(h)} is not supported", h.name)
            if match_norm(h, config)
            else None
        )
    norm = match_norm(h, config)
    if norm is None:
        if _reaches_rsqrt(h):  # recognisable, but not in a form the matcher knows: say so
            return Miss(
                "the allreduce feeds an RMSNorm-like computation in a form the pass "
                "does not match (see `arfuse patterns`)",
                h.name,
            )
        return None
    if isinstance(norm, Miss):
        return norm
    quant = match_quant(norm.out)
    spec = FusionSpec(ar.form, norm.form, residual_form, "fp8" if quant else "none")
    if quant and not config.enables(spec):
        quant, spec = None, FusionSpec(ar.form, norm.form, residual_form, "none")
    scale, quant_out, quant_nodes = quant if quant else (None, None, [])
    nodes = ar.nodes + steps + ([h] if residual is not None else []) + norm.nodes + quant_nodes
    outputs = {h, norm.out} | ({quant_out} if quant_out is not None else set())
    leaking = _external_users(nodes, outputs)
    if leaking:  # the reason is warned once per text: the node goes in `node`, not the text
        return Miss(
            _leak_reason(bool(set(leaking) & {n.name for n in ar.nodes + steps})),
            sorted(leaking)[0],
        )
    return ChainMatch(
        spec,
        ar.group_name,
        ar.input,
        steps,
        residual,
        norm.weight,
        norm.eps,
        norm.weight_offset,
        scale,
        h,
        norm.out,
        quant_out,
        nodes,
        norm.weight_nodes,
    )
