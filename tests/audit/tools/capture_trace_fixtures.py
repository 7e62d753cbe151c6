"""Capture small TORCH_TRACE logs for the parser's format fixtures.

Run once per torch version (`python tests/audit/tools/capture_trace_fixtures.py OUT_DIR`); it
writes `OUT_DIR/torch-<version>-<case>.log`. CPU only, no GPU needed. Each case runs in its own
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


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        _case(sys.argv[2])
        return
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    version = torch.__version__.split("+")[0]
    for case in CASES:
        tmp = tempfile.mkdtemp()
        env = dict(os.environ, TORCH_TRACE=tmp, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
        subprocess.run([sys.executable, __file__, "--case", case], env=env, timeout=200,
                       check=False)
        for i, log in enumerate(sorted(glob.glob(os.path.join(tmp, "*.log")))):
            shutil.copy(log, os.path.join(out, f"torch-{version}-{case}{'-' + str(i) if i else ''}.log"))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
