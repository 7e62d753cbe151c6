"""The exact truth of a guard, as torch prints it, at every num_tokens of a token domain.

    judge("s0 <= 2048", {"s0"}, TokenDomain(1, 32768))  -> holds on [2, 2048]: flips 2048 -> 2049
    judge("-s0 > -4095", {"s0"}, ...)                     -> holds on [2, 4094]: flips 4094 -> 4095
    judge("Ne(s0, 8)", {"s0"}, ...)                       -> holds everywhere except 8
    judge("s0 <= 8*(((s0 + 7)//8))", {"s0"}, ...)         -> always holds: not a finding
    judge("64*s0 <= 2147483647", {"s0"}, ...)             -> always holds below 33,554,432

Vectorised with numpy: 32,768 points cost well under a millisecond per operator. Every token
symbol stands for num_tokens itself (a second input sized by the token count, or an int argument
equal to it, is the same number). Other symbols take the value they had when the guard was
installed (`values`); a guard with a symbol of unknown value cannot be judged.

The expression is parsed with `ast` and walked over a whitelist of torch's sympy printers'
names (Eq, Mod, FloorDiv as `//`, CeilToInt, IntTrueDiv, Max, ...): logs are untrusted input,
nothing is `eval`ed. No torch import.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from arfuse.audit.judge.domain import TokenDomain, Verdict

_CHUNK = 1 << 20


class UnjudgeableGuard(ValueError):
    """The expression uses a construct or a symbol whose value is unknown."""


def _true_div(a, b):
    return np.true_divide(a, b)


def _as_int(a):
    return np.asarray(a).astype(np.int64) if np.asarray(a).dtype.kind == "f" else a


def _mod(a, b):
    return np.mod(a, b)


def _max(*xs):
    return functools.reduce(np.maximum, xs)


def _min(*xs):
    return functools.reduce(np.minimum, xs)


_FUNCS: dict[str, Callable[..., Any]] = {
    "Eq": lambda a, b: np.equal(a, b),
    "Ne": lambda a, b: np.not_equal(a, b),
    "Lt": lambda a, b: np.less(a, b),
    "Le": lambda a, b: np.less_equal(a, b),
    "Gt": lambda a, b: np.greater(a, b),
    "Ge": lambda a, b: np.greater_equal(a, b),
    "Not": lambda a: np.logical_not(a),
    "And": lambda *xs: functools.reduce(np.logical_and, xs),
    "Or": lambda *xs: functools.reduce(np.logical_or, xs),
    "Mod": _mod,
    "PythonMod": _mod,
    "FloorDiv": lambda a, b: np.floor_divide(a, b),
    "CleanDiv": lambda a, b: np.floor_divide(a, b),
    "IntTrueDiv": _true_div,
    "FloatTrueDiv": _true_div,
    "TrueDiv": _true_div,
    "CeilToInt": lambda a: _as_int(np.ceil(a)),
    "FloorToInt": lambda a: _as_int(np.floor(a)),
    "TruncToInt": lambda a: _as_int(np.trunc(a)),
    "RoundToInt": lambda a: _as_int(np.round(a)),
    "ceiling": lambda a: _as_int(np.ceil(a)),
    "floor": lambda a: _as_int(np.floor(a)),
    "ToFloat": lambda a: np.asarray(a, dtype=np.float64),
    "Max": _max,
    "Min": _min,
    "Abs": np.abs,
    "PowByNatural": lambda a, b: np.power(a, b),
    "FloatPow": lambda a, b: np.power(np.asarray(a, dtype=np.float64), b),
    "OpaqueUnaryFn_sqrt": np.sqrt,
    "sqrt": np.sqrt,
    "log2": np.log2,
    "OpaqueUnaryFn_log2": np.log2,
}
_CONSTS = {"int_oo": math.inf, "oo": math.inf, "True": True, "False": False}
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
}
_CMPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


@functools.lru_cache(maxsize=4096)
def _parse(expr: str) -> ast.Expression:
    try:
        return ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise UnjudgeableGuard(f"not an expression: {expr!r}") from exc


def _safe_mul(a, b):
    """int64 products of large sizes overflow silently: redo those in exact Python ints."""
    if (
        isinstance(a, np.ndarray)
        and a.dtype.kind == "i"
        or isinstance(b, np.ndarray)
        and b.dtype.kind == "i"
    ):
        big = float(np.max(np.abs(a))) * float(np.max(np.abs(b)))
        if big >= 2.0**62:
            return np.multiply(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    return np.multiply(a, b)


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        raise UnjudgeableGuard(f"symbol {node.id} has no known value")
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.USub):
            return np.negative(v)
        if isinstance(node.op, ast.UAdd):
            return v
        if isinstance(node.op, (ast.Invert, ast.Not)):
            return np.logical_not(v)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Mult):
            return _safe_mul(a, b)
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, env) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return functools.reduce(combine, vals)
    if isinstance(node, ast.Compare):
        left, out = _eval(node.left, env), True
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _CMPS:
                break
            right = _eval(right_node, env)
            out = np.logical_and(out, _CMPS[type(op)](left, right))
            left = right
        else:
            return out
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not node.keywords
        and node.func.id in _FUNCS
    ):
        return _FUNCS[node.func.id](*[_eval(a, env) for a in node.args])
    raise UnjudgeableGuard(f"cannot evaluate {ast.unparse(node)!r}")


def truth(
    expr: str,
    token_symbols: frozenset[str] | set[str],
    domain: TokenDomain,
    values: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, int]:
    """(holds, first): holds[i] says whether `expr` is true at num_tokens = first + i."""
    tree = _parse(expr)
    lo, hi = domain.judged
    parts = []
    with np.errstate(all="ignore"):
        for start in range(lo, hi + 1, _CHUNK):
            n = np.arange(start, min(hi, start + _CHUNK - 1) + 1, dtype=np.int64)
            env: dict[str, Any] = {k: int(v) for k, v in (values or {}).items()}
            env.update({s: n for s in token_symbols})
            v = np.broadcast_to(np.asarray(_eval(tree, env)), n.shape)
            if v.dtype != bool:
                raise UnjudgeableGuard(f"{expr!r} is not a condition")
            parts.append(v)
    return np.concatenate(parts), lo


_MAX_EXCEPT = 3
_MAX_RUNS = 4
_MAX_PERIOD = 4096


def _period(holds: np.ndarray) -> tuple[int, int]:
    """(period, start): the smallest period the truth repeats with from `start` on. Small
    counts may break the pattern (`view(-1, 4)` also needs s // 4 >= 1), so the first few
    periods are allowed to differ."""
    for p in range(2, min(_MAX_PERIOD, len(holds) // 4) + 1):
        start = min(4 * p, len(holds) // 4)
        if np.array_equal(holds[start + p :], holds[start:-p]):
            while start > 0 and holds[start - 1] == holds[start - 1 + p]:
                start -= 1
            return p, start
    return 0, 0


def verdict_of(expr: str, holds: np.ndarray, first: int, domain: TokenDomain) -> Verdict:
    if holds.all():
        return Verdict(expr, "always", domain, ((first, first + len(holds) - 1),))
    if not holds.any():
        return Verdict(expr, "never", domain)
    change = np.flatnonzero(holds[1:] != holds[:-1])
    flips = tuple(int(first + i) for i in change)
    edges = np.concatenate(([0], change + 1, [len(holds)]))
    runs = tuple(
        (int(first + a), int(first + b - 1))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if holds[a]
    )
    failing = np.flatnonzero(~holds)
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return Verdict(expr, "point", domain, runs, flips)
    if len(failing) <= _MAX_EXCEPT:
        excluded = tuple(int(first + i) for i in failing)
        return Verdict(expr, "except", domain, runs, flips, excluded=excluded)
    if len(runs) > _MAX_RUNS:
        p, start = _period(holds)
        if p:
            tail = np.flatnonzero(holds[start : start + p]) + start
            residues = tuple(sorted({int((first + i) % p) for i in tail}))
            return Verdict(
                expr,
                "periodic",
                domain,
                runs,
                flips,
                period=p,
                residues=residues,
                since=first + start,
            )
    return Verdict(expr, "interval", domain, runs, flips)


@functools.lru_cache(maxsize=2048)
def _packed_truth(
    expr: str, tokens: frozenset[str], values: tuple[tuple[str, int], ...], domain: TokenDomain
) -> tuple[bytes, int, int] | str:
    """(packed truth, first, count) or the reason it cannot be judged (cached packed: 8 KB
    per guard at the default domain; logs repeat guards a lot)."""
    try:
        holds, first = truth(expr, tokens, domain, dict(values))
    except (UnjudgeableGuard, TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        return str(exc) or type(exc).__name__
    return np.packbits(holds).tobytes(), first, len(holds)


def holds(
    expr: str,
    token_symbols: set[str] | frozenset[str],
    domain: TokenDomain,
    values: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, int] | str:
    """(holds, first) as `truth`, or the reason the guard cannot be judged."""
    used = set(_names(expr))
    vals = tuple(sorted((k, int(v)) for k, v in (values or {}).items() if k in used))
    got = _packed_truth(expr, frozenset(token_symbols) & used, vals, domain)
    if isinstance(got, str):
        return got
    packed, first, count = got
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count).astype(bool), first


def judge(
    expr: str,
    token_symbols: set[str] | frozenset[str],
    domain: TokenDomain,
    values: Mapping[str, int] | None = None,
) -> Verdict:
    """The verdict of one guard over the domain."""
    got = holds(expr, token_symbols, domain, values)
    if isinstance(got, str):
        return Verdict(expr, "unknown", domain, reason=got)
    return verdict_of(expr, *got, domain)


def _names(expr: str) -> list[str]:
    try:
        tree = _parse(expr)
    except UnjudgeableGuard:
        return []
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
