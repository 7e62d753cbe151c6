"""The parent side of `arfuse audit`: start a fresh worker process per target, show progress,
collect `run.json` and the TORCH_TRACE logs.

    result = run_target("model.py:build", sizes=[16, 2048, 2049])
    result.run          # RunInfo: sizes, token sources, how each call ended
    result.trace_files  # {rank: Path to the .log}
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from arfuse.audit.context import RunInfo
from arfuse.audit.trace import trace_files


class TargetError(ValueError):
    """The target could not be loaded or run; the message says what to fix."""


@dataclass
class RunResult:
    out_dir: Path
    run: RunInfo
    trace_files: dict[int, Path]


def _rank_of(path: Path) -> int:
    m = re.search(r"rank_(\d+)", path.name)
    return int(m.group(1)) if m else 0


def run_target(spec: str, *, sizes: list[int] | None = None, out_dir: str | Path | None = None,
               strict: bool = False, dtrace: bool = False, backend: str | None = None,
               timeout: float = 600.0, progress: bool = False,
               display: str | None = None) -> RunResult:
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="arfuse-audit-"))
    out.mkdir(parents=True, exist_ok=True)
    trace_dir = out / "trace"
    trace_dir.mkdir(exist_ok=True)
    for old in [*trace_dir.glob("*.log"), out / "run.json", out / "fatal.json",
                out / "progress.jsonl"]:
        old.unlink(missing_ok=True)
    config = {"spec": spec, "out": str(out), "sizes": sizes, "strict": strict,
              "backend": backend, "timeout": timeout, "display": display}
    (out / "config.json").write_text(json.dumps(config))
    env = dict(os.environ)
    env.pop("TORCH_TRACE", None)
    env.pop("TORCH_DTRACE", None)
    env["TORCH_DTRACE" if dtrace else "TORCH_TRACE"] = str(trace_dir)
    env.setdefault("OMP_NUM_THREADS", "1")
    log_path = out / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "arfuse.audit.worker",
                                 str(out / "config.json")], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        _wait(proc, out / "progress.jsonl", timeout, progress, spec)
    fatal = out / "fatal.json"
    if fatal.exists():
        info = json.loads(fatal.read_text())
        raise TargetError(f"{spec}: {info['message']}\n(full traceback: {log_path})")
    if proc.returncode != 0 or not (out / "run.json").exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise TargetError(f"{spec}: the audit worker exited with code {proc.returncode} before "
                          f"finishing (a crash in the target or torch). Last output:\n{tail}")
    files = {_rank_of(p): p for p in trace_files(trace_dir)}
    if not files:
        raise TargetError(f"{spec}: no trace was written to {trace_dir}; did the target compile "
                          f"anything? (it must return the model, not a compiled model)")
    return RunResult(out, RunInfo.load(out / "run.json"), files)


def _wait(proc: subprocess.Popen, progress_file: Path, timeout: float, show: bool,
          spec: str) -> None:
    deadline = time.monotonic() + timeout
    bar = task = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn

        bar = Progress(TextColumn("[bold]audit[/] {task.description}"), BarColumn(),
                       MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(f"{spec}: starting", total=None)
    seen = 0
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TargetError(f"{spec}: the audit did not finish within {timeout:.0f} s; "
                                  f"raise --timeout or sweep fewer --sizes")
            if bar is not None and progress_file.exists():
                lines = progress_file.read_text().splitlines()
                for line in lines[seen:]:
                    try:
                        p = json.loads(line)
                    except ValueError:
                        continue
                    bar.update(task, total=p["total"], completed=p["done"],
                               description=f"{spec}: num_tokens={p['num_tokens']} "
                                           f"({p['seconds']:.1f} s)")
                seen = len(lines)
            time.sleep(0.1)
    finally:
        if bar is not None:
            bar.stop()
