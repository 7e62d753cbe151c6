"""Where TORCH_TRACE logs come from: a directory (one log per rank), one `.log` / `.log.gz`, a
tarball of either, or a `--keep` directory of `arfuse audit` (run.json + trace/).

    sources, run_json = discover("trace_dir/")      # every log found, and run.json if any
    chosen, notes = pick_per_rank(sources)          # one log per rank, a note per log left out
    traces = parse_sources(chosen, policy=policy)   # streamed, constant memory in the log size

A last line cut short by a crash is a note, not an error.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from arfuse.audit.trace.reader import open_trace, parse_stream
from arfuse.audit.trace.records import Trace
from arfuse.audit.trace.run_info import RunInfo
from arfuse.audit.trace.slim import DEFAULT, Policy

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_LOG = re.compile(r"\.log(\.gz)?$")
_RANK = re.compile(r"rank_(\d+)")
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass
class TraceSource:
    """One log to parse: where it comes from, its rank, and how to open it."""

    name: str
    rank: int | None
    size: int | None
    mtime: float
    open: Callable[[], IO[bytes]]


def _rank_of(name: str) -> int | None:
    m = _RANK.search(Path(name).name)
    return int(m.group(1)) if m else None


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_TAR_SUFFIXES)


def _file_source(p: Path) -> TraceSource:
    st = p.stat()
    # progress counts decompressed bytes: a .gz file's own size is no total for them
    size = None if p.name.endswith(".gz") else st.st_size
    return TraceSource(str(p), _rank_of(p.name), size, st.st_mtime, partial(open_trace, p))


_RUN_JSON_MAX = 64 << 20  # arfuse writes a few KB; a bigger one is not ours


def _bounded_read(fh: IO[bytes], where: str) -> bytes:
    with fh:
        data = fh.read(_RUN_JSON_MAX + 1)
    if len(data) > _RUN_JSON_MAX:
        raise ValueError(
            f"{where}: over {_RUN_JSON_MAX:,} bytes, not the run.json "
            f"`arfuse audit --keep DIR` writes; remove it to audit the logs alone"
        )
    return data


def read_run_json(where: str, text: bytes | str) -> RunInfo:
    """A `--keep` directory's run.json as a `RunInfo`; ValueError naming the file when it is
    not valid JSON or not the object `arfuse audit --keep` writes."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"{where}: not valid JSON ({exc}); it should be the run.json that "
            f"`arfuse audit --keep DIR` writes - remove it to audit the logs "
            f"alone"
        ) from None
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        run = RunInfo.from_json(data)
        for name, kind in (
            ("sizes", list),
            ("token_sources", list),
            ("ranks", list),
            ("token_dims", dict),
            ("notes", list),
        ):
            if not isinstance(getattr(run, name), kind):
                raise TypeError(f"{name!r} is not a JSON {kind.__name__}")
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{where}: not the run.json `arfuse audit --keep DIR` writes ({exc}); "
            f"remove it to audit the logs alone"
        ) from None
    return run


def _tar_sources(path: Path) -> tuple[list[TraceSource], RunInfo | None]:
    import gzip

    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open while its members are read
        members = tar.getmembers()
    except _TAR_ERRORS as exc:
        raise ValueError(f"{path}: not a readable tarball ({exc})") from None
    run_json = None
    out = []
    for m in members:
        if not m.isfile():
            continue
        if Path(m.name).name == "run.json":
            fh = tar.extractfile(m)
            where = f"{path}:{m.name}"
            run_json = read_run_json(where, _bounded_read(fh, where) if fh else b"")
            continue
        if not _LOG.search(m.name):
            continue

        def opener(m: tarfile.TarInfo = m) -> IO[bytes]:
            fh = tar.extractfile(m)
            assert fh is not None  # isfile() above
            return cast(IO[bytes], gzip.GzipFile(fileobj=fh)) if m.name.endswith(".gz") else fh

        out.append(
            TraceSource(f"{path}:{m.name}", _rank_of(m.name), m.size, float(m.mtime), opener)
        )
    return out, run_json


def discover(path: str | Path) -> tuple[list[TraceSource], RunInfo | None]:
    """The logs under `path` and the run.json of a `--keep` directory (None if there is none)."""
    path = Path(path)
    if is_tarball(path):
        sources, run_json = _tar_sources(path)
    elif path.is_dir():
        run_file = path / "run.json"
        run_json = (
            read_run_json(str(run_file), _bounded_read(run_file.open("rb"), str(run_file)))
            if run_file.is_file()
            else None
        )
        top = path / "trace" if run_json is not None and (path / "trace").is_dir() else path
        files = sorted(
            p
            for p in top.glob("*")
            if p.is_file() and _LOG.search(p.name) and p.name != "worker.log"
        )
        if not files:  # a --keep directory (trace/) or a tree of per-job directories
            files = sorted(p for p in path.rglob("*") if p.is_file() and _LOG.search(p.name))
        sources = [_file_source(p) for p in files]
    elif path.is_file():
        sources, run_json = [_file_source(path)], None
    else:
        raise ValueError(f"{path}: no such file or directory")
    if not sources:
        raise ValueError(
            f"{path}: no TORCH_TRACE .log files found (expected "
            f"dedicated_log_torch_trace_rank_N_*.log, a .log file or a tarball of "
            f"them)"
        )
    return sources, run_json


def pick_per_rank(sources: list[TraceSource]) -> tuple[dict[int, TraceSource], list[str]]:
    """One log per rank (the newest when a directory holds several runs), with a note for
    every log left out. A log without a rank in its name is rank 0 (a single-process job);
    next to rank-named logs it is another process of the job (vLLM's API server, a launcher)
    and is left out."""
    by_rank: dict[int, list[TraceSource]] = defaultdict(list)
    notes = []
    if any(s.rank is not None for s in sources):
        for s in sources:
            if s.rank is None:
                notes.append(f"{s.name} left out: no rank in its name, next to per-rank logs")
        sources = [s for s in sources if s.rank is not None]
    for s in sources:
        by_rank[s.rank if s.rank is not None else 0].append(s)
    chosen = {}
    for rank, items in sorted(by_rank.items()):
        items.sort(key=lambda s: (s.mtime, s.name))
        chosen[rank] = items[-1]
        for s in items[:-1]:
            notes.append(
                f"rank {rank}: {s.name} left out (several logs for one rank; the "
                f"newest, {Path(chosen[rank].name).name}, is audited)"
            )
    return chosen, notes


def _progress_bar(show: bool, sources: dict[int, TraceSource]):
    if not show:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    sizes = [s.size for s in sources.values()]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    bar = Progress(
        TextColumn("[bold]parse[/] {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    return bar, total


def _open(s: TraceSource) -> IO[bytes]:
    try:
        return s.open()
    except _TAR_ERRORS as exc:
        raise ValueError(f"{s.name}: cannot be opened ({exc})") from None


def _advance(bar: Any, task: Any, base: int, n: int) -> None:
    bar.update(task, completed=base + n)


def parse_sources(
    sources: dict[int, TraceSource], progress: bool = False, policy: Policy | None = None
) -> dict[int, Trace]:
    """Stream-parse one log per rank (a progress bar over all of them when `progress`),
    keeping what `policy` says (every rule's needs by default)."""
    if policy is None:
        policy = DEFAULT  # what every rule reads (their `needs` are slim's read sets)
    made = _progress_bar(progress, sources)
    traces: dict[int, Trace] = {}
    if made is None:
        for rank, s in sources.items():
            with _open(s) as fh:
                traces[rank] = parse_stream(fh, s.name, policy=policy)
        return traces
    bar, total = made
    with bar:
        task = bar.add_task("", total=total)
        base = 0
        for rank, s in sources.items():
            bar.update(task, description=f"rank {rank}: {Path(s.name).name}")
            with _open(s) as fh:
                traces[rank] = parse_stream(
                    fh,
                    s.name,
                    policy=policy,
                    progress=partial(_advance, bar, task, base),
                )
            base += s.size or traces[rank].bytes_read
            bar.update(task, completed=base)
    return traces


# -- a plain .log for tlparse -------------------------------------------------------------------


def plain_log(source: str, tmp: Path) -> Path:
    """`source` as an uncompressed .log file tlparse can read: the file itself when it is one;
    a `.gz` or a tarball member (`x.tar.gz:inner.log[.gz]`) streamed to `tmp` (never whole in
    memory)."""
    import gzip

    if ":" in source and not Path(source).exists():  # a tarball member
        tar_path, member = source.split(":", 1)
        out = tmp / Path(member).name.removesuffix(".gz")
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                fh = tar.extractfile(member)
                if fh is None:
                    raise ValueError(f"{source}: not a file in the tarball")
                src = cast(IO[bytes], gzip.GzipFile(fileobj=fh)) if member.endswith(".gz") else fh
                with out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (*_TAR_ERRORS, KeyError) as exc:
            raise ValueError(f"{source}: cannot be extracted ({exc})") from None
        return out
    p = Path(source)
    with p.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return p
    out = tmp / p.name.removesuffix(".gz")
    try:
        with open_trace(p) as fh, out.open("wb") as dst:
            shutil.copyfileobj(fh, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{source}: cannot be decompressed ({exc})") from None
    return out
