"""Classify one guard expression (as torch prints it) on the token symbol.

classify("s77 <= 2048", {"s77"})           -> GuardClass.RANGE
classify("Eq(Mod(s77, 4), 0)", {"s77"})    -> GuardClass.DIVISIBILITY
classify("Eq(s77, 16)", {"s77"})           -> GuardClass.PIN
classify("s77 >= 2", {"s77"})              -> GuardClass.FRAMEWORK   (0/1 specialization bound)
classify("Eq(s77, s80)", {"s77", "s80"})   -> GuardClass.RELATION    (two token dims agree)
classify("s27 <= 64", {"s77"})             -> None                   (not about num_tokens)
"""

from __future__ import annotations

import enum
import re

_SYMBOL = re.compile(r"\b(?:s|u|zf|zuf|ps|c)\d+\b")
_INT = re.compile(r"^-?\d+$")
_REL = re.compile(r"\s(<=|>=|<|>|==|!=)\s")


class GuardClass(enum.Enum):
    PIN = "pin"  # Eq/Ne against a constant, or specialized to one
    RANGE = "range"  # an inequality against a constant (a threshold)
    DIVISIBILITY = "divisibility"  # Mod / % on the token count
    FRAMEWORK = "framework"  # the 0/1-specialization bounds torch always adds
    RELATION = "relation"  # symbols related to each other only (e.g. two inputs agree)


_STRENGTH = [
    GuardClass.PIN,
    GuardClass.DIVISIBILITY,
    GuardClass.RANGE,
    GuardClass.RELATION,
    GuardClass.FRAMEWORK,
]


def symbols(expr: str) -> set[str]:
    return set(_SYMBOL.findall(expr))


def _split_top(expr: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and expr.startswith(sep, i):
            parts.append(expr[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _unwrap(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        expr = expr[1:-1].strip()
    return expr


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


def _is_zero_one_bound(op: str, sym_side_left: bool, const: int) -> bool:
    """`s >= 2`, `s > 1`, `s >= 0`, `2 <= s`, `s != 1`... are torch's own bounds."""
    if not sym_side_left:  # normalize "c op s" to "s op' c"
        op = {"<=": ">=", ">=": "<=", "<": ">", ">": "<"}.get(op, op)
    if op == ">=":
        return const <= 2
    if op == ">":
        return const <= 1
    if op == "!=":
        return const in (0, 1)
    return False


def classify(expr: str, token_symbols: set[str]) -> GuardClass | None:
    """The class of `expr` as a guard on the token symbols; None if it does not involve them."""
    expr = _unwrap(expr)
    free = symbols(expr)
    if not free & token_symbols:
        return None
    for sep in (" & ", " | "):
        parts = _split_top(expr, sep)
        if len(parts) > 1:
            found = [c for c in (classify(p, token_symbols) for p in parts) if c is not None]
            return min(found, key=_STRENGTH.index) if found else None
    if expr.startswith("Not(") and expr.endswith(")"):
        return classify(expr[4:-1], token_symbols)
    if "Mod(" in expr or "%" in expr:
        return GuardClass.DIVISIBILITY
    for fn, op in (("Eq(", "=="), ("Ne(", "!=")):
        if expr.startswith(fn) and expr.endswith(")"):
            args = _split_top(expr[3:-1], ",")
            if len(args) == 2:
                return _relation(args[0], op, args[1], token_symbols)
            return GuardClass.PIN
    m = _REL.search(expr)
    if m:
        parts = _split_top(expr, f" {m.group(1)} ")
        if len(parts) == 2:
            return _relation(parts[0], m.group(1), parts[1], token_symbols)
    return GuardClass.RANGE


def _relation(lhs: str, op: str, rhs: str, token_symbols: set[str]) -> GuardClass:
    lhs, rhs = _unwrap(lhs), _unwrap(rhs)
    ls, rs = symbols(lhs), symbols(rhs)
    if bool(ls) != bool(rs):
        const = (rhs if ls else lhs).strip()
        if _INT.match(const) and _is_zero_one_bound(op, bool(ls), int(const)):
            # also for derived sizes: `Ne((s0//4), 1)`, `8*((s0//4)) >= 2` come from torch's
            # contiguity/size-oblivious checks, not from a decision in the model
            return GuardClass.FRAMEWORK
    if ls and rs:
        # Both sides symbolic: tokens agreeing with tokens is harmless; anything else ranges.
        if lhs in token_symbols and rhs in token_symbols:
            return GuardClass.RELATION
        return (
            GuardClass.RELATION
            if (ls | rs) <= token_symbols and op in ("==", "!=")
            else GuardClass.RANGE
        )
    sym_left = bool(ls)
    sym, const = (lhs, rhs) if sym_left else (rhs, lhs)
    const = const.replace(".0", "") if const.endswith(".0") else const
    if _INT.match(const) and sym in token_symbols:
        c = int(const)
        if op == "==":
            return GuardClass.FRAMEWORK if c in (0, 1) else GuardClass.PIN
        if _is_zero_one_bound(op, sym_left, c):
            return GuardClass.FRAMEWORK
        if op in ("<=", "<") and sym_left and const == "int_oo":
            return GuardClass.FRAMEWORK
    if op in ("==", "!="):
        return GuardClass.PIN
    if "int_oo" in const:
        return GuardClass.FRAMEWORK
    return GuardClass.RANGE
