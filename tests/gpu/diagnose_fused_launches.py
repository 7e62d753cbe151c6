"""Check every fused launch inside compiled graphs (GPU machine, not a test):

    source .device/setup.sh && python3 -m tests.gpu.diagnose_fused_launches --world 4 [--out F.json]

Runs the example decoder (1 layer, hidden 4096, bf16) with the fused kernel forced to two-shot
in several settings and records, for every fused launch, the op's inputs (shape, strides,
offset, alignment) and its outputs' error against a float32 allreduce+add+RMSNorm of the same
inputs (cloned right after the launch, so nothing else runs between the kernel and the copy).
When a compiled model's output is wrong but every launch is right, the fault is in the code
around the op, not in the kernel.

    ranges        arfuse.compile(ranges="auto")
    ranges-nopdl  the same, launched without PDL
    ranges-sync   the same, a device synchronize before and after every fused launch
    bare          torch.compile + the pass (no ranges)
    eager         the fused op called eagerly: matmul -> fused -> matmul -> fused, no syncs

It found the stale-bounds bug of `arfuse.compile` (bench/results/
2026-11-27_ranges_stale_bounds_h200_tp4.md): every launch within bf16 rounding, the ranged
model's output off by a relative L2 of 1.4 in the range compiled after a narrowed one.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

import arfuse
from arfuse.kernels import FusedArgs, FusedResult
from arfuse.kernels import flashinfer as fb
from arfuse.kernels.flashinfer import kernel
from tests.gpu.gpu_checks import SAFE_ENV, example_decoder, rel_l2

HIDDEN = 4096
MODES = ("ranges", "ranges-nopdl", "ranges-sync", "bare", "eager")


def _meta(t):
    if t is None:
        return None
    return {
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "offset": t.storage_offset(),
        "ptr_mod_256": t.data_ptr() % 256,
        "dtype": str(t.dtype),
    }


class _Recorder:
    """Wraps kernel.launch: clones what the kernel read and wrote, right after it ran."""

    def __init__(self, sync: bool) -> None:
        self.sync, self.rows, self.original = sync, [], kernel.launch

    def __enter__(self):
        def launch(strategy, ws, args: FusedArgs, out: FusedResult) -> None:
            if self.sync:
                torch.cuda.synchronize()
            self.original(strategy, ws, args, out)
            self.rows.append(
                {
                    "strategy": strategy,
                    "tokens": args.tokens,
                    "input": _meta(args.input),
                    "residual": _meta(args.residual),
                    "weight": _meta(args.weight),
                    "eps": args.eps,
                    "weight_offset": args.weight_offset,
                    "_saved": (
                        args.input.clone(),
                        None if args.residual is None else args.residual.clone(),
                        args.weight.clone(),
                        out.norm.clone(),
                        out.residual.clone(),
                    ),
                }
            )
            if self.sync:
                torch.cuda.synchronize()

        kernel.launch = launch
        return self

    def __exit__(self, *exc):
        kernel.launch = self.original

    def take(self) -> list[dict]:
        """Errors of every recorded launch vs float32 (collective: same order on all ranks)."""
        out = []
        for row in self.rows:
            x, res, w, norm, resid = row.pop("_saved")
            xs = x.float()
            dist.all_reduce(xs)
            r = xs if res is None else xs + res.float()
            n = (
                r
                * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + row["eps"])
                * (w.float() + row["weight_offset"])
            )
            row["norm_rel_l2"] = rel_l2(norm.float(), n)
            row["resid_rel_l2"] = rel_l2(resid.float(), r)
            out.append(row)
        self.rows = []
        return out


def _model():
    model, make_inputs = example_decoder(1, HIDDEN, 2048, 32, torch.bfloat16)
    return model, (lambda n: make_inputs(n)[0])


def _eager_chain(T: int, weights) -> torch.Tensor:
    w1, w2, gamma = weights
    g = torch.Generator(device="cuda").manual_seed(T)
    x = torch.randn(T, HIDDEN, device="cuda", generator=g).to(torch.bfloat16)
    residual = torch.randn(T, HIDDEN, device="cuda", generator=g).to(torch.bfloat16)
    name = dist.group.WORLD.group_name
    n1, r1 = arfuse.ops.fused_allreduce_rmsnorm(x @ w1, residual, gamma, 1e-6, name)
    n2, r2 = arfuse.ops.fused_allreduce_rmsnorm(n1 @ w2, r1, gamma, 1e-6, name)
    return n2


def run_mode(mode: str, tokens: list[int]) -> dict:
    torch._dynamo.reset()
    fb.settings.twoshot = True
    fb.settings.pdl = mode != "ranges-nopdl"
    result: dict = {"mode": mode, "calls": {}}
    with (
        torch.no_grad(),
        torch._inductor.config.patch(force_disable_caches=True),
        fb.forced_strategy("twoshot"),
        _Recorder(sync=mode == "ranges-sync") as rec,
    ):
        if mode == "eager":
            torch.manual_seed(0)
            weights = [
                (torch.randn(HIDDEN, HIDDEN, device="cuda") / 64).to(torch.bfloat16)
                for _ in range(2)
            ] + [torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)]
            for t in weights:
                dist.broadcast(t, src=0)
            for n in tokens:
                _eager_chain(n, weights)
                torch.cuda.synchronize()
                result["calls"][n] = {"launches": rec.take()}
        else:
            model, make_input = _model()
            if mode == "bare":
                compiled = torch.compile(
                    model, options={"post_grad_custom_post_pass": arfuse.AllReduceFusionPass()}
                )
            else:
                compiled = arfuse.compile(model, ranges="auto")
            first = make_input(2)
            torch._dynamo.mark_dynamic(first, 0)
            compiled(first)
            torch.cuda.synchronize()
            rec.take()
            for n in tokens:
                x = make_input(n)
                got = compiled(x)
                torch.cuda.synchronize()
                launches = rec.take()
                result["calls"][n] = {
                    "rel_l2_vs_eager": rel_l2(got.float(), model(x).float()),
                    "launches": launches,
                }
            if mode.startswith("ranges"):
                result["ranges"] = [str(r) for r in compiled.ranges]
                result["compiles"] = [
                    {k: c[k] for k in ("range", "fused", "bounds_applied")}
                    for c in compiled.backend.compiles
                ]
    fb.release_workspaces(dist.group.WORLD)
    return result


def main() -> None:
    from arfuse.testing import SpawnedGroup

    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--tokens", default="129,256,257,300,512,1025")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available() or torch.cuda.device_count() < args.world:
        sys.exit(
            f"needs {args.world} CUDA GPUs (this machine has "
            f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}) and "
            "FlashInfer: run it on the GPU machine after `source .device/setup.sh`"
        )
    tokens = [int(t) for t in args.tokens.split(",")]
    report = {"world": args.world, "modes": []}
    with SpawnedGroup(world_size=args.world, backend="nccl", timeout=300, env=SAFE_ENV) as group:
        for mode in args.modes.split(","):
            try:
                r = group.run(run_mode, mode, tokens, timeout=300)[0]
            except Exception as e:  # noqa: BLE001 - report and go on with the next mode
                r = {"mode": mode, "error": f"{type(e).__name__}: {str(e)[-2000:]}"}
            report["modes"].append(r)
            print(f"== TP{args.world} {mode}", file=sys.stderr)
            for n, call in r.get("calls", {}).items():
                worst = max(
                    (max(x["norm_rel_l2"], x["resid_rel_l2"]) for x in call["launches"]),
                    default=float("nan"),
                )
                print(
                    f"  T={n}: out vs eager {call.get('rel_l2_vs_eager', float('nan')):.3g}; "
                    f"{len(call['launches'])} launches "
                    f"{[x['strategy'] for x in call['launches']]}, worst op err {worst:.3g}",
                    file=sys.stderr,
                )
            if "error" in r:
                print("  " + r["error"][-1500:], file=sys.stderr)
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
