"""The live audit's runner (arfuse/audit/live/run.py) as a hostile or unlucky user meets
it: a typo'd target, a target that floods its output, two audits sharing a --keep directory,
and an audit stopped by Ctrl-C or SIGTERM. Nothing may be left in /tmp, nothing read whole, nothing
clobbered. Targets are tiny (aot_eager, or failing before torch is imported)."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from arfuse.audit.live.run import TargetError, _Display, _read_progress, run_target
from arfuse.audit.options import AuditOptions
from arfuse.cli import main

pytestmark = pytest.mark.timeout(300)

BLOCKING = """
import os, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build():
    import torch

    class Model(torch.nn.Module):
        def forward(self, x):
            return x + 1

    def make_inputs(n):
        (HERE / "ready").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while not (HERE / "go").exists():
            if time.time() > deadline:
                raise RuntimeError("never told to go")
            time.sleep(0.05)
        return (torch.randn(n, 4),)

    return Model(), make_inputs, {"backend": "aot_eager"}
"""

FLOOD = """
import os, sys


def build():
    chunk = "x" * (1 << 20)
    for _ in range(64):
        sys.stdout.write(chunk)
    sys.stdout.write("\\nthe last words before the crash\\n")
    sys.stdout.flush()
    os._exit(7)
"""


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("arfuse-audit-*"))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _audit(args: list[str], tmp: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-m", "arfuse", "audit", *args, "--no-progress"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet (an orphan's reaper may be slow)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_missing_target_file_fails_before_any_worker_or_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["audit", "models/nope.py:build", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "target file 'models/nope.py' does not exist" in res.output
    assert time.monotonic() - t0 < 5
    assert _leftovers(tmp_path) == []  # the run directory comes before the worker: none made


def test_an_unwritable_keep_dir_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "t.py").write_text("def build(): pass\n")
    res = CliRunner().invoke(
        main,
        [
            "audit",
            f"{tmp_path}/t.py:build",
            "--keep",
            str(tmp_path / "file" / "k"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2, res.output
    assert f"cannot write the audit's run directory (--keep {tmp_path}/file/k)" in res.output


def test_a_flooding_target_is_read_from_its_tail_and_its_directory_removed(tmp_path, monkeypatch):
    target = tmp_path / "flood.py"
    target.write_text(FLOOD)
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    tracemalloc.start()
    try:
        with pytest.raises(TargetError) as err:
            run_target(f"{target}:build", AuditOptions(sizes=(2,), timeout=120))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "exited with code 7" in message
    assert message.rstrip().endswith("the last words before the crash")
    assert len(message) < 4000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB while the log is 64 MB"
    assert _leftovers(runs) == []


def test_two_audits_sharing_a_keep_dir_do_not_clobber(tmp_path):
    (tmp_path / "blocking.py").write_text(BLOCKING)
    keep = tmp_path / "keep"
    first = _audit(
        ["blocking.py:build", "--sizes", "2,16", "--keep", str(keep)], tmp_path, tmp_path
    )
    try:
        _wait_for(tmp_path / "ready", first)
        second = _audit(
            ["blocking.py:build", "--sizes", "2", "--keep", str(keep)], tmp_path, tmp_path
        )
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2, (out, err)
        assert f"--keep {keep} is in use by another running audit (pid {first.pid})" in err
        (tmp_path / "go").write_text("")
        out, err = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert "swept num_tokens = 2, 16" in out
    assert len(list((keep / "trace").glob("*.log"))) == 1
    assert (keep / "run.json").is_file()


@contextlib.contextmanager
def _blocked_audit(tmp_path):
    """A live audit whose worker blocks inside the target: (audit process, its runs directory,
    the worker's pid); killed on the way out."""
    (tmp_path / "blocking.py").write_text(BLOCKING)
    runs = tmp_path / "runs"
    runs.mkdir()
    audit = _audit(["blocking.py:build", "--sizes", "2"], runs, tmp_path)
    try:
        _wait_for(tmp_path / "ready", audit)
        yield audit, runs, int((tmp_path / "ready").read_text())
    finally:
        audit.kill()


@pytest.mark.parametrize("sig,exit_code", [(signal.SIGINT, 1), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_stopped_audit_kills_its_worker_and_removes_its_directory(tmp_path, sig, exit_code):
    with _blocked_audit(tmp_path) as (audit, runs, worker):
        assert len(_leftovers(runs)) == 1
        audit.send_signal(sig)
        audit.communicate(timeout=60)
    assert audit.returncode == exit_code
    assert _leftovers(runs) == []
    assert _gone(worker)


def test_a_killed_audit_leaves_no_worker_and_no_directory(tmp_path):
    # SIGKILL leaves the arfuse process no chance to clean up: its worker notices and does it
    with _blocked_audit(tmp_path) as (audit, runs, worker):
        audit.kill()
        audit.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while (_leftovers(runs) or not _gone(worker)) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _leftovers(runs) == []
    assert _gone(worker)


class _Recorder(_Display):
    def __init__(self) -> None:
        super().__init__(True, "t")
        self.seen: list[str] = []

    def phase(self, text: str) -> None:
        self.seen.append(text)


def test_progress_shows_phases_and_waits_for_whole_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    show = _Recorder()
    assert _read_progress(path, 0, show) == 0  # not written yet
    path.write_text(
        '{"phase": "compiling", "num_tokens": 2}\n'
        '{"phase": "sweeping", "done": 1, "total": 8, "num_tokens": 2, '
        '"seconds": 6.5, "ok": true}\n{"phase": "sweep'
    )
    offset = _read_progress(path, 0, show)
    assert show.seen == ["compiling (num_tokens=2)", "sweeping 1/8 (num_tokens=2, 6.5 s)"]
    with path.open("a") as fh:
        fh.write('ing", "done": 3, "total": 8, "num_tokens": 255, "seconds": 0.01, "ok": true}\n')
    _read_progress(path, offset, show)
    assert show.seen[-1] == "sweeping 3/8 (num_tokens=255, 0.0 s)"


PROBE_IMPORTS = """
import sys
from arfuse.audit.live.worker import _vec_isa_probe

probe = _vec_isa_probe()
modules, finders = set(sys.modules), list(sys.meta_path)
assert probe(), "no vector ISA found"
print(sorted(set(sys.modules) - modules), sys.meta_path == finders)
"""


def test_the_vec_isa_probe_imports_nothing_on_its_thread(tmp_path):
    """The probe runs on a thread beside torch.compile's own imports. setuptools' import puts a
    finder at the head of sys.meta_path; racing the main thread's lookup it once made
    `import torch._functorch.aot_autograd` fail in CI. Cold kernel cache: the probe's longest
    path (it builds the ISA test kernels)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE_IMPORTS], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True"
