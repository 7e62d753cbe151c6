"""Which argument of a call carries num_tokens, and what num_tokens is in a capture.

Before `arfuse.compile` captures a model, `mark_token_dims` marks the token dims of one call
dynamic - by the caller's `token_dims`, by the usual HF argument names, else dim 0 of
positional tensors - and names the token argument. After the capture, `token_rows` finds that
argument among the graph's inputs and returns num_tokens as the capture sees it: the rows that
reach the allreduce, the product of the token argument's dims up to its token dim (`[batch, seq]`
input_ids: batch * seq), with an O(1) reader of the same number from the runtime args.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


# HF argument names -> the dims that follow the sequence, given the tensor's rank. The first
# name here that a call passes is the token argument (the range key); the others are marked so
# their sizes follow num_tokens without recompiling.
def _last(ndim: int) -> list[int]:
    return [ndim - 1] if ndim >= 1 else []


HF_TOKEN_DIMS: dict[str, Callable[[int], list[int]]] = {
    "input_ids": _last,  # [batch, seq] or [seq]
    "inputs_embeds": lambda ndim: [ndim - 2] if ndim >= 2 else [],  # [batch, seq, hidden]
    "hidden_states": lambda ndim: [ndim - 2] if ndim >= 2 else [],  # [(batch,) tokens, hidden]
    "position_ids": _last,  # [batch, seq] or [seq]
    "token_type_ids": _last,
    "labels": _last,
    "cache_position": _last,  # [seq]
    "attention_mask": lambda ndim: [1] if ndim == 2 else [2, 3] if ndim == 4 else [],
}
_KEY_NAMES = ("input_ids", "inputs_embeds", "hidden_states")


@dataclass(frozen=True)
class TokenArg:
    """The argument whose rows are num_tokens: its name (None: positional only), its index
    among the positional args (None: passed by keyword), and its token dim."""

    name: str | None
    index: int | None
    dim: int

    def __str__(self) -> str:
        return self.name if self.name is not None else f"positional arg {self.index}"


def _bind(model: Callable, args: tuple, kwargs: dict) -> list[tuple[str | None, int | None, Any]]:
    """(name, positional index, value) for every argument of one call; a keyword argument
    keeps the index of its parameter when it could be passed positionally, so
    token_dims={0: 1} means input_ids however it is passed."""
    try:
        params = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names: list[str | None] = [
        positional[i] if i < len(positional) else None for i in range(len(args))
    ]
    index = {name: i for i, name in enumerate(positional)}
    return [(names[i], i, a) for i, a in enumerate(args)] + [
        (k, index.get(k), v) for k, v in kwargs.items()
    ]


def mark_token_dims(
    model: Callable,
    args: tuple,
    kwargs: dict,
    token_dims: Mapping[int | str, int | Sequence[int] | None] | None,
) -> TokenArg:
    """Mark every token dim of one call dynamic (`maybe_mark_dynamic`) and return the token
    argument, or raise a ValueError naming what could not be found.

    token_dims: argument name or positional index -> token dim(s), None for "not a token
    argument". Arguments it does not name: the HF names above by their layout, other
    positional tensors dim 0 (when token_dims is None)."""
    given = dict(token_dims or {})
    bound = _bind(model, args, kwargs)
    passed = {k for name, i, _ in bound for k in (name, i) if k is not None}
    missing = [k for k in given if k not in passed]
    if missing:
        raise ValueError(
            f"arfuse.compile: token_dims names {missing}, which this call does not "
            f"pass; arguments passed: {sorted(map(str, passed))}"
        )
    key: TokenArg | None = None
    key_rank = len(_KEY_NAMES) + 2
    for name, index, value in bound:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        label = name if name is not None else f"positional arg {index}"
        given_key = name if name in given else index
        if given_key is not None and given_key in given:
            dims = given[given_key]
            # named by the caller: the token argument if it is the first so named
            rank: int | None = 0
        elif name in HF_TOKEN_DIMS:
            dims = HF_TOKEN_DIMS[name](value.dim())
            rank = 1 + _KEY_NAMES.index(name) if name in _KEY_NAMES else None
        elif index is not None and name not in kwargs:  # passed positionally
            dims, rank = 0, len(_KEY_NAMES) + 1
        else:
            continue
        dims = [] if dims is None else [dims] if isinstance(dims, int) else list(dims)
        for d in dims:
            if not -value.dim() <= d < value.dim():
                raise ValueError(
                    f"arfuse.compile: token dim {d} of {label} is out of range for "
                    f"its shape {tuple(value.shape)}; fix token_dims={{{label!r}: "
                    "dim}}"
                )
            torch._dynamo.maybe_mark_dynamic(value, d % value.dim())
        if dims and rank is not None and rank < key_rank:
            key, key_rank = TokenArg(name, index, max(d % value.dim() for d in dims)), rank
    if key is None:
        shown = {
            (n if n is not None else f"arg {i}"): tuple(v.shape)
            for n, i, v in bound
            if isinstance(v, torch.Tensor)
        }
        raise ValueError(
            "arfuse.compile: cannot tell which argument carries num_tokens; tensor arguments "
            f"of this call: {shown}. Name it: token_dims={{'input_ids': 1}} (argument name -> "
            "token dim), or pass it as input_ids= / inputs_embeds= / hidden_states="
        )
    return key


def token_rows(gm: torch.fx.GraphModule, token: TokenArg | None):
    """(rows, locate, where): num_tokens of the capture (a SymInt, or an int when Dynamo
    specialised it, None when no tensor input has a dim), a function reading it from the
    runtime args in O(1), and a name for messages.

    Dynamo hands backends real example tensors; the symbolic shapes live on the placeholders'
    `example_value`, and each placeholder's source names its argument (`L['input_ids']`).
    Without a named token argument among the inputs (the bare backend, or a graph after a
    graph break), the first tensor input with a symbolic dim is it: rows are the product of
    the dims but the last (hidden) one of a 3-D [batch, seq, hidden] input, else its first
    symbolic dim ([tokens, hidden])."""
    inputs = [
        (i, n)
        for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
        if isinstance(n.meta.get("example_value"), torch.Tensor)
    ]
    found = None
    if token is not None and token.name is not None:
        # the model's own frame, or a `(*args, **kwargs)` wrapper around it (HF decorators)
        sources = {f"L['{token.name}']", f"L['kwargs']['{token.name}']"}
        found = next(
            (
                (i, token.dim)
                for i, n in inputs
                if getattr(getattr(n.meta.get("grapharg"), "source", None), "name", None) in sources
            ),
            None,
        )
    if found is None:
        for i, n in inputs:
            shape = n.meta["example_value"].shape
            dims = [d for d, size in enumerate(shape) if isinstance(size, torch.SymInt)]
            if dims:
                found = (i, len(shape) - 2 if len(shape) >= 3 else dims[0])
                break
    if found is None:
        for i, n in inputs:
            if n.meta["example_value"].dim() > 0:
                found = (i, 0 if token is None else token.dim)
                break
    where = str(token) if token is not None else "no tensor input"
    if found is None:
        return None, None, where
    i, dim = found
    shape = inputs[[j for j, _ in inputs].index(i)][1].meta["example_value"].shape
    rows = math.prod(shape[: dim + 1])
    if dim == 0:
        return rows, lambda args, i=i: args[i].shape[0], where
    return rows, lambda args, i=i, end=dim + 1: args[i].shape[:end].numel(), where


def single_symbol(rows: Any) -> tuple[Any, int]:
    """(symbol, scale) when rows = scale * symbol (a static batch times a dynamic seq), else
    (None, 1): with batch dynamic too no single symbol carries the range's bounds."""
    if not isinstance(rows, torch.SymInt):
        return None, 1
    expr = rows.node.expr
    if len(expr.free_symbols) != 1:
        return None, 1
    (symbol,) = expr.free_symbols
    scale = expr / symbol
    return (symbol, int(scale)) if scale.is_Integer and int(scale) >= 1 else (None, 1)


def other_symbols(gm: torch.fx.GraphModule, symbol: Any) -> set:
    """Free symbols of the capture's input sizes other than `symbol` (after the shape env's
    replacements, so sizes Dynamo proved equal to it do not count)."""
    out: set = set()
    for n in gm.graph.nodes:
        val = n.meta.get("example_value") if n.op == "placeholder" else None
        sizes = (
            list(val.shape)
            if isinstance(val, torch.Tensor)
            else [val]
            if isinstance(val, torch.SymInt)
            else []
        )
        for size in sizes:
            if isinstance(size, torch.SymInt):
                node = size.node
                out |= node.shape_env.replace(node.expr).free_symbols
    return out - {symbol}
