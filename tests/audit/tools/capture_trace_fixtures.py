"""Capture small TORCH_TRACE logs for the parser's format fixtures.

Run once per torch version (`python tests/audit/tools/capture_trace_fixtures.py OUT_DIR [CASE,..]`);
it writes `OUT_DIR/torch-<version>-<case>.log.gz`. CPU only, no GPU needed. Each case runs in its own
process so every log starts with a fresh string table.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import torch

CASES = ["branch", "eq_strict", "fake", "funcol_inductor"]


def _case(name: str) -> None:
    torch.set_num_threads(1)

    @torch.library.custom_op("capfix::myop", mutates_args=())
    def myop(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @myop.register_fake
    def _(x):
        if x.shape[0] > 1024:
            return torch.empty_like(x)
        return torch.empty_like(x)

    class Branch(torch.nn.Module):
        def forward(self, x):
            n = x.shape[0]
            y = x * 2 if n <= 2048 else x + 1
            return y.view(-1, 2, x.shape[1] // 2) if n % 4 == 0 else y

    class Eq(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[0] == 16 else x + 1

    class Fake(torch.nn.Module):
        def forward(self, x):
            return myop(x) + 1

    mark = torch._dynamo.maybe_mark_dynamic
    backend = "aot_eager"
    sizes = [16, 1, 2047, 2048, 2049]
    if name == "branch":
        model = Branch()
    elif name == "eq_strict":
        model, mark = Eq(), torch._dynamo.mark_dynamic
    elif name == "fake":
        model = Fake()
    else:
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0,
                                world_size=1)

        class TP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(64, 64))
                self.g = torch.nn.Parameter(torch.ones(64))

            def forward(self, x, res):
                y = funcol.all_reduce(x @ self.w, "sum", dist.group.WORLD)
                h = y + res
                var = h.float().pow(2).mean(-1, keepdim=True)
                return h * torch.rsqrt(var + 1e-6) * self.g, h

        model, backend, sizes = TP(), "inductor", [16, 33]
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for n in sizes:
            args = [torch.randn(n, 64)] + ([torch.randn(n, 64)] if name == "funcol_inductor" else [])
            for a in args:
                mark(a, 0)
            try:
                compiled(*args)
            except Exception as e:  # noqa: BLE001 - the ConstraintViolationError case
                print(f"{name}: {type(e).__name__} at {n}", file=sys.stderr)


def _more(name: str) -> None:
    """The cases of issue 22: logs a verdict must not be drawn from, and record forms."""
    torch.set_num_threads(1)

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(32, 32))

        def forward(self, x):
            return torch.relu(x @ self.w) + 1

    class Pinned(torch.nn.Module):
        def forward(self, a):
            assert a.shape[0] == 3
            return a * 2

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.nonzero().shape[0] > 2:
                return x + 1
            return x - 1

    class Restart(torch.nn.Module):
        def forward(self, x):
            y = torch.relu(x) * 2
            torch._dynamo.graph_break()
            return y + x.shape[0]

    x = torch.randn(16, 32)
    if name == "static":  # dynamic=False: two compiles, not one symbol
        compiled = torch.compile(Mlp(), dynamic=False)
        for n in (16, 32):
            compiled(torch.randn(n, 32))
    elif name == "export_pinned":
        Dim = torch.export.Dim
        dim = Dim.AUTO if hasattr(Dim, "AUTO") else Dim("n")
        try:
            torch.export.export(Pinned(), (torch.randn(3, 4),), dynamic_shapes=({0: dim},))
        except Exception as e:  # noqa: BLE001 - older torch refuses the specialization
            print(f"{name}: {type(e).__name__}", file=sys.stderr)
    elif name == "export_static":  # nothing dynamic, no frame compiled by Dynamo
        torch.export.export(Mlp(), (x,))
    elif name == "export_dde":
        try:
            torch.export.export(DataDependent(), (x,))
        except Exception as e:  # noqa: BLE001 - the data-dependent error is the point
            print(f"{name}: {type(e).__name__}", file=sys.stderr)
    elif name == "failed":
        def branchy(x):
            if x.sum() > 0:
                return x + 1
            return x - 1

        def broken_backend(gm, inputs):
            raise RuntimeError("capture_trace_fixtures: this backend always fails")

        for fn, kwargs in ((branchy, {"fullgraph": True}), (torch.sin, {"backend": broken_backend})):
            try:
                torch.compile(fn, **kwargs)(x)
            except Exception as e:  # noqa: BLE001 - the failed compile is the point
                print(f"{name}: {type(e).__name__}", file=sys.stderr)
    elif name == "restart":
        compiled = torch.compile(Restart())
        for n in (16, 33):
            a = torch.randn(n, 32)
            torch._dynamo.maybe_mark_dynamic(a, 0)
            compiled(a)
    elif name == "cache":  # run twice on one cache dir: misses, then hits; the pass bypasses
        from torch._inductor.custom_graph_pass import CustomGraphPass

        class NoUuid(CustomGraphPass):
            def __call__(self, graph):
                return None

            def uuid(self):
                return None

        torch.compile(Mlp())(x)
        opts = {"post_grad_custom_post_pass": NoUuid()}
        torch.compile(lambda t: torch.cos(t) + 2, options=opts)(x)
    else:
        raise SystemExit(f"unknown case {name!r}")


MORE = ["static", "export_pinned", "export_static", "export_dde", "failed", "restart", "cache"]


def _record(case: str, out: str, version: str, cache: str) -> None:
    import gzip

    tmp = tempfile.mkdtemp()
    env = dict(os.environ, TORCH_TRACE=tmp, TORCHINDUCTOR_CACHE_DIR=cache)
    if not case.startswith("cache"):
        env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    arg = case.split("-")[0]
    subprocess.run([sys.executable, __file__, "--case", arg], env=env, timeout=600, check=False)
    for i, log in enumerate(sorted(glob.glob(os.path.join(tmp, "*.log")))):
        name = f"torch-{version}-{case}{'-' + str(i) if i else ''}.log.gz"
        with open(log, "rb") as src, gzip.open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    """`OUT [CASE,...]`: every case by default; `cache` records `cache-cold` then `cache-warm`
    (the same program twice on one Inductor cache)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        (_case if sys.argv[2] in CASES else _more)(sys.argv[2])
        return
    out = sys.argv[1]
    cases = sys.argv[2].split(",") if len(sys.argv) > 2 else CASES + MORE
    os.makedirs(out, exist_ok=True)
    version = torch.__version__.split("+")[0]
    cache = tempfile.mkdtemp()
    for case in cases:
        for run in ("cache-cold", "cache-warm") if case == "cache" else (case,):
            _record(run, out, version, cache)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
