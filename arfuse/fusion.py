"""AllReduceFusionPass: one fused op for every allreduce -> add -> RMSNorm (-> FP8) chain.

An Inductor post-grad custom pass (`post_grad_custom_post_pass`). Before (bf16, Llama layer):

    all_reduce = _c10d_functional.all_reduce_(mm, "sum", "0")
    wait = _c10d_functional.wait_tensor(all_reduce)
    add = aten.add.Tensor(wait, residual)                       # -> next residual
    f32 = prims.convert_element_type(add, torch.float32)
    norm = aten.mul(f32, aten.rsqrt(aten.add(aten.mean(aten.pow(f32, 2), [-1], True), 1e-5)))
    out = aten.mul(weight, prims.convert_element_type(norm, torch.bfloat16))

After (`input` is the op's mutable reduction buffer, so the call is functionalized;
Inductor's reinplacing, later in post-grad, passes `mm` itself when nothing else reads it, as it
does for a plain all_reduce, and a copy otherwise):

    fused = auto_functionalized(arfuse.fused_allreduce_rmsnorm.default, input=mm,
        residual=residual, weight=weight, eps=1e-5, weight_offset=0.0, group_name="0",
        policy="3f2a...")                       # the pass's FusionPolicy.digest()
    out = fused[0]
    add = fused[1]

With a static FP8 quant after the norm the op is `arfuse.fused_allreduce_rmsnorm_quant_fp8`
(`fused[0]` the float8_e4m3fn tensor, `fused[1]` the residual), or
`arfuse.fused_allreduce_rmsnorm_fp8` (quant, norm, residual) where the bf16 norm is read too.
Views between the collective and the add are replayed on the collective's input, so 3-D
`[batch, seq, hidden]` models fuse like 2-D ones; so is a multiply by a scalar (Gemma's
embedding scale), which moves onto each rank's partial sum.

Above its fusion limit (the thresholds table for the chain's GPU and world size, or
`FusionConfig.fused_max_tokens`) a chain runs faster unfused. Where the graph's token count is
dynamic, the pass emits the op and the chain as it was as two branches of a `cond` on the token
count (`arfuse.token_branch`, whose docstring shows that graph), so above the limit the
compiled graph runs plain Inductor's kernels; a static size above the limit is left to Inductor
(`by_range`). Under Inductor's CUDA graphs, which do not capture a `cond`, the op is emitted
alone and runs its own unfused path above the limit.

A reduced value normed directly and used elsewhere too (HF's vocab-parallel embedding: the
first input_layernorm, and the residual of the first attention add) fuses without a residual:

    fused = arfuse.fused_allreduce_rmsnorm(embedding, None, weight, 1e-6, 0.0, "0", "3f2a...")
    out = fused[0]
    wait = fused[1]                                             # the reduced value, for the add

A chain whose other intermediates feed anything outside it is left alone (the fused op does
not produce them), as is everything the pass cannot run (world size 1, no process group,
unsupported dtype or hidden size): each reason is warned once
and recorded in `skipped`, and a per-graph report goes to the structured trace (artifact
`arfuse_fusion`) where `arfuse audit` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch._higher_order_ops.auto_functionalize import auto_functionalized
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.pattern_matcher import stable_topological_sort
from torch._prims_common import is_contiguous_or_false
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from arfuse import kernels, token_branch
from arfuse.audit.trace.records import FUSION_REPORT
from arfuse.config import FusionConfig
from arfuse.patterns.match import ChainMatch, Miss, custom_allreduce_ops, match_chain
from arfuse.policy import FusionPolicy

_SOURCES = tuple(
    str(Path(__file__).parent / rel)
    for rel in (
        "fusion.py",
        "token_branch.py",
        "config.py",
        "policy.py",
        "optable.py",
        "ops.py",
        "patterns/spec.py",
        "patterns/match.py",
    )
)


def _warn_once(reason: str, warned: set[str]) -> None:
    if reason not in warned:
        warned.add(reason)
        warnings.warn(f"arfuse: not fusing: {reason}", stacklevel=3)


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, Node) else None


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    # statically_known_true: never add a guard (on num_tokens, say) just to decide a match
    return a.dim() == b.dim() and all(
        statically_known_true(x == y) for x, y in zip(a.shape, b.shape, strict=True)
    )


class AllReduceFusionPass(CustomGraphPass):
    """Replace allreduce + (residual add) + RMSNorm (+ static FP8 quant) with one arfuse op.

    config: what to match (FusionConfig). policy: the thresholds and two-shot switch that
    decide a token range's fusion (FusionPolicy; default: the one in force now).

    Counters accumulate over every graph the pass sees: `num_matches` (chains replaced),
    `matched` (a Counter of spec names), `skipped` (reason, node) pairs for chains left alone,
    `by_range` (reason, node) pairs left to Inductor because the config's token range lies
    above the fusion threshold (intended, not warned).
    """

    def __init__(
        self,
        config: FusionConfig | None = None,
        policy: FusionPolicy | None = None,
        *,
        warned: set[str] | None = None,
    ) -> None:
        self.config = config or FusionConfig()
        self.policy = policy or FusionPolicy.current()
        self._policy_digest = self.policy.digest()  # the ops it emits run under this policy
        # each skip reason is warned once per pass, or per set shared by several passes
        self._warned = set() if warned is None else warned
        self.num_matches = 0
        self.matched: Counter[str] = Counter()
        self.skipped: list[tuple[str, str]] = []
        self.by_range: list[tuple[str, str]] = []

    # -- CustomGraphPass ---------------------------------------------------------------------

    def __call__(self, graph: Graph) -> None:
        report = self.apply(graph)
        torch._logging.trace_structured(
            "artifact",
            metadata_fn=lambda: {"name": FUSION_REPORT, "encoding": "json"},
            payload_fn=lambda: json.dumps(report),
        )

    def uuid(self) -> bytes:
        """Changes with arfuse's matching/replacement code, the config and the policy, so the
        FX graph cache never serves a graph compiled by another version, config or thresholds
        table of the pass."""
        digest = hashlib.sha256(get_hash_for_files(_SOURCES))  # read once per process (lru_cache)
        digest.update(self.config.key().encode())
        digest.update(self._policy_digest.encode())
        return digest.digest()

    # -- the pass ------------------------------------------------------------------------------

    def apply(self, graph: Graph) -> dict[str, Any]:
        """Fuse every supported chain in `graph`; return this graph's report."""
        custom_ops = custom_allreduce_ops(self.config)
        matches: list[ChainMatch] = []
        skipped: list[tuple[str, str]] = []
        by_range: list[tuple[str, str]] = []
        disabled = None
        erased: set[Node] = set()
        # rewrite as we go: a later chain's residual is often an earlier chain's residual_out
        for node in list(graph.nodes):
            if node in erased:
                continue
            found = match_chain(node, self.config, custom_ops)
            if found is None:
                continue
            if isinstance(found, Miss):
                skipped.append((found.reason, found.node))
                continue
            if not self.config.enables(found.spec):
                skipped.append(
                    (f"pattern {found.spec.name} is disabled in FusionConfig", found.norm_out.name)
                )
                continue
            why = self._group_unusable(found.group_name)
            if why is not None:
                disabled = why
            else:
                why = self._chain_unsupported(found)
            if why is not None:
                skipped.append((why, found.norm_out.name))
                continue
            why = self._outside_fused_range(found)
            if why is not None:  # intended: this range is left to Inductor's own fusion
                by_range.append((why, found.norm_out.name))
                continue
            limit = self._branch_limit(found)
            if isinstance(limit, str):  # every size this graph serves runs unfused
                by_range.append((limit, found.norm_out.name))
                continue
            erased.update(_rewrite(graph, found, self._policy_digest, limit))
            matches.append(found)
            self.matched[found.spec.name] += 1
        if matches:
            stable_topological_sort(graph)
            graph.lint()
        self.num_matches += len(matches)
        self.skipped.extend(skipped)
        self.by_range.extend(by_range)
        for reason, _ in skipped:
            _warn_once(reason, self._warned)
        return {
            "matches": len(matches),
            "specs": [m.spec.name for m in matches],
            "disabled": disabled,
            "skipped": [{"reason": r, "node": n} for r, n in skipped],
            "token_range": self.config.token_range,
            "by_range": [{"reason": r, "node": n} for r, n in by_range],
            "allreduce_ops": list(self.config.allreduce_ops),
            "norm_ops": list(self.config.norm_ops),
        }

    def _outside_fused_range(self, m: ChainMatch) -> str | None:
        """With a token range: why this range must not fuse, or None. A range that straddles
        the chain's fusion threshold is a build error: the split points missed it."""
        if self.config.token_range is None:
            return None
        lo, hi = self.config.token_range
        limit = _fused_max_tokens(m, self.config, self.policy)
        if limit is None or (hi is not None and hi <= limit):
            return None
        if lo > limit:
            return (
                f"num_tokens range [{lo}, {hi if hi is not None else 'inf'}] lies above the "
                f"fusion threshold ({limit} tokens): the unfused path is faster there"
            )
        raise ValueError(
            f"arfuse: compile range [{lo}, {hi if hi is not None else 'inf'}] straddles the "
            f"fusion threshold at {limit} tokens (hidden {_val(m.norm_out).shape[-1]}, "
            f"{_val(m.allreduce_input).dtype}); add {limit} to the split points (or use "
            "ranges='auto') so fusion is decided per range, not dropped for the whole range"
        )

    def _group_unusable(self, group_name: str) -> str | None:
        """Why the pass cannot fuse collectives of this group at all, or None. (The one-rank
        bench, `arfuse.bench.local.OneRankPass`, lifts the world-size check.)"""
        if not dist.is_available() or not dist.is_initialized():
            return "torch.distributed is not initialized: no process group to reduce over"
        try:
            group = kernels.resolve_group(group_name)
        except ValueError as e:
            return str(e)
        if group.size() < 2:
            return f"world size {group.size()} of group {group_name!r}: nothing to fuse"
        return None

    def _branch_limit(self, m: ChainMatch) -> int | str | None:
        """Without a token range (the bare pass): the chain's fusion limit in tokens where only
        the run time knows which side of it a call lies (the op and plain Inductor's chain as
        two branches, `token_branch`); a reason where every size the graph serves lies above
        it; None where the op alone is right (below it, no limit known, a token range
        decided it, Inductor's CUDA graphs, which do not capture a branch, or the config's
        `token_branch=False`)."""
        if (
            self.config.token_range is not None
            or not self.config.token_branch
            or inductor_config.triton.cudagraphs
        ):
            return None
        limit = _fused_max_tokens(m, self.config, self.policy)
        if limit is None:
            return None
        tokens = token_branch.tokens_of(m.allreduce_input)
        below = token_branch.decided(tokens, limit)
        if below is None:
            return limit
        if below:
            return None
        return (
            f"num_tokens {tokens} lies above the fusion threshold ({limit} tokens): "
            "the unfused path is faster there"
        )

    def _chain_unsupported(self, m: ChainMatch) -> str | None:
        act, out, weight = _val(m.allreduce_input), _val(m.norm_out), _val(m.weight)
        if act is None or out is None or weight is None:
            return "graph nodes lack shape metadata (meta['val'])"
        dtype = act.dtype
        # a norm read only by the FP8 quant may be float32 (its round trip through `dtype`
        # dropped): the quant-only op never produces it
        quant_only = m.quant_out is not None and not m.norm_read
        if (out.dtype != dtype and not quant_only) or weight.dtype != dtype:
            return (
                f"dtypes differ: activation {dtype}, weight {weight.dtype}, norm output "
                f"{out.dtype}; the fused kernel needs one dtype"
            )
        if weight.dim() != 1 or not statically_known_true(weight.shape[0] == out.shape[-1]):
            return f"weight shape {tuple(weight.shape)} is not (hidden,)"
        hidden = _static_hidden(out, weight)
        if hidden is None:
            return (
                "hidden size is dynamic with no example value; the fused kernel needs a "
                "known hidden size"
            )
        if hidden % self.config.hidden_multiple:
            return (
                f"hidden size {hidden} is not a multiple of {self.config.hidden_multiple}, "
                "as the fused kernel needs"
            )
        residual = _val(m.residual)
        if not is_contiguous_or_false(act) or (
            residual is not None and not is_contiguous_or_false(residual)
        ):
            return "allreduce input or residual is not contiguous"
        if residual is not None and not _same_shape(residual, _val(m.residual_out)):
            return "residual and allreduce output shapes differ (broadcasting add)"
        return None


def _static_hidden(out: torch.Tensor, weight: torch.Tensor) -> int | None:
    """The hidden size without adding a guard: the weight's static shape (parameters are
    static even under dynamic=True), else the example value of a dynamic hidden dim. The
    fused op reads the real size at run time, where an unsupported one runs unfused."""
    for size in (weight.shape[0], out.shape[-1]):
        if isinstance(size, int):
            return size
    hint = getattr(getattr(weight.shape[0], "node", None), "hint", None)
    return int(hint) if hint is not None else None


def _fused_max_tokens(m: ChainMatch, config: FusionConfig, policy: FusionPolicy) -> int | None:
    """The chain's fusion limit in tokens: the config's override, else the policy's thresholds
    for its GPU; None where no table applies (CPU)."""
    if config.fused_max_tokens is not None:
        return config.fused_max_tokens
    act = _val(m.allreduce_input)
    hidden = _static_hidden(_val(m.norm_out), _val(m.weight))
    if act.device.type != "cuda" or hidden is None:
        return None
    limits = policy.limits(
        torch.cuda.get_device_capability(act.device),
        kernels.resolve_group(m.group_name).size(),
        act.dtype,
        hidden,
    )
    # with two-shot off its window runs the unfused path: leave it to Inductor instead
    return None if limits is None else policy.fused_max_tokens(limits)


# ---- graph surgery ----------------------------------------------------------------------------


def _fake_call(node: Node) -> None:
    """Fill node.meta['val'] by running its target on the fake values of its inputs."""
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
    mode = torch._guards.detect_fake_mode(
        [a for a in torch.utils._pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
    )
    target = cast(Callable[..., Any], node.target)
    with mode if mode is not None else contextlib.nullcontext():
        node.meta["val"] = target(*args, **kwargs)


def _fused_builder(
    m: ChainMatch, policy: str, functional: bool
) -> tuple[token_branch.FusedBuilder, tuple[str, ...]]:
    """What builds the fused op's nodes for `m` into a graph: the chain's views replayed on its
    input, then the op (`policy`: the pass's policy digest, which the op's run-time plan
    resolves back). `functional`: through `auto_functionalized` (the pass's own graph, where
    reinplacing decides whether the op may sum into its input), else the mutating op itself,
    after a copy of its input where the builder is asked for one (a branch of a `cond`).
    Also returns the names of the op's outputs, in order."""
    chain = set(m.nodes)
    names: tuple[str, ...]
    if m.scale is None:
        op, names = torch.ops.arfuse.fused_allreduce_rmsnorm, ("norm_out", "residual_out")
    elif m.norm_read:  # the bf16 norm is read too
        op = torch.ops.arfuse.fused_allreduce_rmsnorm_fp8
        names = ("quant_out", "norm_out", "residual_out")
    else:  # only the FP8 value is read: the op that does not store the norm
        op, names = (
            torch.ops.arfuse.fused_allreduce_rmsnorm_quant_fp8,
            ("quant_out", "residual_out"),
        )
    # eps as a graph input (dynamic=True lifts float attributes): the eps_tensor overload
    overload = getattr(op, "eps_tensor" if isinstance(m.eps, Node) else "default")

    def build(graph: Graph, outer: Callable[[Node], Node], copy_input: bool) -> list[Node]:
        def arg(a: Any) -> Any:
            return torch.fx.node.map_arg(a, outer)

        x = outer(m.allreduce_input)
        for step in m.steps:  # its operand from the chain becomes the value replayed so far
            args = tuple(x if a in chain else arg(a) for a in step.args)
            x = graph.call_function(cast(Callable[..., Any], step.target), args, arg(step.kwargs))
            _fake_call(x)
        if copy_input:
            x = graph.call_function(torch.ops.aten.clone.default, (x,))
            _fake_call(x)
        kwargs: dict[str, Any] = {"input": x, "residual": arg(m.residual), "weight": arg(m.weight)}
        if m.scale is not None:
            kwargs["scale"] = arg(m.scale)
        kwargs.update(
            eps=arg(m.eps), weight_offset=m.weight_offset, group_name=m.group_name, policy=policy
        )
        if functional:
            fused = graph.call_function(auto_functionalized, (overload,), kwargs)
        else:
            fused = graph.call_function(overload, (), kwargs)
        _fake_call(fused)
        outs = []
        for i in range(len(names)):
            outs.append(graph.call_function(operator.getitem, (fused, i)))
            outs[-1].meta["val"] = fused.meta["val"][i]
        return outs

    return build, names


def _outputs(m: ChainMatch, names: tuple[str, ...]) -> list[Node]:
    """The chain's nodes that the fused op's outputs (`names`) replace."""
    by_name = {"norm_out": m.norm_out, "residual_out": m.residual_out, "quant_out": m.quant_out}
    return [cast(Node, by_name[name]) for name in names]


def _rewrite(graph: Graph, m: ChainMatch, policy: str, limit: int | None = None) -> list[Node]:
    """Insert the fused op (with a run-time `limit` in tokens: the branch between it and the
    chain as it was, `token_branch`), rewire the chain's outputs to it, erase the chain;
    return the erased nodes."""
    stack_trace = m.last.meta.get("stack_trace")
    order = {n: i for i, n in enumerate(graph.nodes)}
    chain = sorted(m.nodes, key=order.__getitem__)
    build, names = _fused_builder(m, policy, functional=limit is None)
    outputs = _outputs(m, names)
    if limit is None:
        # the op may sum into `input`: functional form, so reinplacing (a later post-grad
        # pass) gives it the input's buffer when the input is dead, a copy when it is not
        with graph.inserting_before(m.last):
            results = build(graph, lambda n: n, False)
        for node in [cast(Node, results[0].args[0]), *results]:
            if stack_trace:
                node.meta["stack_trace"] = stack_trace
    else:
        results = token_branch.rewrite_as_branch(
            graph, chain, m.allreduce_input, outputs, build, limit
        )
    for old, new in zip(outputs, results, strict=True):
        old.replace_all_uses_with(new)
    erased = chain[::-1]
    for node in erased:
        graph.erase_node(node)
    # weight-side nodes (the float32 copy, Gemma's 1 + w) and unused outputs go if now unused
    for node in [*reversed(m.weight_nodes), *results]:
        if not node.users:
            graph.erase_node(node)
            erased.append(node)
    return erased
