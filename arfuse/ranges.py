"""Compile ranges: one Dynamo capture, one Inductor compile per num_tokens range.

`arfuse.compile(model, ranges=...)` captures the model once with its token dims dynamic (marked
with `maybe_mark_dynamic` and captured size-oblivious, so 1 token shares the capture; guards the
model or the compiler add on them stay guards, and `arfuse audit` finds them), then compiles the
captured graph once per range of num_tokens with the fusion pass configured for that range:
fused where the thresholds say fusion wins, left to Inductor's own add+RMSNorm fusion where it
does not. At run time a bisect over the split points (O(log ranges), outside any traced code)
picks the compiled artifact, so the threshold never becomes a guard, a pinned constant or a
recompile.

    compiled = arfuse.compile(model, ranges="auto")        # split points from the thresholds
    compiled = arfuse.compile(model, ranges=[128, 2048])   # [1,128] [129,2048] [2049,inf)
    out = compiled(input_ids=ids, attention_mask=mask)     # HF models: keyword tensors

num_tokens, the range key, is the number of rows that reach the allreduce: the product of the
token argument's dims up to its token dim (`[batch, seq]` input_ids: batch * seq). Within a range
the token symbol's value range is narrowed to the range's bounds while Inductor compiles
(`bound_symbols=True`), so Inductor may drop checks that the bounds make moot; when batch is
dynamic too (rows = batch * seq, two symbols) the ranges still dispatch and fuse by rows, but
compile without narrowed bounds.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sympy
import torch

from arfuse import optable
from arfuse.config import FusionConfig
from arfuse.fusion import AllReduceFusionPass
from arfuse.policy import FusionPolicy
from arfuse.tokens import TokenArg, mark_token_dims, other_symbols, single_symbol, token_rows


@dataclass(frozen=True)
class TokenRange:
    lo: int
    hi: int | None  # inclusive; None = unbounded

    def __str__(self) -> str:
        return f"[{self.lo}, {self.hi if self.hi is not None else 'inf'}]"


def ranges_from_splits(splits: Iterable[int]) -> list[TokenRange]:
    """Split point s ends a range at s: [1, s1], [s1+1, s2], ..., [sN+1, inf)."""
    points = sorted(set(int(s) for s in splits))
    if points and points[0] < 1:
        raise ValueError(f"split points must be >= 1 token, got {points[0]}")
    out, lo = [], 1
    for p in points:
        out.append(TokenRange(lo, p))
        lo = p + 1
    out.append(TokenRange(lo, None))
    return out


_SPLIT_POINT = (
    "a split point is a positive int token count where a range ends; give 'auto' "
    "or a list of split points, e.g. ranges=[128, 2048] ('auto': split points "
    "from the thresholds)"
)


def split_points(ranges: Any) -> list[int] | str:
    """`ranges=` as given -> 'auto' or its sorted split points. Anything else (a float, a
    string or a bool where a token count goes, a bare int) is a ValueError, never truncated."""
    if isinstance(ranges, str):
        if ranges == "auto":
            return ranges
        raise ValueError(f"ranges={ranges!r}: {_SPLIT_POINT}")
    if isinstance(ranges, torch.Tensor) or not isinstance(ranges, Iterable):
        raise ValueError(f"ranges={ranges!r} is not a list; {_SPLIT_POINT}")
    points = list(ranges)
    for p in points:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
            raise ValueError(f"ranges={points!r}: {p!r} is not a split point; {_SPLIT_POINT}")
    return sorted({int(p) for p in points})


def auto_splits(
    hidden: int,
    dtype: torch.dtype,
    world_size: int,
    device: torch.device | None = None,
    policy: FusionPolicy | None = None,
) -> list[int]:
    """Where the policy's thresholds change strategy (one-shot max, fusion max) in tokens."""
    if device is None or device.type != "cuda":
        return []
    policy = policy or FusionPolicy.current()
    limits = policy.limits(torch.cuda.get_device_capability(device), world_size, dtype, hidden)
    if limits is None:
        return []
    return sorted(
        {t for t in (limits.oneshot_max_tokens, policy.fused_max_tokens(limits)) if t >= 1}
    )


class RangedBackend:
    """A Dynamo backend compiling the captured graph once per TokenRange (see module doc)."""

    def __init__(
        self,
        ranges: Sequence[int] | str,
        fusion: FusionConfig | None,
        options: dict[str, Any] | None,
        lazy: bool,
        bound_symbols: bool,
        policy: FusionPolicy | None = None,
    ) -> None:
        if isinstance(ranges, str) and ranges != "auto":
            raise ValueError(
                f"ranges={ranges!r}: give 'auto' or a list of split points (token counts)"
            )
        self.requested = ranges
        self.fusion = fusion or FusionConfig()
        self.policy = policy or FusionPolicy.current()
        self.options = dict(options or {})
        self.lazy = lazy
        self.bound_symbols = bound_symbols
        self.captures = 0  # Dynamo graphs received (1 when nothing recompiles)
        self.compiles: list[dict[str, Any]] = []  # one entry per range compiled
        self.dispatch: _Dispatch | None = None  # the latest capture's
        self.dispatches: list[_Dispatch] = []  # every capture's, in order
        self.token_arg: TokenArg | None = None  # set by arfuse.compile before the capture
        self.warned: set[str] = set()  # skip reasons warned, over every range

    def __repr__(self) -> str:
        return f"arfuse.ranges.backend({self.requested!r})"

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        self.captures += 1
        compiles = len(self.compiles)
        try:
            dispatch = _Dispatch(self, gm, example_inputs)
        except torch._dynamo.exc.RestartAnalysis:  # Dynamo captures again: not a new capture
            self.captures -= 1
            del self.compiles[compiles:]
            raise
        self.dispatch = dispatch
        self.dispatches.append(dispatch)
        return dispatch


class _Dispatch:
    def __init__(self, backend: RangedBackend, gm, example_inputs) -> None:
        self.backend = backend
        self.gm = gm
        self.example_inputs = example_inputs
        self.context = torch._guards.TracingContext.try_get()
        rows, self.locate, where = token_rows(gm, backend.token_arg)
        self.rows = str(rows)  # num_tokens as the capture sees it, e.g. 2*s27
        self.symbol, self.scale = single_symbol(rows)
        if self.symbol is not None and other_symbols(gm, self.symbol):
            # narrowing one symbol among several (dynamic=True: batch, mask dims...) moved
            # hints that other sizes' facts depend on: compile those ranges without bounds
            self.symbol = None
        if not isinstance(rows, torch.SymInt):
            if rows is None or (backend.captures == 1 and rows > 1):
                raise ValueError(
                    f"arfuse.compile: {where} has no dynamic token dim in the capture (Dynamo "
                    "specialised it); pass the token dim with token_dims={'input_ids': 1} "
                    "(argument name -> dim) and do not compile with dynamic=False"
                )
            # a guard of an earlier capture failed (e.g. the model's own `num_tokens != 1`), or
            # a first call of 1 token that the model specialises: Dynamo specialised this
            # capture to one size, so it gets one range of that size
            why = (
                "a guard from an earlier capture failed; `arfuse audit` names the line"
                if backend.captures > 1
                else "the first call had 1 token and the model "
                "specialises it; call with more tokens first to share one capture"
            )
            warnings.warn(
                f"arfuse.compile: Dynamo captured the model specialised to num_tokens={rows} "
                f"({why}); this capture is compiled for exactly that size",
                stacklevel=2,
            )
            self.splits, self.ranges = [], [TokenRange(rows, rows)]
            self.locate = lambda args, n=rows: n
        else:
            splits = backend.requested
            if splits == "auto":
                splits = _auto_from_graph(gm, backend.policy, backend.fusion.allreduce_ops)
            self.splits = sorted(set(int(s) for s in splits))
            self.ranges = ranges_from_splits(self.splits)
        self.compiled: list[Callable | None] = [None] * len(self.ranges)
        self.captured = False
        # lazy: the capture's own range still compiles here, inside Dynamo, which restarts the
        # capture when a compile asks it to (dynamic=True's float inputs do)
        own = bisect.bisect_left(self.splits, self.locate(example_inputs))
        for i in range(len(self.ranges)):
            if not backend.lazy or i == own:
                self._compile(i)
        self.captured = True

    def _compile(self, i: int) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        r = self.ranges[i]
        env = getattr(torch._guards.detect_fake_mode(self.example_inputs), "shape_env", None)
        guards_before = len(env.guards) if env is not None else 0
        config = dataclasses.replace(self.backend.fusion, token_range=(r.lo, r.hi))
        fusion = AllReduceFusionPass(config, self.backend.policy, warned=self.backend.warned)
        options = {**self.backend.options, "post_grad_custom_post_pass": fusion}
        start = time.perf_counter()
        with torch._guards.tracing(self.context), self._bounded(r) as bounded:
            compiled = cast(
                Callable,
                compile_fx(copy.deepcopy(self.gm), self.example_inputs, config_patches=options),
            )
        self.backend.compiles.append(
            {
                "range": str(r),
                "tokens": self.rows,
                "fused": fusion.num_matches,
                "bounds_applied": bool(getattr(bounded, "applied", False)),
                "hint": getattr(bounded, "hint_used", None),
                "skipped": [reason for reason, _ in fusion.skipped],
                "left_to_inductor": [why for why, _ in fusion.by_range],
                "seconds": time.perf_counter() - start,
            }
        )
        self.compiled[i] = compiled
        new_guards = [str(g.expr) for g in (env.guards[guards_before:] if env is not None else [])]
        self.backend.compiles[-1]["guards_added"] = new_guards
        if new_guards and self.captured:
            # Dynamo installed this frame's guards at capture: a later guard is not enforced
            warnings.warn(
                f"arfuse.compile: compiling range {r} on first use added guard(s) "
                f"{new_guards} that cannot be enforced any more; use "
                "arfuse.compile(..., lazy=False) to compile every range at capture, where "
                "Dynamo installs them",
                stacklevel=2,
            )
        elif new_guards:
            # installed with the capture, for every range: a size that fails one recompiles
            warnings.warn(
                f"arfuse.compile: compiling range {r} added guard(s) {new_guards}; Dynamo "
                "installs them for every range, so a size that fails one recompiles "
                "(`arfuse audit` shows where); bound_symbols=False compiles without the "
                "range's bounds",
                stacklevel=2,
            )
        return compiled

    def _bounded(self, r: TokenRange):
        import contextlib

        if not self.backend.bound_symbols or self.symbol is None:
            return contextlib.nullcontext()
        # rows = scale * symbol: the symbol's bounds are the range's divided by the scale
        lo = -(-r.lo // self.scale)
        hi = None if r.hi is None else r.hi // self.scale
        return _narrowed(self.example_inputs, self.symbol, TokenRange(lo, hi))

    def __call__(self, *args: Any) -> Any:
        tokens = self.locate(args)
        i = bisect.bisect_left(self.splits, tokens)
        fn = self.compiled[i]
        if fn is None:
            fn = self._compile(i)
        return fn(*args)  # what compile_fx returns to a backend takes Dynamo's *args


class _narrowed:
    """Temporarily narrow the token symbol's value range in the shape env.

    Inductor sizes its heuristics (and any benchmark inputs) by the symbol's hint, the
    capture's example size, and the shape env rejects bounds that exclude the hint. A range
    that does not hold the hint therefore compiles with the hint moved to the nearest size it
    does hold; both come back afterwards."""

    def __init__(self, example_inputs, symbol, r: TokenRange) -> None:
        from torch.utils._sympy.numbers import int_oo

        mode = torch._guards.detect_fake_mode(example_inputs)
        self.env = mode.shape_env if mode is not None else None
        self.symbol = symbol
        self.lo, self.hi = r.lo, (r.hi if r.hi is not None else int_oo)
        self.applied = False
        self.hint = self.moved_hint = None

    @property
    def hint_used(self) -> int | None:
        """The example size Inductor compiled this range for."""
        hint = self.hint if self.moved_hint is None else self.moved_hint
        return None if hint is None else int(hint)

    def __enter__(self):
        from torch.utils._sympy.value_ranges import ValueRanges

        if self.env is None:
            return self
        # torch 2.13 renamed var_to_val to backed_var_to_val; 2.11 has only the old name
        vals = getattr(self.env, "backed_var_to_val", None)
        self.vals = vals if vals is not None else self.env.var_to_val
        self.hint = self.vals.get(self.symbol)
        self.saved = self.env.var_to_range.get(self.symbol)
        # narrow, never widen: keep what the shape env already knows (e.g. size >= 2)
        lo, hi = self.lo, self.hi
        if self.saved is not None:
            lo, hi = max(lo, self.saved.lower), min(hi, self.saved.upper)
        if lo > hi:  # e.g. the range [1, 1] of a symbol known to be >= 2: nothing to narrow
            return self
        if self.hint is not None and not lo <= self.hint <= hi:
            self.moved_hint = lo if self.hint < lo else hi
            # a sympy hint (1 is sympy's singleton One) stays sympy, a Python int an int
            self.vals[self.symbol] = (
                sympy.Integer(self.moved_hint)
                if isinstance(self.hint, sympy.Basic)
                else self.moved_hint
            )
        self.env.var_to_range[self.symbol] = ValueRanges(lo, hi)
        self.applied = True
        _drop_cached_evaluations(self.env)
        return self

    def __exit__(self, *exc):
        if self.applied:
            if self.moved_hint is not None:
                self.vals[self.symbol] = self.hint
            if self.saved is None:
                self.env.var_to_range.pop(self.symbol, None)
            else:
                self.env.var_to_range[self.symbol] = self.saved
            _drop_cached_evaluations(self.env)


def _drop_cached_evaluations(env) -> None:
    """ShapeEnv caches static evaluations (`s0 <= 256` -> True) until its version changes, and
    var_to_range is not part of its version: without a bump, facts proven under one range's
    bounds leak into the next range's compile (on 4x H200 that made Inductor emit wrong code
    for [257, 1025] after compiling [1, 256]), and facts cached before narrowing hide it."""
    env._version_counter += 1


def _allreduced(gm: torch.fx.GraphModule, extra: Iterable[str] = ()):
    """(activation, world size or None) of the first allreduce in a Dynamo graph: a functional
    or custom allreduce op, or a DTensor redistributed from Partial (TP's RowwiseParallel)."""
    for node in gm.graph.nodes:
        val = node.meta.get("example_value")
        if node.op not in ("call_function", "call_method") or not isinstance(val, torch.Tensor):
            continue
        target = (
            node.target
            if isinstance(node.target, str)
            else getattr(node.target, "__name__", str(node.target))
        )
        if optable.is_allreduce(str(node.target), extra) or target == "all_reduce":
            # the collective's own group when its name is an argument, else WORLD
            names = [a for a in node.args if isinstance(a, str) and a != "sum"]
            return val, names[-1] if names else None
        src = (
            node.args[0].meta.get("example_value")
            if node.args and isinstance(node.args[0], torch.fx.Node)
            else None
        )
        if (
            target == "redistribute"
            and any(p.is_partial() for p in getattr(src, "placements", ()))
            and not any(p.is_partial() for p in getattr(val, "placements", ()))
        ):
            return val, cast(Any, val).device_mesh.get_group().group_name
    return None, None


def _auto_from_graph(gm, policy: FusionPolicy, extra: Iterable[str] = ()) -> list[int]:
    """Split points for ranges='auto': the thresholds at the first allreduced activation."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return []
    from arfuse import kernels

    val, group = _allreduced(gm, extra)
    if val is None:
        return []
    try:
        world = kernels.resolve_group(group).size() if group else dist.get_world_size()
    except ValueError:
        world = dist.get_world_size()
    return auto_splits(val.shape[-1], val.dtype, world, val.device, policy)


def backend(
    ranges: Sequence[int] | str = "auto",
    *,
    fusion: FusionConfig | None = None,
    options: dict[str, Any] | None = None,
    lazy: bool = False,
    bound_symbols: bool = True,
    policy: FusionPolicy | None = None,
) -> RangedBackend:
    """The compile-ranges backend alone, for `torch.compile(model, backend=...)` where the
    caller marks the token dims itself (e.g. an `arfuse audit` target's compile kwargs)."""
    ranges = split_points(ranges)
    return RangedBackend(ranges, fusion, options, lazy, bound_symbols, policy)


class RangedModule:
    """What `arfuse.compile` returns: call it like the model (positional or keyword tensors)."""

    def __init__(
        self, model, backend: RangedBackend, token_dims, compiled, size_oblivious: bool = True
    ) -> None:
        self.model = model
        self.backend = backend
        self.token_dims = token_dims
        self._compiled = compiled
        self._size_oblivious = size_oblivious
        self._signature_of = model.forward if isinstance(model, torch.nn.Module) else model

    @property
    def ranges(self) -> list[TokenRange]:
        """The ranges of the first capture with num_tokens dynamic (a capture specialised to
        one size has the single range of that size)."""
        dispatches = self.backend.dispatches
        dynamic = [
            d for d in dispatches if d.symbol is not None or d.splits or d.ranges[0].hi is None
        ]
        return (dynamic or dispatches)[0].ranges if dispatches else []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.backend.dispatch is not None:  # captured: Dynamo's guards take any size now
            return self._compiled(*args, **kwargs)
        self.backend.token_arg = mark_token_dims(self._signature_of, args, kwargs, self.token_dims)
        # size-oblivious backed symbols: no 0/1 specialization, so 1 token shares the capture.
        # Not under dynamic=True: a batch of 1 would become a symbol too, which DTensor's
        # sharding propagation cannot take (`2//s0` local sizes)
        shape_config = cast(Any, torch.fx.experimental._config)
        with shape_config.patch(backed_size_oblivious=self._size_oblivious):
            return self._compiled(*args, **kwargs)


def compile(
    model: Callable,
    ranges: Sequence[int] | str = "auto",
    *,
    fusion: FusionConfig | None = None,
    token_dims: Mapping[int | str, int | Sequence[int] | None] | None = None,
    lazy: bool = False,
    bound_symbols: bool = True,
    policy: FusionPolicy | None = None,
    **torch_compile_kwargs: Any,
) -> RangedModule:
    """torch.compile with the fusion pass and one Inductor compile per num_tokens range.

    ranges: 'auto' (split points where the thresholds in force switch strategy for the
        model's hidden size, dtype and world size) or a list of split points in tokens.
    fusion: the FusionConfig for every range (its token_range is set per range).
    token_dims: argument name or positional index -> token dim(s) (None: not a token
        argument), e.g. {"input_ids": 1}. Unnamed arguments: the usual HF names by their
        layout (input_ids/position_ids/attention_mask [batch, seq] -> 1, inputs_embeds
        [batch, seq, hidden] -> 1, cache_position -> 0, ...), other positional tensors dim 0.
        The first of input_ids / inputs_embeds / hidden_states (else the first argument named
        here, else the first positional tensor) is the token argument: num_tokens is the
        product of its dims up to the token dim (batch * seq).
    lazy: False (default): compile every range at capture, inside Dynamo, so any guard a range's
        compile adds is installed; True: compile a range on its first use (faster start; a
        guard added then cannot be enforced and is warned about).
    policy: the thresholds and two-shot switch deciding fusion per range (default: in force).
    Other keyword arguments (e.g. options={...}, fullgraph=True, dynamic=True) pass through to
    torch.compile. dynamic=None (default) makes only the token dims dynamic, 1 token included:
    a new batch size captures once more, with batch dynamic too. dynamic=True makes every dim
    dynamic but 0/1 specialises as torch.compile does (a batch of 1, a 1-token call: one more
    capture each). dynamic=False is refused: it would pin num_tokens.
    """
    if "backend" in torch_compile_kwargs:
        raise ValueError("arfuse.compile sets the backend itself; drop backend=")
    if torch_compile_kwargs.get("dynamic") is False:
        raise ValueError(
            "arfuse.compile needs num_tokens dynamic; drop dynamic=False (None "
            "marks the token dims only, True every dim)"
        )
    options = torch_compile_kwargs.pop("options", None)
    if options and "post_grad_custom_post_pass" in options:
        raise ValueError(
            "arfuse.compile installs the fusion pass itself; configure it with "
            "fusion=FusionConfig(...) instead of post_grad_custom_post_pass"
        )
    ranged = backend(
        ranges,
        fusion=fusion,
        options=options,
        lazy=lazy,
        bound_symbols=bound_symbols,
        policy=policy,
    )
    compiled = torch.compile(model, backend=ranged, **torch_compile_kwargs)
    return RangedModule(
        model,
        ranged,
        token_dims,
        compiled,
        size_oblivious=torch_compile_kwargs.get("dynamic") is not True,
    )
