"""Where a live audit writes, and how nothing is left behind.

    workspace = Workspace(keep)      # keep=None: a fresh /tmp/arfuse-audit-* directory
    proc = subprocess.Popen(..., start_new_session=True); watch(proc)
    ...; kill(proc)                  # the worker and every rank it spawned
    workspace.close()                # removes a temporary directory, releases a --keep lock

A temporary directory is removed on every way out of this process: `close()`, an exception,
exit, Ctrl-C (KeyboardInterrupt unwinds to atexit), SIGTERM and SIGHUP (a handler, installed
unless the program has its own, kills the watched workers, removes the directories, then dies
of the same signal). A `--keep` directory is locked (flock) while a run uses it, so a second
audit sharing it fails at once instead of deleting the first one's trace.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".arfuse-audit.lock"

_LIVE: set[subprocess.Popen] = set()
_TEMP_DIRS: set[Path] = set()
_cleanup_installed = False


def watch(proc: subprocess.Popen) -> None:
    """Kill this worker (its whole process group) if this process exits or is signalled."""
    _LIVE.add(proc)


def kill(proc: subprocess.Popen, reap: bool = True) -> None:
    """Kill the worker and every rank it spawned (one process group) and reap the worker."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if reap:
        proc.wait()
    else:  # in a signal handler: Popen.wait may deadlock on the lock the interrupted poll holds
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
    _LIVE.discard(proc)


def _cleanup(reap: bool = True) -> None:
    for proc in list(_LIVE):
        kill(proc, reap=reap)
    for d in list(_TEMP_DIRS):
        _remove(d)
        _TEMP_DIRS.discard(d)


def _remove(path: Path) -> None:
    # a rank killed a moment ago may still finish creating a file: try again briefly
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05)


def _on_signal(signum: int, frame: Any) -> None:
    # the default action of SIGTERM/SIGHUP kills without unwinding or atexit: clean up, then
    # die of the same signal, as the caller expects
    _cleanup(reap=False)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    atexit.register(_cleanup)
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


class Workspace:
    """Where one run writes: a fresh temporary directory, or the user's --keep directory (locked
    for the run; the lock is released by `close()` or when this process exits). Raises
    ValueError saying what to fix when the directory cannot be made or is in use."""

    def __init__(self, keep: str | Path | None) -> None:
        _install_cleanup()
        self._lock_fd: int | None = None
        self.temporary = keep is None
        try:
            if keep is None:
                self.path = Path(tempfile.mkdtemp(prefix="arfuse-audit-"))
                _TEMP_DIRS.add(self.path)
                return
            self.path = Path(keep)
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.path)
        except OSError as exc:
            where = f"--keep {keep}" if keep is not None else "a temporary directory"
            raise ValueError(
                f"cannot write the audit's run directory ({where}): {exc}; pass "
                f"a writable --keep DIR"
            ) from None

    def close(self) -> None:
        if self.temporary:
            _remove(self.path)
            _TEMP_DIRS.discard(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(keep: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # no flock here (Windows): unlocked, as before
        return None
    fd = os.open(keep / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise ValueError(
            f"--keep {keep} is in use by another running audit"
            f"{f' (pid {holder})' if holder else ''}; wait for it to finish or "
            f"pass another --keep directory"
        ) from None
    except OSError:  # a filesystem without locks (some network mounts): unlocked, as before
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
