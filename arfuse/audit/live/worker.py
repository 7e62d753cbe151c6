"""The child side of `arfuse audit`: load the target, compile, sweep, log; nothing else.

    python -m arfuse.audit.live.worker CONFIG.json

runs in a fresh process (TORCH_TRACE already in its environment), so the user's compile state
and a crashing target cannot affect the caller. It writes into the config's `out` directory:
`run.json` (a `RunInfo`), `progress.jsonl` (rank 0's phases for the progress line: "compiling"
before the first call, then one "sweeping" line per finished call), and on a target error
`fatal.json` with a message that says what to fix (exit code 3).
Multi-rank targets run the sweep on every rank of a `SpawnedGroup` (gloo).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from arfuse.audit.trace.records import CALL_ARTIFACT
from arfuse.audit.trace.run_info import CallResult, RunInfo

EXIT_TARGET_ERROR = 3
EXIT_PARENT_GONE = 4


def _audit_config() -> contextlib.ExitStack:
    """Caches that replay guards (FX graph, AOTAutograd, PGO profiles) off; the C++ kernel
    cache stays on - it holds no guards and saves most of a cold Inductor compile. Patched,
    not set: `assert_dynamic` runs in the user's process and must leave its config alone."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(
        inductor_config.patch(fx_graph_cache=False, fx_graph_remote_cache=False, compile_threads=1)
    )
    stack.enter_context(functorch_config.patch(enable_autograd_cache=False))
    pgo = {
        n: False
        for n in ("automatic_dynamic_local_pgo", "automatic_dynamic_remote_pgo")
        if hasattr(dynamo_config, n)
    }
    if pgo:
        stack.enter_context(dynamo_config.patch(pgo))
    return stack


def _log_call(index: int, num_tokens: int) -> None:
    from torch._logging import trace_structured

    trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": CALL_ARTIFACT, "encoding": "json"},
        payload_fn=lambda: json.dumps({"index": index, "num_tokens": num_tokens}),
        expect_trace_id=False,
    )


def _progress(path: Path | None, **fields: Any) -> None:
    if path is not None:
        with path.open("a") as fh:
            fh.write(json.dumps(fields) + "\n")


def _as_args(inputs: Any) -> tuple:
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def sweep(config: dict[str, Any], rank: int = 0) -> dict[str, Any]:
    """Load the target and sweep it. Runs on one rank (or the only process)."""
    from arfuse.audit.live import target as targets

    return sweep_target(targets.load(config["spec"]), config, rank)


def _compiles(target: Any, rank: int) -> bool:
    """Whether this rank compiles; the others run eager and never import the compiler."""
    audited = rank == 0 or target.audit_ranks == "all"
    return audited or target.compile_ranks == "all"


def _vec_isa_probe() -> Any:
    """`cpu_vec_isa.valid_vec_isa_list` with everything it imports already imported, so it can
    run on a thread that imports nothing. An import racing the main thread's (torch.compile
    imports AOTAutograd meanwhile) can be handed a half-initialised package: CI once failed
    with "cannot import name 'autograd_cache'". A test checks the probe leaves sys.modules as
    it found it, cold cache included."""
    import torch._inductor.codecache  # noqa: F401
    import torch._inductor.cpp_builder  # noqa: F401
    import torch.utils._filelock  # noqa: F401
    import torch.utils.cpp_extension  # noqa: F401 - the probe's build step; pulls in setuptools
    from torch._inductor import cpu_vec_isa

    return cpu_vec_isa.valid_vec_isa_list


def _warm_vec_isa() -> threading.Thread | None:
    """Inductor's first CPU compile probes which vector ISAs work - it builds and loads a test
    kernel per ISA in subprocesses (about 2 s with a warm cache, 9 s cold, on 2 cores) - and
    caches the answer for the process. Start that beside the model build and the trace instead
    of inside the compile. Only a head start: on any failure Inductor probes as before."""
    try:
        import torch

        if torch.cuda.is_available():
            return None
        probe = _vec_isa_probe()
    except Exception:  # noqa: BLE001 - an optimisation only
        return None

    def run() -> None:
        with contextlib.suppress(Exception):
            probe()

    thread = threading.Thread(target=run, name="arfuse-vec-isa-probe", daemon=True)
    thread.start()
    return thread


def sweep_target(target: Any, config: dict[str, Any], rank: int = 0) -> dict[str, Any]:
    """Compile the target and feed it every size in `config["sizes"]`."""
    compiles = _compiles(target, rank)
    warming = _warm_vec_isa() if compiles else None
    with _audit_config() if compiles else contextlib.nullcontext():
        return _sweep(target.materialize(), config, rank, warming)


def _inputs(target: Any, n: int) -> tuple:
    try:
        return _as_args(target.make_inputs(n))
    except Exception as exc:  # noqa: BLE001 - a target error, reported with its fix
        raise ValueError(f"make_inputs({n}) raised {type(exc).__name__}: {exc}") from exc


def _call(model: Any, args: tuple, result: dict[str, Any]) -> dict[str, Any]:
    """One call of the compiled model; an exception is recorded, not raised."""
    import torch

    try:
        with torch.no_grad():
            model(*args)
    except Exception as exc:  # noqa: BLE001 - recorded; ConstraintViolationError is a finding
        result.update(ok=False, error_type=type(exc).__name__, error=f"{exc}"[:2000])
    return result


def _sweep(
    target: Any, config: dict[str, Any], rank: int, warming: threading.Thread | None = None
) -> dict[str, Any]:
    import torch

    from arfuse.audit.live import target as targets

    strict = config.get("strict") or target.strict
    compile_here = _compiles(target, rank)
    kwargs = dict(target.compile_kwargs)
    if config.get("backend"):
        kwargs["backend"] = config["backend"]
    model = torch.compile(target.model, **kwargs) if compile_here else target.model
    mark = None
    if compile_here:
        mark = torch._dynamo.mark_dynamic if strict else torch._dynamo.maybe_mark_dynamic
    progress = Path(config["out"], "progress.jsonl") if rank == 0 and config.get("out") else None
    calls: list[dict[str, Any]] = []
    sources: list[str] = []
    dims_by_name: dict[str, list[int]] = {}
    sizes: list[int] = config["sizes"]
    for i, n in enumerate(sizes):
        args = _inputs(target, n)
        if not sources:
            sources, dims_by_name = targets.token_sources(target, args)
            if not sources:
                raise ValueError(
                    "make_inputs returned no tensor with a token dim; return the "
                    "model's positional args, or set AuditTarget.token_dims"
                )
        for j, a in enumerate(args):
            if mark is not None and isinstance(a, torch.Tensor):
                for d in targets.token_dims_of(target, j, a.dim()):
                    mark(a, d)
        _log_call(i, n)
        if i == 0 and compile_here:
            _progress(progress, phase="compiling", num_tokens=n)
            if warming is not None:
                warming.join()  # one probe, not two racing
        t0 = time.perf_counter()
        result = _call(model, args, {"index": i, "num_tokens": n, "ok": True, "rank": rank})
        calls.append(result)
        _progress(
            progress,
            phase="sweeping",
            done=i + 1,
            total=len(sizes),
            num_tokens=n,
            seconds=round(time.perf_counter() - t0, 3),
            ok=result["ok"],
        )
    return {
        "calls": calls,
        "token_sources": sources,
        "token_dims": dims_by_name,
        "backend": str(kwargs.get("backend", "inductor")),
        "strict": bool(strict),
    }


def _rank_sweep(config: dict[str, Any]) -> dict[str, Any]:
    import torch.distributed as dist

    return sweep(config, dist.get_rank())


def _follow_parent(parent: int, out: Path, temporary: bool) -> None:
    """If the `arfuse` process dies without cleaning up (SIGKILL, OOM), stop too: kill the
    ranks, remove the temporary run directory, exit. Nothing else would end this session."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        import multiprocessing
        import shutil

        for child in multiprocessing.active_children():
            child.kill()
        for _ in range(20):
            if temporary:
                shutil.rmtree(out, ignore_errors=True)
            if not out.exists() or not temporary:
                break
            time.sleep(0.05)
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="arfuse-follow-parent", daemon=True).start()


def _fatal(out: Path, exc: Exception) -> None:
    """fatal.json (the message the parent shows, with the user's file:line) and the traceback
    in worker.log, which the message points at."""
    traceback.print_exc()
    sys.stderr.flush()
    message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    info = {"message": message, "where": _user_line(exc), "traceback": traceback.format_exc()}
    (out / "fatal.json").write_text(json.dumps(info))


def _user_line(exc: BaseException) -> str:
    """`file:line` of the innermost frame of the user's code in the exception's traceback (its
    causes included): where an import or build() failed, not where arfuse re-raised it."""
    from arfuse.audit.judge.attribution import is_framework

    where = ""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for frame in traceback.extract_tb(e.__traceback__):
            if not frame.filename.startswith("<") and not is_framework(frame.filename):
                where = f"{frame.filename}:{frame.lineno}"
        e = e.__cause__ or e.__context__
    return where


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    out = Path(config["out"])
    if config.get("parent"):
        _follow_parent(int(config["parent"]), out, bool(config.get("temporary")))
    t0 = time.perf_counter()
    try:
        from arfuse.audit.live import sizes as sweeps
        from arfuse.audit.live import target as targets

        target = targets.load(config["spec"])
        config["sizes"] = sweeps.sweep(target, config.get("sizes"))
        if target.world_size is None:
            import torch

            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            results = [sweep(config, 0)]
            ranks = [0]
        else:
            from arfuse.process_group import RankError, SpawnedGroup

            with SpawnedGroup(
                world_size=target.world_size,
                backend="gloo",
                timeout=float(config["timeout"]),
            ) as group:
                try:
                    results = group.run(_rank_sweep, config)
                except RankError as exc:
                    raise ValueError(f"the target failed on a rank:\n{exc}") from None
            ranks = list(range(target.world_size)) if target.audit_ranks == "all" else [0]
    except Exception as exc:  # noqa: BLE001 - every target error becomes a message + exit 3
        _fatal(out, exc)
        return EXIT_TARGET_ERROR
    first = results[0]
    run = RunInfo(
        target=config.get("display") or config["spec"],
        sizes=config["sizes"],
        token_sources=first["token_sources"],
        token_dims=first["token_dims"],
        calls=[CallResult.from_json(c) for r in results for c in r["calls"]],
        world_size=target.world_size or 1,
        ranks=ranks,
        backend=first["backend"],
        strict=first["strict"],
        seconds=round(time.perf_counter() - t0, 2),
        min_tokens=target.min_tokens,
        max_tokens=target.max_tokens,
    )
    (out / "run.json").write_text(json.dumps(run.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
