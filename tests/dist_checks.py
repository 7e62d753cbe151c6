"""Checks that run inside each rank of the spawned gloo group (see conftest.gloo2).

Every function here is module-level (the spawned ranks import it by name) and returns plain
data for the test in the parent process to assert on.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

import arfuse
from arfuse.kernels.exact import FP8_MAX
from arfuse.patterns.spec import FusionSpec
from arfuse.testing.graphs import PostGradCapture, op_counts

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
FP8_TOL = 4e-2  # dequantized e4m3: 3 mantissa bits, ties may round the other way

# A user's own functional allreduce op, named in FusionConfig.allreduce_ops.
_LIB = torch.library.Library("arfuse_test", "DEF")
_LIB.define("all_reduce(Tensor input, str group_name) -> Tensor")


@torch.library.impl(_LIB, "all_reduce", "CompositeExplicitAutograd")
def _test_all_reduce(input, group_name):
    out = input.clone()
    dist.all_reduce(out, group=dist.distributed_c10d._resolve_process_group(group_name))
    return out


@torch.library.register_fake("arfuse_test::all_reduce", lib=_LIB)
def _test_all_reduce_fake(input, group_name):
    return torch.empty_like(input)


# A user's own norm op whose eps has a default, named in FusionConfig.norm_ops.
_LIB.define("rms_norm(Tensor input, Tensor weight, float eps=1e-06) -> Tensor")


@torch.library.impl(_LIB, "rms_norm", "CompositeExplicitAutograd")
def _test_rms_norm(input, weight, eps=1e-6):
    return arfuse.ops.rms_norm(input, weight, eps)


@torch.library.register_fake("arfuse_test::rms_norm", lib=_LIB)
def _test_rms_norm_fake(input, weight, eps=1e-6):
    return torch.empty_like(input)


CUSTOM_CONFIG = arfuse.FusionConfig(allreduce_ops=("arfuse_test::all_reduce",))

ALLREDUCE_TARGETS = (
    "_c10d_functional.all_reduce.default",
    "_c10d_functional.all_reduce_.default",
    "_c10d_functional.wait_tensor.default",
    "arfuse.all_reduce.default",
    "arfuse_test.all_reduce.default",
)
FUSED_TARGETS = (
    "arfuse.fused_allreduce_rmsnorm.default",
    "arfuse.fused_allreduce_rmsnorm_fp8.default",
    "arfuse.fused_allreduce_rmsnorm_quant_fp8.default",
)


class CountingPass(arfuse.AllReduceFusionPass):
    """The real pass, recording op counts of the graph before and after it runs."""

    def __init__(self, config=None):
        super().__init__(config)
        self.before, self.after = [], []

    def __call__(self, graph):
        self.before.append(op_counts(graph))
        super().__call__(graph)
        self.after.append(op_counts(graph))


class _CountCalls:
    """A kernel backend that takes no call and counts them: how often the fused op ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, args):
        self.calls += 1


@contextlib.contextmanager
def counting_op_calls():
    """A _CountCalls registered as a kernel backend (first, so it sees every call) while open."""
    from arfuse import kernels

    counter = _CountCalls()
    kernels._BACKENDS.insert(0, counter)
    try:
        yield counter
    finally:
        kernels._BACKENDS.remove(counter)


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def _all_reduce(x, form):
    group = dist.group.WORLD
    if form == "c10d":
        return funcol.all_reduce(x, "sum", group)
    if form == "arfuse":
        return arfuse.ops.all_reduce(x, group.group_name)
    return torch.ops.arfuse_test.all_reduce(x, group.group_name)


def _norm(h, weight, eps, form):
    if form == "rms_norm":
        return F.rms_norm(h, (h.shape[-1],), weight, eps)
    if form == "custom_op":
        return arfuse.ops.rms_norm(h, weight, eps)
    hf = h.to(torch.float32)
    hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    if form == "gemma":
        return (hf * (1.0 + weight.float())).to(h.dtype)
    return weight * hf.to(h.dtype)


def make_chain(
    spec: FusionSpec, eps: float, three_d: bool, residual_live: bool, norm_live: bool = False
):
    """The eager computation a model writes for `spec`; `norm_live`: FP8 chains return the
    norm before the quant too (so the fused op must produce it)."""

    def chain(x, residual, weight, scale):
        y = _all_reduce(x, spec.allreduce)
        if three_d:
            y = y.view(residual.shape)
        if spec.residual == "ar+res":
            h = y + residual
        elif spec.residual == "res+ar":
            h = residual + y
        else:
            h = y
        out = norm = _norm(h, weight, eps, spec.norm)
        if spec.quant == "fp8":
            out = (out.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        outs = (out, h) if residual_live else (out,)
        return outs + (norm,) if norm_live else outs if residual_live else out

    return chain


def _inputs(tokens: int, hidden: int, dtype, three_d: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rank_gen = torch.Generator().manual_seed(seed + 1000 * (dist.get_rank() + 1))
    rows = 2 * tokens if three_d else tokens
    x = torch.randn(rows, hidden, generator=rank_gen).to(dtype)
    res_shape = (2, tokens, hidden) if three_d else (tokens, hidden)
    residual = torch.randn(res_shape, generator=gen).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    scale = torch.tensor(0.05)
    return x, residual, weight, scale


def _as_float(out, scale):
    if out.dtype == torch.float8_e4m3fn:
        return out.to(torch.float32) * scale
    return out


def check_variant(
    spec_name: str,
    dtype_name: str,
    three_d: bool,
    residual_live: bool,
    tokens=(5, 33, 1),
    hidden: int = 64,
    eps: float = 1e-6,
    norm_live: bool = False,
) -> dict:
    """Fuse one variant; report op counts before/after, matches and errors vs eager."""
    spec = FusionSpec.parse(spec_name)
    dtype = DTYPES[dtype_name]
    config = CUSTOM_CONFIG if spec.allreduce == "custom" else arfuse.FusionConfig()
    fusion = CountingPass(config)
    capture = PostGradCapture(fusion)
    chain = make_chain(spec, eps, three_d, residual_live, norm_live)
    torch._dynamo.reset()
    compiled = torch.compile(chain, backend=capture.backend, fullgraph=True)
    errors, outputs = {}, []
    with torch.no_grad():
        for t in tokens:
            x, residual, weight, scale = _inputs(t, hidden, dtype, three_d, seed=t)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(residual, 1 if three_d else 0)
            got = compiled(x, residual, weight, scale)
            want = chain(x, residual, weight, scale)
            got, want = (got, want) if residual_live or norm_live else ((got,), (want,))
            errs = []
            for g, w in zip(got, want, strict=False):
                assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape)
                errs.append(rel_l2(_as_float(g, scale), _as_float(w, scale)))
            errors[t] = errs
            outputs.append(
                [g.float() if g.dtype != torch.float8_e4m3fn else g.view(torch.uint8) for g in got]
            )
    return _pass_counts(fusion) | {
        "graphs": len(capture.graphs),
        "errors": errors,
        "outputs": outputs,
        "tol": FP8_TOL if spec.quant == "fp8" else TOL[dtype],
    }


def _fused_kwargs(node) -> dict:
    """A fused-op node's arguments by name, whether functionalized or reinplaced; {} else."""
    if node.op != "call_function":
        return {}
    target, args = node.target, node.args
    if target in (torch.ops.higher_order.auto_functionalized,):
        target, args = args[0], ()
    if not str(target).startswith("arfuse.fused_allreduce_rmsnorm"):
        return {}
    names = [a.name for a in target._schema.arguments]
    return dict(zip(names, args, strict=False)) | dict(node.kwargs)


def check_policy_reaches_the_op() -> dict:
    """Two passes with different FusionPolicies compile one chain each: the policy digest each
    emitted into its graph, the one the op's kernel dispatch received at run time, and whether
    that digest resolves to the pass's own policy object; then a direct call of the op."""
    from arfuse import kernels
    from arfuse.policy import FusionPolicy, resolve
    from arfuse.thresholds import Thresholds

    table = FusionPolicy().table
    changed = {arch: dict(per_world) for arch, per_world in table.items()}
    changed["sm90"][2] = Thresholds(oneshot_max_mb=1, fused_max_mb=2, source="test")
    policies = [FusionPolicy(table, twoshot=False), FusionPolicy(changed, twoshot=True)]
    seen: list[str] = []

    def spy(args):  # a kernel backend that only records, then lets the exact path run
        seen.append(args.policy)

    spec = FusionSpec.parse("c10d/rms_norm/ar+res/none")
    x, residual, weight, _ = _inputs(5, 64, torch.float32, False, seed=5)
    rows = []
    kernels.register_backend(spy)
    try:
        for policy in policies:
            capture = PostGradCapture(arfuse.AllReduceFusionPass(policy=policy))
            torch._dynamo.reset()
            compiled = torch.compile(
                make_chain(spec, 1e-6, False, True), backend=capture.backend, fullgraph=True
            )
            seen.clear()
            with torch.no_grad():
                compiled(x, residual, weight, None)
            emitted = [
                _fused_kwargs(n).get("policy") for g in capture.graphs for n in g.graph.nodes
            ]
            emitted = [p for p in emitted if p is not None]
            rows.append(
                {
                    "digest": policy.digest(),
                    "emitted": emitted,
                    "seen": list(seen),
                    "resolves_to_pass_policy": [resolve(d) is policy for d in seen],
                }
            )
        seen.clear()
        with torch.no_grad():
            torch.ops.arfuse.fused_allreduce_rmsnorm(
                x, residual, weight, 1e-6, 0.0, dist.group.WORLD.group_name
            )
        direct = list(seen)
    finally:
        kernels._BACKENDS.remove(spy)
    return {
        "passes": rows,
        "direct": direct,
        "direct_resolves_to_current": resolve("") == FusionPolicy.current(),
    }


def count_allreduces(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k in ALLREDUCE_TARGETS and "wait" not in k)


def count_fused(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k in FUSED_TARGETS)


def _pass_counts(fusion) -> dict:
    """A CountingPass's record: op counts per graph before/after it, and its totals."""
    return {
        "before": [dict(c) for c in fusion.before],
        "after": [dict(c) for c in fusion.after],
        "matched": dict(fusion.matched),
        "num_matches": fusion.num_matches,
        "skipped": fusion.skipped,
    }


def _compile_capture(fn, config=None, cls=CountingPass):
    fusion = cls(config)
    capture = PostGradCapture(fusion)
    torch._dynamo.reset()
    return torch.compile(fn, backend=capture.backend, fullgraph=True), fusion, capture


@contextlib.contextmanager
def arfuse_warnings():
    """Under no_grad: the texts of the warnings arfuse raised inside (filled on exit)."""
    texts: list[str] = []
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        yield texts
    texts += [str(w.message) for w in caught if "arfuse" in str(w.message)]


def _skip_report(fn, *args) -> dict:
    """`fn` compiled at graph level and run against eager: what the pass matched, skipped and
    warned, and each output's error."""
    compiled, fusion, _ = _compile_capture(fn)
    with arfuse_warnings() as warned:
        got, want = compiled(*args), fn(*args)
    return {
        "num_matches": fusion.num_matches,
        "skipped": fusion.skipped,
        "warnings": warned,
        "errors": [rel_l2(g, w) for g, w in zip(got, want, strict=False)],
    }


def _run_sizes(model, compiled, make_inputs, tokens, token_dim=0):
    errors, outputs = {}, {}
    with torch.no_grad():
        for t in tokens:
            args = make_inputs(t)
            torch._dynamo.maybe_mark_dynamic(args[0], token_dim)
            got, want = compiled(*args), model(*args)
            errors[t] = rel_l2(got.float(), want.float())
            outputs[t] = got.float()
    return errors, outputs


def check_decoder(
    num_layers: int, dtype_name: str, norm: str = "hf", allreduce: str = "c10d", tokens=(7, 64, 1)
) -> dict:
    """The example TP decoder at graph level: fused count per graph and numerics vs eager."""
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(
        num_layers=num_layers, dtype=DTYPES[dtype_name], norm=norm, allreduce=allreduce
    )
    compiled, fusion, capture = _compile_capture(model)
    errors, _ = _run_sizes(model, compiled, make_inputs, tokens)
    return _pass_counts(fusion) | {"errors": errors}


def check_no_pattern() -> dict:
    """A graph with an allreduce but no norm: the pass must leave it exactly as it was."""

    def fn(x, w):
        y = funcol.all_reduce(x @ w, "sum", dist.group.WORLD)
        return torch.relu(y) + 1

    compiled, fusion, capture = _compile_capture(fn)
    x, w = torch.randn(6, 64), torch.randn(64, 64)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    with torch.no_grad():
        err = rel_l2(compiled(x, w), fn(x, w))
    return {
        "before": dict(fusion.before[0]),
        "after": dict(fusion.after[0]),
        "num_matches": fusion.num_matches,
        "error": err,
        "skipped": fusion.skipped,
    }


def check_reduced_value_kept(
    norm: str, quant: str, dtype_name: str, use: str, embed_scale: float | None = None
) -> dict:
    """HF's vocab-parallel embedding at graph level: the reduced value (times a 0-d
    `embed_scale` input, as Gemma scales it, when given) feeds an RMSNorm (-> FP8) directly and
    lives on, as the residual of the next allreduce's add (use='residual') or in any other op
    (use='other'). Errors are against the same function run in float32."""
    dtype, eps = DTYPES[dtype_name], 1e-6
    world = dist.group.WORLD
    es = torch.tensor(1.0 if embed_scale is None else embed_scale)

    def fn(x, x2, weight, scale, es):
        y = funcol.all_reduce(x, "sum", world)
        if embed_scale is not None:
            y = y * es.to(y.dtype)
        out = _norm(y, weight, eps, norm)
        if quant == "fp8":
            out = (out.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if use == "other":
            return out, y * 3
        h = y + funcol.all_reduce(x2, "sum", world)
        return out, _norm(h, weight, eps, norm), h

    compiled, fusion, capture = _compile_capture(fn)
    errors = {}
    with torch.no_grad():
        for t in (5, 33, 1):
            args = _inputs(t, 64, dtype, False, seed=t)  # (x, residual as x2, weight, scale)
            torch._dynamo.maybe_mark_dynamic(args[0], 0)
            torch._dynamo.maybe_mark_dynamic(args[1], 0)
            got = compiled(*args, es)
            want = fn(*(a.float() for a in args), es)
            errors[t] = [
                rel_l2(_as_float(g, args[3]).float(), _as_float(w, args[3]).float())
                for g, w in zip(got, want, strict=True)
            ]
    return _pass_counts(fusion) | {"errors": errors, "graphs": len(capture.graphs)}


def check_extra_consumer(which: str) -> dict:
    """A chain with an intermediate used outside it (which: 'rsqrt', 'upcast', 'allreduce')."""

    def fn(x, residual, weight):
        y = funcol.all_reduce(x, "sum", dist.group.WORLD)
        h = y + residual
        hf = h.to(torch.float32)
        r = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)
        out = weight * (hf * r).to(h.dtype)
        extra = {"rsqrt": r, "upcast": hf * 2, "allreduce": y * 3}[which]
        return out, extra

    compiled, fusion, capture = _compile_capture(fn)
    x, residual, weight = (
        torch.randn(6, 64, dtype=torch.bfloat16),
        torch.randn(6, 64, dtype=torch.bfloat16),
        torch.randn(64, dtype=torch.bfloat16),
    )
    torch._dynamo.maybe_mark_dynamic(x, 0)
    torch._dynamo.maybe_mark_dynamic(residual, 0)
    with torch.no_grad():
        got, want = compiled(x, residual, weight), fn(x, residual, weight)
    return {
        "after": dict(fusion.after[0]),
        "num_matches": fusion.num_matches,
        "skipped": fusion.skipped,
        "errors": [rel_l2(g.float(), w.float()) for g, w in zip(got, want, strict=False)],
    }


def check_unsupported(case: str) -> dict:
    """Chains the pass must skip, with the reason it records: 'world1', 'hidden', 'float64'."""
    hidden, dtype, group = 64, torch.bfloat16, dist.group.WORLD
    if case == "world1":
        group, _ = dist.new_subgroups(group_size=1)
    elif case == "hidden":
        hidden = 12
    elif case == "float64":
        dtype = torch.float64

    def fn(x, residual, weight):
        h = funcol.all_reduce(x, "sum", group) + residual
        return F.rms_norm(h, (hidden,), weight, 1e-6), h

    return _skip_report(
        fn,
        torch.randn(6, hidden, dtype=dtype),
        torch.randn(6, hidden, dtype=dtype),
        torch.randn(hidden, dtype=dtype),
    )


def check_bad_op_inputs() -> dict:
    """Direct calls of the fused ops with bad inputs: each must raise ValueError (message)."""
    group = dist.group.WORLD.group_name
    x, w = torch.randn(4, 64, dtype=torch.bfloat16), torch.ones(64, dtype=torch.bfloat16)
    cases = {
        "hidden": lambda: arfuse.ops.fused_allreduce_rmsnorm(
            x, None, torch.ones(32, dtype=w.dtype), 1e-6, group
        ),
        "residual_shape": lambda: arfuse.ops.fused_allreduce_rmsnorm(x, x[:2], w, 1e-6, group),
        "noncontiguous": lambda: arfuse.ops.fused_allreduce_rmsnorm(
            torch.randn(64, 4, dtype=x.dtype).t(), None, w, 1e-6, group
        ),
        "group": lambda: arfuse.ops.fused_allreduce_rmsnorm(x, None, w, 1e-6, "no-such-group"),
        "scale_shape": lambda: arfuse.ops.fused_allreduce_rmsnorm_fp8(
            x, None, w, torch.ones(64), 1e-6, group
        ),
        "weight_dtype": lambda: arfuse.ops.fused_allreduce_rmsnorm(x, None, w.float(), 1e-6, group),
        "compiled_hidden": lambda: torch.compile(
            lambda a: (
                arfuse.ops.fused_allreduce_rmsnorm(
                    a, None, torch.ones(32, dtype=a.dtype), 1e-6, group
                ).norm
            ),
            backend="aot_eager",
        )(x),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = None
        except Exception as e:  # noqa: BLE001 - the test asserts on the type and message
            out[name] = (type(e).__name__, str(e))
    return out


def check_fused_op_exact(dtype_name: str, tokens: int, residual: bool, fp8: bool) -> dict:
    """The fused op vs a float64 reference built from every rank's input."""
    dtype = DTYPES[dtype_name]
    rank, world = dist.get_rank(), dist.get_world_size()
    hidden = 64
    xs = [
        torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(r + 10)).to(dtype)
        for r in range(world)
    ]
    gen = torch.Generator().manual_seed(99)
    res = torch.randn(tokens, hidden, generator=gen).to(dtype) if residual else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    scale = torch.tensor(0.02)
    group = dist.group.WORLD.group_name
    if fp8:
        q, norm, res_out = arfuse.ops.fused_allreduce_rmsnorm_fp8(
            xs[rank], res, weight, scale, 1e-6, group
        )
    else:
        (norm, res_out), q = (
            arfuse.ops.fused_allreduce_rmsnorm(xs[rank], res, weight, 1e-6, group),
            None,
        )
    total = sum(x.double() for x in xs) + (res.double() if residual else 0)
    ref = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    out = {
        "norm": rel_l2(norm, ref),
        "residual": rel_l2(res_out, total),
        "dtypes": [str(norm.dtype), str(res_out.dtype)],
    }
    if fp8:
        out["quant"] = rel_l2(q.float() * scale, ref.clamp(-448 * 0.02, 448 * 0.02))
        out["dtypes"].append(str(q.dtype))
    return out


def check_dtensor(num_layers: int = 2, tokens=(5, 12)) -> dict:
    """HF-style Llama layers sharded with DTensor ColwiseParallel/RowwiseParallel."""
    from torch.distributed.device_mesh import init_device_mesh

    from arfuse.examples.hf_llama import LlamaStack, parallelize

    torch.manual_seed(0)  # identical full weights on every rank before sharding
    stack = LlamaStack(
        num_layers=num_layers,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        dtype=torch.bfloat16,
    ).eval()
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    parallelize(stack, mesh)
    compiled, fusion, capture = _compile_capture(stack)

    def make_inputs(t):
        x = torch.randn(1, t, 64, generator=torch.Generator().manual_seed(t))
        return (x.to(torch.bfloat16),)

    errors, _ = _run_sizes(stack, compiled, make_inputs, tokens, token_dim=1)
    return _pass_counts(fusion) | {"errors": errors, "graphs": len(capture.graphs)}


def check_inductor_and_cache(cache_dir: str) -> dict:
    """Full Inductor compiles of the example with the pass, FX graph cache on.

    1. config A: compiled, fused, numerics vs eager;
    2. config B (norm forms off): must NOT be served A's cached graph;
    3. config A again (new pass object, same config): served from the cache, same outputs.
    """
    import os

    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    from arfuse.examples import build_tp_decoder

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{cache_dir}/rank{dist.get_rank()}"
    model, make_inputs = build_tp_decoder(num_layers=2, dtype=torch.bfloat16)
    steps = {}
    configs = {
        "A": arfuse.FusionConfig(),
        "B": arfuse.FusionConfig(norm=()),
        "A again": arfuse.FusionConfig(),
    }
    with (
        inductor_config.patch(
            fx_graph_cache=True, force_disable_caches=False, fx_graph_remote_cache=False
        ),
        torch.no_grad(),
    ):
        for step, config in configs.items():
            torch._dynamo.reset()
            counters.clear()
            fusion = arfuse.AllReduceFusionPass(config)
            compiled = torch.compile(model, options={"post_grad_custom_post_pass": fusion})
            outs = {}
            for t in (7, 64):
                (x,) = make_inputs(t)
                torch._dynamo.maybe_mark_dynamic(x, 0)
                got = compiled(x)
                outs[t] = (rel_l2(got.float(), model(x).float()), got.float())
            steps[step] = {
                "num_matches": fusion.num_matches,
                "hits": counters["inductor"]["fxgraph_cache_hit"],
                "misses": counters["inductor"]["fxgraph_cache_miss"],
                "errors": {t: e for t, (e, _) in outs.items()},
                "outputs": {t: o for t, (_, o) in outs.items()},
                "uuid": fusion.uuid().hex(),
            }
    return steps


def check_compile_ranges(splits, fused_max_tokens, tokens, dtype_name="fp32") -> dict:
    """arfuse.compile on the example decoder: captures, per-range compiles, numerics."""
    from torch._inductor import config as inductor_config

    from arfuse.examples import build_tp_decoder

    inductor_config.force_disable_caches = True  # pass counters must see every compile
    model, make_inputs = build_tp_decoder(num_layers=1, dtype=DTYPES[dtype_name])
    compiled = arfuse.compile(
        model, ranges=splits, fusion=arfuse.FusionConfig(fused_max_tokens=fused_max_tokens)
    )
    errors = {}
    try:
        with torch.no_grad():
            for t in tokens:
                (x,) = make_inputs(t)
                errors[t] = rel_l2(compiled(x).float(), model(x).float())
    except Exception as e:  # noqa: BLE001 - the test asserts on the message
        return {"error": f"{type(e).__name__}: {e}"}
    return {
        "captures": compiled.backend.captures,
        "compiles": compiled.backend.compiles,
        "ranges": [str(r) for r in compiled.ranges],
        "errors": errors,
    }


def check_dynamic_true(
    num_layers: int = 2, tokens=(5, 9, 33), fused_max_tokens: int | None = None
) -> dict:
    """The example decoder under torch.compile(dynamic=True) with the pass, full Inductor;
    `fused_max_tokens`: the pass's fusion limit (each chain a run-time branch on it).

    dynamic=True turns the model's float eps into a graph input (a 0-d tensor)."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    from arfuse.examples import build_tp_decoder

    inductor_config.force_disable_caches = True
    model, make_inputs = build_tp_decoder(num_layers=num_layers, hidden=64, intermediate=128)
    config = arfuse.FusionConfig(fused_max_tokens=fused_max_tokens)
    fusion = arfuse.AllReduceFusionPass(config)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=True, options={"post_grad_custom_post_pass": fusion})
    errors, calls = {}, {}
    with counting_op_calls() as counter, arfuse_warnings() as warned:
        for t in tokens:
            (x,) = make_inputs(t)
            before = counter.calls
            got = compiled(x)
            calls[t] = counter.calls - before
            errors[t] = rel_l2(got.float(), model(x).float())
    return {
        "calls": calls,
        "num_matches": fusion.num_matches,
        "matched": dict(fusion.matched),
        "skipped": fusion.skipped,
        "errors": errors,
        "frames": counters["stats"]["unique_graphs"],
        "warnings": warned,
    }


def check_custom_norm_default_eps() -> dict:
    """A norm op named in FusionConfig.norm_ops, called without eps (its schema default)."""

    def fn(x, residual, weight):
        h = funcol.all_reduce(x, "sum", dist.group.WORLD) + residual
        return torch.ops.arfuse_test.rms_norm(h, weight), h

    config = arfuse.FusionConfig(norm_ops=("arfuse_test::rms_norm",))
    compiled, fusion, capture = _compile_capture(fn, config)
    x, residual, weight = torch.randn(6, 64), torch.randn(6, 64), torch.randn(64)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    torch._dynamo.maybe_mark_dynamic(residual, 0)
    with torch.no_grad():
        got, want = compiled(x, residual, weight), fn(x, residual, weight)
    fused = [n for n in capture.graphs[0].graph.nodes if "fused_allreduce" in str(n.target)]
    return {
        "num_matches": fusion.num_matches,
        "matched": dict(fusion.matched),
        "eps": [n.args[3] for n in fused],
        "skipped": fusion.skipped,
        "errors": [rel_l2(g, w) for g, w in zip(got, want, strict=False)],
    }


def check_unrecognised_norm() -> dict:
    """allreduce + residual + an RMSNorm written with sum / hidden: not a form the matcher
    knows, so it must be recorded in `skipped` and warned about, not dropped silently."""

    def fn(x, residual, weight):
        h = funcol.all_reduce(x, "sum", dist.group.WORLD) + residual
        return weight * (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / 64 + 1e-6)), h

    return _skip_report(fn, torch.randn(6, 64), torch.randn(6, 64), torch.randn(64))


def check_release_workspaces_per_group() -> dict:
    """release_workspaces(group) forgets that group's workspaces only; the other group's stays
    registered and live, and every planning site stays cached (a site holds its workspace and
    checks `released` on use, so a release has nothing else to clear).

    Workspaces are built already released where they will be destroyed (no FlashInfer on CPU),
    so only the bookkeeping runs; the groups are real gloo groups."""
    from arfuse.kernels.flashinfer import plan, workspace
    from arfuse.policy import resolve

    policy = resolve("")
    groups = [dist.new_group([0, 1]), dist.new_group([0, 1])]
    saved, saved_sites = dict(workspace._workspaces), dict(plan._sites)
    try:
        workspace._workspaces.clear()
        plan._sites.clear()
        made = []
        for g in groups:
            ws = workspace.Workspace(
                g,
                g.group_name,
                dist.get_rank(g),
                2,
                64,
                torch.bfloat16,
                8,
                [],
                torch.zeros(1),
                torch.zeros(1),
                released=g is groups[0],
            )
            workspace._workspaces[ws.key] = ws
            key = (0, g.group_name, 64, torch.bfloat16, policy.digest())
            plan._sites[key] = plan.Site(None, policy, workspace=ws)
            made.append(ws)
        released = workspace.release_workspaces(groups[0])
        return {
            "released": released,
            "remaining": [k[0] == groups[1].group_name for k in workspace._workspaces],
            "other_live": not made[1].released,
            "sites_kept": [
                plan._sites[(0, g.group_name, 64, torch.bfloat16, policy.digest())].workspace is ws
                for g, ws in zip(groups, made, strict=True)
            ],
        }
    finally:
        workspace._workspaces.clear()
        workspace._workspaces.update(saved)
        plan._sites.clear()
        plan._sites.update(saved_sites)


# ---- Hugging Face models under DTensor TP (arfuse.examples.hf_models) -------------------------


def _hf_model(name: str, num_layers: int = 2, dtype=torch.float32):
    from torch.distributed.device_mesh import init_device_mesh

    from arfuse.examples import hf_models

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return hf_models.build(name, mesh, num_layers=num_layers, dtype=dtype)


def _hf_call(model, batch: int, seq: int):
    ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    return model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def check_hf_fused(name: str, dtype_name: str = "fp32", sizes=(5, 12)) -> dict:
    """A tiny HF model under DTensor TP, keyword call, at graph level: chains fused, numerics
    vs the unfused eager model."""
    model = _hf_model(name, dtype=DTYPES[dtype_name])
    compiled, fusion, capture = _compile_capture(model)
    errors = {}
    with torch.no_grad():
        for seq in sizes:
            ids = torch.randint(0, 128, (1, seq), generator=torch.Generator().manual_seed(seq))
            torch._dynamo.maybe_mark_dynamic(ids, 1)
            got = compiled(input_ids=ids, use_cache=False).last_hidden_state
            want = model(input_ids=ids, use_cache=False).last_hidden_state
            errors[seq] = rel_l2(got.float(), want.float())
    return _pass_counts(fusion) | {"errors": errors, "graphs": len(capture.graphs)}


def check_hf_compile(mode: str, calls=((1, 3), (1, 9), (1, 17))) -> dict:
    """arfuse.compile on a 1-layer tiny HF Llama under DTensor TP, called with keyword tensors
    (input_ids, attention_mask). mode: 'none' (dynamic=None), 'true' (dynamic=True),
    'mark' (the caller's own mark_dynamic on the seq dim)."""
    from torch._inductor import config as inductor_config

    inductor_config.force_disable_caches = True
    model = _hf_model("llama", num_layers=1)
    torch._dynamo.reset()
    kwargs = {"dynamic": True} if mode == "true" else {}
    compiled = arfuse.compile(
        model,
        ranges=[8],
        lazy=mode != "none",
        fusion=arfuse.FusionConfig(fused_max_tokens=8),
        **kwargs,
    )
    errors, captures = {}, []
    with arfuse_warnings() as warned:
        for batch, seq in calls:
            ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seq))
            mask = torch.ones(batch, seq, dtype=torch.long)
            if mode == "mark":
                torch._dynamo.mark_dynamic(ids, 1)
            got = compiled(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            want = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            errors[(batch, seq)] = rel_l2(got, want)
            captures.append(compiled.backend.captures)
    return {
        "captures": captures,
        "errors": errors,
        "token_arg": str(compiled.backend.token_arg),
        "compiles": [
            {
                k: c[k]
                for k in ("range", "tokens", "fused", "bounds_applied", "skipped", "guards_added")
            }
            | {"left": len(c["left_to_inductor"])}
            for c in compiled.backend.compiles
        ],
        "warnings": warned,
    }


def check_hf_allreduce_in_dynamo_graph() -> dict:
    """What ranges='auto' reads from Dynamo's graph of a DTensor-TP HF model: the allreduced
    activation (a DTensor redistributed from Partial) and its group."""
    from arfuse.ranges import _allreduced

    model = _hf_model("llama", num_layers=1)
    found = {}

    def backend(gm, example_inputs):
        val, group = _allreduced(gm)
        found.update(shape=list(val.shape[-1:]), dtype=str(val.dtype), group=group)
        return gm.forward

    torch._dynamo.reset()
    ids = torch.randint(0, 128, (1, 5))
    torch._dynamo.maybe_mark_dynamic(ids, 1)
    with torch.no_grad():
        torch.compile(model, backend=backend)(input_ids=ids, use_cache=False)
    found["world"] = dist.get_world_size(
        dist.distributed_c10d._resolve_process_group(found["group"])
    )
    return found


def check_dynamic_true_graph(tokens=(5, 9)) -> dict:
    """The same at graph level: the post-grad graph the pass sees under dynamic=True has eps
    as a 0-d tensor input, so the fused ops are the eps_tensor overloads."""
    from arfuse.examples import build_tp_decoder

    model, make_inputs = build_tp_decoder(num_layers=2, hidden=64, intermediate=128)
    fusion = CountingPass()
    capture = PostGradCapture(fusion)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=capture.backend, dynamic=True)
    errors = {}
    with torch.no_grad():
        for t in tokens:
            (x,) = make_inputs(t)
            errors[t] = rel_l2(compiled(x).float(), model(x).float())
    return {"after": [dict(c) for c in fusion.after], "errors": errors, "skipped": fusion.skipped}


# ---- transformers' own TP: DistributedConfig(tp_plan="auto") (arfuse.examples.hf_tp_plan) ---


def check_hf_tp_plan(root: str, names: tuple[str, ...], dtype_name: str = "fp32") -> dict:
    """Each model's tiny checkpoint (written by rank 0 under `root`) loaded with tp_plan="auto",
    compiled by Inductor with the pass, num_tokens dynamic, at 3 sizes: the pass's counts per
    graph, errors vs the unsharded eager model, and each rank's structured trace written to
    `root/traces/<name>/` (caches off, so every guard keeps its source line)."""
    from pathlib import Path

    from torch._inductor import config as inductor_config

    from arfuse.audit.live.capture import capture_trace
    from arfuse.examples import hf_tp_plan

    rank, results = dist.get_rank(), {}
    for name in names:
        path = Path(root) / name
        if rank == 0:
            hf_tp_plan.save_tiny(name, path)
        dist.barrier()
        log = Path(root, "traces", name, f"dedicated_log_torch_trace_rank_{rank}_0.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        fusion = CountingPass()
        with inductor_config.patch(force_disable_caches=True), capture_trace(log):
            run = hf_tp_plan.run(path, (5, 9, 17), DTYPES[dtype_name], fusion)
        results[name] = _pass_counts(fusion) | {"errors": run["errors"]}
        if rank == 0:  # progress for a run cut short by its time limit (the GPU machine)
            print(f"[hf_tp_plan] {name}: {dict(fusion.matched)} {run['errors']}", flush=True)
    return results


def check_input_buffer(case: str) -> dict:
    """Where the fused op's reduction buffer comes from after every post-grad pass. case:
    'dead' (a matmul output nothing else reads: the op gets that buffer), 'live' (the matmul
    output is read after the chain: the op gets a copy), 'graph_input' (the caller's tensor:
    a copy, the caller's tensor is left alone)."""

    def fn(a, b, residual, weight):
        x = a if case == "graph_input" else a @ b
        y = funcol.all_reduce(x, "sum", dist.group.WORLD)
        h = y + residual
        out = F.rms_norm(h, (h.shape[-1],), weight, 1e-6)
        return (out, h, x * 2) if case == "live" else (out, h)

    compiled, fusion, capture = _compile_capture(fn)
    gen = torch.Generator().manual_seed(7 + dist.get_rank())
    a = torch.randn(6, 64, generator=gen, dtype=torch.bfloat16)
    b = torch.randn(64, 64, generator=gen, dtype=torch.bfloat16)
    residual = torch.randn(6, 64, dtype=torch.bfloat16)
    weight = torch.randn(64, dtype=torch.bfloat16)
    a_keep = a.clone()
    with torch.no_grad():
        got, want = compiled(a, b, residual, weight), fn(a_keep.clone(), b, residual, weight)
    graph = capture.graphs[0].graph
    (op,) = [n for n in graph.nodes if str(n.target) in FUSED_TARGETS]
    source = op.args[0]
    return {
        "num_matches": fusion.num_matches,
        "op_input": str(source.target) if source.op == "call_function" else source.op,
        "copies": sum(str(n.target).startswith("aten.clone") for n in graph.nodes),
        "caller_input_unchanged": bool(torch.equal(a, a_keep)),
        "errors": [rel_l2(g.float(), w.float()) for g, w in zip(got, want, strict=True)],
    }


def check_token_branch(
    spec_name: str = "c10d/rms_norm/ar+res/none",
    dtype_name: str = "bf16",
    three_d: bool = False,
    producer_live: bool = False,
    norm_live: bool = False,
    limit: int = 16,
    tokens=(5, 33, 1),
    dynamic: bool = True,
    cudagraphs: bool = False,
    token_branch: bool = True,
) -> dict:
    """The bare pass with a fusion limit and a dynamic token count: the chain becomes
    cond(tokens <= limit, fused op, the chain as it was). The chain reads a producer's output
    (`a * 2`), which `producer_live` also returns. Reports op counts of the last dynamic graph
    and of its two branches, how often the op ran per size, and errors vs eager. `dynamic`
    False: every size compiles static; `cudagraphs`: as under mode="reduce-overhead"."""
    from torch._inductor import config as inductor_config

    spec = FusionSpec.parse(spec_name)
    base = CUSTOM_CONFIG if spec.allreduce == "custom" else arfuse.FusionConfig()
    config = arfuse.FusionConfig(
        **{**base.__dict__, "fused_max_tokens": limit, "token_branch": token_branch}
    )
    chain = make_chain(spec, 1e-6, three_d, residual_live=True, norm_live=norm_live)

    def fn(a, residual, weight, scale):
        x = a * 2
        outs = chain(x, residual, weight, scale)
        return (*outs, x + 1) if producer_live else outs

    compiled, fusion, capture = _compile_capture(fn, config)
    dtype = DTYPES[dtype_name]
    calls, errors, caller_unchanged = {}, {}, True
    with counting_op_calls() as counter, torch.no_grad():
        for t in tokens:
            a, residual, weight, scale = _inputs(t, 64, dtype, three_d, seed=t)
            if dynamic:
                torch._dynamo.maybe_mark_dynamic(a, 0)
                torch._dynamo.maybe_mark_dynamic(residual, 1 if three_d else 0)
            else:
                torch._dynamo.reset()
            a_keep = a.clone()
            before = counter.calls
            with inductor_config.patch({"triton.cudagraphs": cudagraphs}):
                got = compiled(a, residual, weight, scale)
            calls[t] = counter.calls - before
            caller_unchanged &= bool(torch.equal(a, a_keep))
            want = fn(a, residual, weight, scale)
            errors[t] = [
                rel_l2(_as_float(g, scale), _as_float(w, scale))
                for g, w in zip(got, want, strict=True)
            ]
    graphs = {}
    for i, gm in enumerate(capture.graphs):
        graphs[i] = {"main": dict(op_counts(gm))}
        for name, sub in gm.named_children():
            graphs[i][name.rsplit("_", 1)[0]] = dict(op_counts(sub))
    return _pass_counts(fusion) | {
        "graphs": graphs,
        "calls": calls,
        "errors": errors,
        "caller_unchanged": caller_unchanged,
        "by_range": fusion.by_range,
        "tol": FP8_TOL if spec.quant == "fp8" else TOL[dtype],
    }


def check_fp8_of_float32_norm(form: str = "rms_norm", limit: int | None = None) -> dict:
    """An FP8 quant of the norm's float32 product, with no round trip through bf16 between:
    the graph torch 2.11's Inductor leaves of `F.rms_norm(h) -> FP8 quant` (it drops
    f32 -> bf16 -> f32 casts), and what a model that quantizes the float32 value writes.
    form: 'rms_norm' (n * w) or 'gemma' (n * (1 + w)). Graph level; errors vs eager."""
    eps = 1e-6

    def fn(a, residual, weight, scale):
        h = funcol.all_reduce(a * 2, "sum", dist.group.WORLD) + residual
        hf = h.to(torch.float32)
        n = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
        w = weight.to(torch.float32)
        p = n * (1.0 + w) if form == "gemma" else n * w
        return (p / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), h

    compiled, fusion, capture = _compile_capture(fn, arfuse.FusionConfig(fused_max_tokens=limit))
    errors = {}
    with torch.no_grad():
        for t in (5, 33):
            a, residual, weight, scale = _inputs(t, 64, torch.bfloat16, False, seed=t)
            torch._dynamo.maybe_mark_dynamic(a, 0)
            torch._dynamo.maybe_mark_dynamic(residual, 0)
            got, want = compiled(a, residual, weight, scale), fn(a, residual, weight, scale)
            errors[t] = [
                rel_l2(_as_float(g, scale), _as_float(w_, scale))
                for g, w_ in zip(got, want, strict=True)
            ]
    return _pass_counts(fusion) | {"errors": errors, "graphs": len(capture.graphs)}


def check_hf_branch(name: str, limit: int = 8, sizes=(5, 12, 3)) -> dict:
    """A tiny HF model under DTensor TP compiled by Inductor with the bare pass and a fusion
    limit, called as a user calls it (input_ids, attention_mask): every chain a branch on the
    token count; how often the op ran per size, errors vs eager, frames compiled."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    inductor_config.force_disable_caches = True
    model = _hf_model(name)
    fusion = arfuse.AllReduceFusionPass(arfuse.FusionConfig(fused_max_tokens=limit))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, options={"post_grad_custom_post_pass": fusion})
    errors, calls = {}, {}
    with counting_op_calls() as counter, torch.no_grad():
        for seq in sizes:
            ids = torch.randint(0, 128, (1, seq), generator=torch.Generator().manual_seed(seq))
            mask = torch.ones(1, seq, dtype=torch.long)
            torch._dynamo.maybe_mark_dynamic(ids, 1)
            torch._dynamo.maybe_mark_dynamic(mask, 1)
            before = counter.calls
            got = compiled(input_ids=ids, attention_mask=mask, use_cache=False)
            calls[seq] = counter.calls - before
            want = model(input_ids=ids, attention_mask=mask, use_cache=False)
            errors[seq] = rel_l2(got.last_hidden_state.float(), want.last_hidden_state.float())
    return {
        "matched": dict(fusion.matched),
        "skipped": fusion.skipped,
        "calls": calls,
        "errors": errors,
        "frames": counters["stats"]["unique_graphs"],
    }
