"""Record multi-rank TORCH_TRACE logs, one folder per kind of cross-rank divergence (not a test;
CPU, gloo, Inductor; a few minutes per case):

    python tests/audit/tools/capture_divergence_fixtures.py OUT [CASE,...]

writes OUT/ranks-<case>-torch-<version>/dedicated_log_torch_trace_rank_N_*.log.gz (torch's own
file names) and `tlparse.txt`: what tlparse 0.4.3 `--all-ranks-html` reports on that folder
(`tlparse_oracle.py`), the reference the offline audit is compared with. Each rank is its own
process (this file with `--rank`); nothing here imports arfuse, so any torch since 2.5 can run
it (the artifacts the cross-rank checks read exist since 2.9; older torch logs fewer).

Cases (what differs between the ranks, each what a real job does wrong):

    identical   4 ranks, the same code and sizes: no divergence
    schedule    3 ranks; ranks 0 and 1 compile 6 all_reduces, rank 2 compiles 4 and runs the
                other 2 eagerly (the collective schedules differ; the job itself still matches)
    recompiles  2 ranks; rank 1 compiles with dynamic=False: 4 compiles against 2
    cache       2 ranks; rank 0 finds its graphs in a warm Inductor cache, rank 1 compiles cold
    meta        2 ranks; rank 1's second input is float64 (the tensor metadata differs)
    nowait      2 ranks; rank 1's compiled code starts an all_reduce it never waits for (the
                caller waits eagerly)
    order       2 ranks; rank 1 runs the two compiled graphs in the other order
    unmarked    2 ranks of a tiny HF Llama under DTensor tensor parallelism; rank 1 leaves the
                token dim unmarked: its first compile is static, its second recompiles dynamic
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WORLD = {
    "identical": 4,
    "schedule": 3,
    "recompiles": 2,
    "cache": 2,
    "meta": 2,
    "nowait": 2,
    "order": 2,
    "unmarked": 2,
}
SIZES = [16, 33]
HIDDEN = 32


def _rank(case: str, rank: int, world: int, port: int) -> None:
    import contextlib

    import torch
    import torch._inductor.debug
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    inductor = torch._inductor.config
    if hasattr(inductor, "log_tlparse"):
        inductor.log_tlparse = True  # the runtime + tensor-meta artifact tlparse compares
    group = dist.group.WORLD
    w = torch.randn(HIDDEN, HIDDEN)

    def ar(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x, "sum", group)

    def block(x: torch.Tensor, n_collectives: int) -> torch.Tensor:
        for _ in range(n_collectives):
            x = torch.relu(ar(x @ w))
        return x

    def mark(x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return x

    record = getattr(torch._inductor.debug, "record_and_log_graph_execution_order", None)
    order = record() if record is not None else contextlib.nullcontext()
    with torch.no_grad():
        if case in ("identical", "cache"):
            f = torch.compile(lambda x: block(x, 2))
            with order:
                for n in SIZES:
                    f(mark(torch.randn(n, HIDDEN)))
        elif case == "schedule":
            ops = 6 if rank < 2 else 4
            f = torch.compile(lambda x: block(x, ops))
            with order:
                for n in SIZES:
                    y = f(mark(torch.randn(n, HIDDEN)))
                    for _ in range(6 - ops):  # eager: the job's collectives still pair up
                        dist.all_reduce(y)
        elif case == "recompiles":
            f = torch.compile(lambda x: block(x, 1), dynamic=False if rank == 1 else None)
            with order:
                for n in (16, 33, 48, 64):
                    f(torch.randn(n, HIDDEN))
        elif case == "meta":
            dtype = torch.float64 if rank == 1 else torch.float32
            f = torch.compile(lambda x, y: (block(x, 1), (y * 2).sum(-1)))
            with order:
                for n in SIZES:
                    f(mark(torch.randn(n, HIDDEN)), torch.randn(8, HIDDEN, dtype=dtype))
        elif case == "nowait":
            c10d = torch.ops._c10d_functional
            if rank == 1:
                f = torch.compile(lambda x: c10d.all_reduce(x @ w, "sum", group.group_name))
            else:
                f = torch.compile(lambda x: block(x, 1))
            with order:
                for n in SIZES:
                    y = f(mark(torch.randn(n, HIDDEN)))
                    if rank == 1:
                        c10d.wait_tensor(y)
        elif case == "order":
            f = torch.compile(lambda x: block(x, 1))
            g = torch.compile(lambda x: block(x, 1) * 2)
            x = torch.randn(16, HIDDEN)
            with order:  # torch names a graph in the order only if it compiled in there
                f(x), g(x)  # compile both in the same order: same compile ids on every rank
                for fn in (f, g) if rank == 0 else (g, f):
                    fn(x)
        elif case == "unmarked":
            model = _tp_llama(torch)
            f = torch.compile(model)
            with order:
                for n in SIZES:
                    ids = torch.randint(0, 128, (1, n))
                    if rank == 0:
                        torch._dynamo.maybe_mark_dynamic(ids, 1)
                    f(input_ids=ids)
        else:
            raise SystemExit(f"unknown case {case!r}; known: {', '.join(WORLD)}")
    dist.barrier()
    dist.destroy_process_group()


def _tp_llama(torch):
    """A 1-layer HF Llama (random weights, nothing downloaded) sharded over the default group
    the way torchtitan and HF's tp_plan shard it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaModel(config).eval()
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for layer in model.layers:
        parallelize_module(layer, mesh, plan)
    return model


def _launch(case: str, trace: Path, caches: list[Path], port: int) -> None:
    world = WORLD[case]
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            TORCH_TRACE=str(trace),
            TORCHINDUCTOR_CACHE_DIR=str(caches[rank]),
            TORCHINDUCTOR_COMPILE_THREADS="1",
        )
        if case != "cache":
            env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
        cmd = [sys.executable, __file__, "--rank", case, str(rank), str(world), str(port)]
        procs.append(subprocess.Popen(cmd, env=env))
    for p in procs:
        try:
            p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise SystemExit(f"{case}: ranks hung; killed") from None
    bad = [r for r, p in enumerate(procs) if p.returncode]
    if bad:
        raise SystemExit(f"{case}: rank(s) {bad} failed")


def main() -> None:
    if sys.argv[1:2] == ["--rank"]:
        case, rank, world, port = sys.argv[2], *map(int, sys.argv[3:6])
        _rank(case, rank, world, port)
        return
    import torch

    out = Path(sys.argv[1])
    cases = sys.argv[2].split(",") if len(sys.argv) > 2 else list(WORLD)
    version = torch.__version__.split("+")[0]
    for i, case in enumerate(cases):
        dest = out / f"ranks-{case}-torch-{version}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace"
            caches = [Path(tmp) / f"cache{r}" for r in range(WORLD[case])]
            if case == "cache":  # warm rank 0's cache with a first run, then record the second
                _launch(case, Path(tmp) / "warmup", caches, 29600 + 2 * i)
                shutil.rmtree(caches[1])
            _launch(case, trace, caches, 29601 + 2 * i)
            for log in sorted(trace.glob("*.log")):
                with log.open("rb") as src, gzip.open(dest / f"{log.name}.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
        oracle = Path(__file__).with_name("tlparse_oracle.py")
        subprocess.run([sys.executable, str(oracle), str(dest)], check=False, timeout=300)
        print(f"{dest}: {sorted(p.name for p in dest.iterdir())}", flush=True)


if __name__ == "__main__":
    main()
