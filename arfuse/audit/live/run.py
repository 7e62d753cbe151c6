"""The parent side of `arfuse audit`: start one worker process per target, show its phases,
collect `run.json` and the TORCH_TRACE logs, and leave nothing behind.

    result = run_target("model.py:build", AuditOptions(sizes=(16, 2048, 2049)))
    result.run          # RunInfo: sizes, token sources, how each call ended
    result.traces       # {rank: Trace} of the audited ranks
    result.trace_files  # {rank: Path to the .log}
    result.close()      # remove the temporary directory now (else: at exit)

The parent imports no torch: the worker (`arfuse.audit.live.worker`) does, once. Where the run
writes, and how it is cleaned up on every way out, is `arfuse.audit.live.workspace`; if this process
is killed outright (SIGKILL), the worker notices, kills its ranks and removes the temporary
directory itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.live.target import split_spec
from arfuse.audit.live.workspace import Workspace, kill, watch
from arfuse.audit.options import AuditOptions
from arfuse.audit.paths import rel
from arfuse.audit.trace.reader import trace_files
from arfuse.audit.trace.records import Trace
from arfuse.audit.trace.run_info import RunInfo

#: how much of the worker's output a crash report quotes (read from the end of the log only:
#: a target may print hundreds of MB)
TAIL_CHARS = 3000


class TargetError(ValueError):
    """The target could not be loaded or run; the message says what to fix."""


@dataclass
class RunResult:
    out_dir: Path
    run: RunInfo
    trace_files: dict[int, Path]
    traces: dict[int, Trace] = field(default_factory=dict)
    workspace: Workspace | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove the temporary directory (kept directories stay) and release the lock."""
        if self.workspace is not None:
            self.workspace.close()


def _rank_of(path: Path) -> int:
    m = re.search(r"rank_(\d+)", path.name)
    return int(m.group(1)) if m else 0


def run_target(
    spec: str, options: AuditOptions | None = None, display: str | None = None
) -> RunResult:
    """Run `spec` in a worker process as `options` say (sizes, strict, backend, timeout, keep,
    dtrace, progress); `display` names the target on the progress line."""
    opts = options or AuditOptions()
    try:
        split_spec(spec)  # a typo'd target fails here, before any process starts
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    try:
        workspace = Workspace(opts.keep)
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    config = {  # what the worker reads (arfuse.audit.live.worker)
        "spec": spec,
        "out": str(workspace.path),
        "sizes": list(opts.sizes) if opts.sizes else None,
        "strict": opts.strict,
        "backend": opts.backend,
        "timeout": opts.timeout,
        "display": display,
        "parent": os.getpid(),
        "temporary": workspace.temporary,
    }
    try:
        return _run(workspace, config, dtrace=opts.dtrace, progress=opts.progress)
    except BaseException:
        workspace.close()
        raise


def _check_finished(workspace: Workspace, spec: str, returncode: int | None) -> None:
    """A TargetError saying why the worker did not finish, if it did not."""
    out, log_path = workspace.path, workspace.path / "worker.log"
    fatal = out / "fatal.json"
    if fatal.exists():
        info = json.loads(fatal.read_text())
        where = (
            "rerun with --keep DIR and read DIR/worker.log"
            if workspace.temporary
            else str(log_path)
        )
        at = f"{rel(info['where'], Path.cwd())}: " if info.get("where") else ""
        raise TargetError(f"{spec}: {at}{info['message']}\n(full traceback: {where})")
    if returncode != 0 or not (out / "run.json").exists():
        raise TargetError(
            f"{spec}: the audit worker exited with code {returncode} "
            f"before finishing (a crash in the target or torch). Last output:"
            f"\n{_tail(log_path)}"
        )


def _run(
    workspace: Workspace, config: dict[str, Any], *, dtrace: bool, progress: bool
) -> RunResult:
    out = workspace.path
    spec, timeout, display = config["spec"], config["timeout"], config["display"]
    trace_dir = out / "trace"
    trace_dir.mkdir(exist_ok=True)
    for old in [
        *trace_dir.glob("*.log"),
        out / "run.json",
        out / "fatal.json",
        out / "progress.jsonl",
    ]:
        old.unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    env = dict(os.environ)
    env.pop("TORCH_TRACE", None)
    env.pop("TORCH_DTRACE", None)
    env["TORCH_DTRACE" if dtrace else "TORCH_TRACE"] = str(trace_dir)
    env.setdefault("OMP_NUM_THREADS", "1")
    log_path = out / "worker.log"
    with _Display(progress, display or spec) as show:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "arfuse.audit.live.worker", str(out / "config.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            watch(proc)
            try:
                _wait(proc, out / "progress.jsonl", timeout, show, spec)
            except BaseException:
                kill(proc)
                raise
            kill(proc)  # ranks the worker left behind, if any
        _check_finished(workspace, spec, proc.returncode)
        files = {_rank_of(p): p for p in trace_files(trace_dir)}
        if not files:
            raise TargetError(
                f"{spec}: no trace was written to {trace_dir}; did the target "
                f"compile anything? (it must return the model, not a compiled "
                f"model)"
            )
        run = RunInfo.load(out / "run.json")
        show.phase("reading trace")
        from arfuse.audit.trace.reader import parse_file

        traces = {r: parse_file(p) for r, p in files.items() if r in run.ranks}
    return RunResult(out, run, files, traces, workspace)


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    """The last `chars` characters of a log, reading only its end."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 4 * chars))  # 4 bytes: the longest UTF-8 character
        return fh.read().decode(errors="replace")[-chars:]


def _wait(
    proc: subprocess.Popen, progress_file: Path, timeout: float, show: _Display, spec: str
) -> None:
    deadline = time.monotonic() + timeout
    offset = 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            kill(proc)
            raise TargetError(
                f"{spec}: the audit did not finish within {timeout:.0f} s; "
                f"raise --timeout or sweep fewer --sizes"
            )
        offset = _read_progress(progress_file, offset, show)
        time.sleep(0.05)
    _read_progress(progress_file, offset, show)


def _read_progress(path: Path, offset: int, show: _Display) -> int:
    """Show the phases the worker appended since `offset`; returns the new offset."""
    if not show.enabled:
        return offset
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        try:
            p = json.loads(line)
        except ValueError:
            continue
        if p.get("phase") == "compiling":
            show.phase(f"compiling (num_tokens={p['num_tokens']})")
        elif p.get("phase") == "sweeping":
            show.phase(
                f"sweeping {p['done']}/{p['total']} (num_tokens={p['num_tokens']}, "
                f"{p['seconds']:.1f} s)"
            )
    return offset + end


class _Display:
    """The phases on stderr: "importing", "compiling", "sweeping 3/8", "reading trace", with
    the time spent so far - a live line on a terminal, one plain line per phase otherwise (a
    CI log shows what the job is doing while it runs, and no escape codes)."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()

    def __enter__(self) -> _Display:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]audit[/] {task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._text("importing"), total=None)
        elif self.enabled:
            self.phase("importing")
        return self

    def _text(self, phase: str) -> str:
        return f"{phase}  [dim]{self.label}[/]"  # the phase first: a narrow terminal cuts the end

    def phase(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=self._text(text))
        elif self.enabled:
            elapsed = time.monotonic() - self._t0
            print(f"arfuse audit: {text} [{elapsed:.1f} s] {self.label}", file=sys.stderr)
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
