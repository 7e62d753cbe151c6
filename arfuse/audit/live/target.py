"""What `arfuse audit` compiles: an `AuditTarget`, and how a `FILE.py:NAME` spec loads one.

`NAME()` returns an `AuditTarget`, `(model, make_inputs)` or
`(model, make_inputs, torch_compile_kwargs)`. `make_inputs(num_tokens)` returns the positional
args (a tensor, a tuple or a list). Dim 0 of every tensor arg is the token dim unless
`token_dims` says otherwise - `{0: (0, 1)}` for a 3-D `[batch, seq, hidden]` input whose batch
and seq both scale with the token count, `{1: None}` for an arg without a token dim.

Multi-rank targets set `world_size` and `build`: `build()` runs on every rank after a gloo
process group is initialized and returns `(model, make_inputs[, compile_kwargs])`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.judge.domain import TokenDomain
from arfuse.audit.options import DEFAULT_MAX_TOKENS, DEFAULT_MIN_TOKENS


@dataclass
class AuditTarget:
    model: Callable | None = None
    make_inputs: Callable[[int], Any] | None = None
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    token_dims: Mapping[int, int | Sequence[int] | None] | None = None
    sizes: Sequence[int] | None = None  # replaces DEFAULT_SIZES for this target
    thresholds: Sequence[int] = ()  # each t is swept as t-1, t, t+1
    hidden: int | None = None  # set: also sweep arfuse's thresholds table limits
    dtype: Any = None  # ... for this activation dtype (default bfloat16)
    min_tokens: int = DEFAULT_MIN_TOKENS  # the token domain the model serves: guards are
    max_tokens: int = DEFAULT_MAX_TOKENS  # judged over [min_tokens, max_tokens]
    world_size: int | None = None  # None: no process group; n: n spawned gloo ranks
    build: Callable[[], Any] | None = None  # multi-rank: called on every rank, in the group
    audit_ranks: str = "first"  # "first": rank 0's trace; "all": every rank's
    compile_ranks: str = "all"  # "all" or "audited": ranks that compile (others eager)
    strict: bool = False  # mark_dynamic instead of maybe_mark_dynamic
    name: str = ""

    def __post_init__(self) -> None:
        if self.build is None and (self.model is None or self.make_inputs is None):
            raise ValueError(
                "AuditTarget needs model and make_inputs, or build= (a function "
                "that returns (model, make_inputs) on every rank)"
            )
        if self.world_size is not None and self.world_size < 1:
            raise ValueError(f"AuditTarget.world_size must be >= 1, got {self.world_size}")
        if self.audit_ranks not in ("first", "all"):
            raise ValueError(
                f"AuditTarget.audit_ranks must be 'first' or 'all', got {self.audit_ranks!r}"
            )
        if self.compile_ranks not in ("all", "audited"):
            raise ValueError(
                f"AuditTarget.compile_ranks must be 'all' or 'audited', got {self.compile_ranks!r}"
            )
        for t in self.thresholds:
            if not isinstance(t, int) or t < 1:
                raise ValueError(f"AuditTarget.thresholds must be positive ints, got {t!r}")
        TokenDomain(self.min_tokens, self.max_tokens)  # raises ValueError saying what is wrong

    @property
    def domain(self) -> TokenDomain:
        return TokenDomain(self.min_tokens, self.max_tokens)

    def materialize(self) -> AuditTarget:
        """Call `build()` (on a rank) and return a target with model and make_inputs set."""
        if self.build is None:
            return self
        built = self.build()
        inner = coerce(built, "build()")
        if inner.build is not None:
            raise ValueError(
                "build() must return (model, make_inputs[, compile_kwargs]), not "
                "another lazy AuditTarget"
            )
        merged = {**inner.compile_kwargs, **self.compile_kwargs}
        return AuditTarget(
            model=inner.model,
            make_inputs=inner.make_inputs,
            compile_kwargs=merged,
            token_dims=self.token_dims or inner.token_dims,
            sizes=self.sizes,
            thresholds=self.thresholds,
            hidden=self.hidden,
            dtype=self.dtype,
            min_tokens=self.min_tokens,
            max_tokens=self.max_tokens,
            world_size=self.world_size,
            audit_ranks=self.audit_ranks,
            compile_ranks=self.compile_ranks,
            strict=self.strict,
            name=self.name,
        )


def with_fusion_pass(model: Callable, make_inputs: Callable[[int], Any]) -> tuple:
    """What a `build()` returns to compile `model` with Inductor and a fresh
    `arfuse.AllReduceFusionPass`, so the audit also sees fusion coverage (ARF2xx, ARF303)."""
    import arfuse

    pass_ = arfuse.AllReduceFusionPass()
    return model, make_inputs, {"options": {"post_grad_custom_post_pass": pass_}}


def coerce(obj: Any, what: str) -> AuditTarget:
    """Accept an AuditTarget or a (model, make_inputs[, compile_kwargs]) tuple."""
    if isinstance(obj, AuditTarget):
        return obj
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        model, make_inputs = obj[0], obj[1]
        kwargs = obj[2] if len(obj) == 3 else {}
        if not callable(model) or not callable(make_inputs):
            raise ValueError(
                f"{what} returned a tuple whose first two items are not callable; "
                f"return (model, make_inputs) where make_inputs(num_tokens) returns "
                f"the positional args"
            )
        if not isinstance(kwargs, dict):
            raise ValueError(
                f"{what}: the third item must be a dict of torch.compile kwargs, "
                f"got {type(kwargs).__name__}"
            )
        return AuditTarget(model=model, make_inputs=make_inputs, compile_kwargs=dict(kwargs))
    raise ValueError(
        f"{what} returned {type(obj).__name__}; return an arfuse.audit.AuditTarget "
        f"or a tuple (model, make_inputs[, torch_compile_kwargs])"
    )


def split_spec(spec: str) -> tuple[str, str, Path | None]:
    """`FILE.py:NAME` / `pkg.module:NAME` -> (where, NAME, the file or None). Checks the form
    and that the file exists without importing anything (the CLI calls it before it starts
    the worker)."""
    if ":" not in spec:
        raise ValueError(
            f"target {spec!r} has no ':NAME'; write FILE.py:NAME or pkg.module:NAME "
            f"where NAME() returns the model and make_inputs"
        )
    where, _, name = spec.rpartition(":")
    if not (where.endswith(".py") or "/" in where or "\\" in where):
        return where, name, None
    path = Path(where)
    if not path.is_file():
        raise ValueError(f"target file {where!r} does not exist (relative to {Path.cwd()})")
    return where, name, path


def resolve(spec: str) -> Callable[[], Any]:
    """`path/to/model.py:NAME` or `pkg.module:NAME` -> the callable NAME."""
    where, name, path = split_spec(spec)
    if path is not None:
        mod_name = f"_arfuse_target_{abs(hash(str(path.resolve())))}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise ValueError(f"cannot import {where!r} as a Python file")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module  # custom ops and pickling need a findable module
        sys.path.insert(0, str(path.resolve().parent))
        mspec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"cannot import module {where!r} ({exc}); check the name or pass "
                f"a file path like path/to/model.py:{name}"
            ) from exc
    fn = getattr(module, name, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ValueError(
            f"{where!r} has no attribute {name!r}; callables there: "
            f"{', '.join(sorted(names)[:12]) or 'none'}"
        )
    if not callable(fn):
        raise ValueError(
            f"{spec}: {name} is a {type(fn).__name__}, not a function that returns the audit target"
        )
    return fn


def load(spec: str) -> AuditTarget:
    fn = resolve(spec)
    obj = fn() if not isinstance(fn, AuditTarget) else fn
    target = coerce(obj, f"{spec}()")
    if not target.name:
        target.name = spec
    return target


def arg_names(model: Callable, count: int) -> list[str]:
    """How Dynamo names the positional args in sources: L['x'] or L['args'][i]."""
    fn = model.forward if hasattr(model, "forward") else model
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [f"args'][{i}" for i in range(count)]
    out, var = [], None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            out.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            var = p.name
            break
    names = out[:count]
    if len(names) < count and var:
        names += [f"{var}'][{i}" for i in range(count - len(names))]
    return names


def token_sources(
    target: AuditTarget, args: Sequence[Any]
) -> tuple[list[str], dict[str, list[int]]]:
    """Dynamo source strings of every token dim, e.g. ["L['x'].size()[0]"]."""
    import torch

    assert target.model is not None, "token_sources reads a materialize()d target"
    names = arg_names(target.model, len(args))
    sources, dims_by_name = [], {}
    for i, (name, arg) in enumerate(zip(names, args, strict=False)):  # fewer names: no *args
        if not isinstance(arg, torch.Tensor):
            continue
        dims = token_dims_of(target, i, arg.dim())
        if dims:
            dims_by_name[name] = dims
        sources += [f"L['{name}'].size()[{d}]" for d in dims]
    return sources, dims_by_name


def token_dims_of(target: AuditTarget, index: int, ndim: int) -> list[int]:
    if target.token_dims is None:
        return [0] if ndim >= 1 else []
    dims = target.token_dims.get(index, 0)
    if dims is None:
        return []
    dims = [dims] if isinstance(dims, int) else list(dims)
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"token_dims[{index}] = {d} is out of range for a {ndim}-D arg")
    return [d % ndim for d in dims]
