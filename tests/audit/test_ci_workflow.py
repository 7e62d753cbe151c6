"""arfuse in a team's repository, as its CI runs it: the real `arfuse` command in a temporary
repository with a `[tool.arfuse]` table, inline suppressions, a baseline that went stale, a
target that fails to import, piped output and `--trace -`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

pytestmark = pytest.mark.timeout(600)
DATA = Path(__file__).resolve().parent / "data"
SCHEMA = (
    Path(__file__).resolve().parents[2] / "arfuse" / "audit" / "report" / "findings.schema.json"
)

LAYER = '''"""A layer with a threshold (suppressed), a sliding window (baselined) and a suppression
that suppresses nothing."""
import torch

from arfuse.audit import AuditTarget


class Layer(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] <= 2048:  # arfuse: ignore[ARF102, ARF104] - the kernel switch, on purpose
            x = x * 2
        y = x[-4095:]
        return y + 1  # arfuse: ignore[ARF101]


def build():
    return AuditTarget(Layer(), lambda n: (torch.randn(n, 8),), {"backend": "aot_eager"},
                       sizes=[16, 2049])
'''

BROKEN = """import torch

import not_a_module_anywhere  # the user's line


def build():
    pass
"""

PYPROJECT = """[project]
name = "team-model"

[tool.arfuse]
targets = ["models/layer.py:build"]
baseline = "audit/baseline.json"
max-tokens = 8192
"""


def _line(path: Path, text: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if text in t)


def arfuse(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The installed command, piped (stdout and stderr are not terminals), as in a CI job."""
    return subprocess.run(
        [sys.executable, "-m", "arfuse", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "layer.py").write_text(LAYER)
    (tmp_path / "models" / "broken.py").write_text(BROKEN)
    (tmp_path / "audit").mkdir()
    layer = tmp_path / "models" / "layer.py"
    window = _line(layer, "y = x[-4095:]")
    # accepted long ago, when the line still had a comment and other spacing; plus an entry
    # for a line that was fixed since (stale)
    entries = [
        {
            "code": "ARF102",
            "path": "models/layer.py",
            "line": window - 3,
            "source": "y = x[ -4095 : ]   # the window",
            "target": "models/layer.py:build",
        },
        {
            "code": "ARF103",
            "path": "models/layer.py",
            "line": 30,
            "source": "x = x.view(-1, 4)",
            "target": "models/layer.py:build",
        },
    ]
    (tmp_path / "audit" / "baseline.json").write_text(
        json.dumps({"version": 1, "findings": entries}, indent=2) + "\n"
    )
    return tmp_path


def test_a_team_repository_end_to_end(repo: Path):
    layer = repo / "models" / "layer.py"
    out = repo / "out"
    res = arfuse(
        "audit",
        "--keep",
        f"{out}/keep",
        "--also",
        f"json={out}/a.json",
        "--also",
        f"sarif={out}/a.sarif",
        "--also",
        f"github={out}/a.gh",
        cwd=repo / "models",  # config found upward
    )
    stderr = res.stderr.decode()
    assert res.returncode == 1, res.stdout.decode() + stderr
    # piped: plain phase lines on stderr while it runs, no progress bar escapes
    for phase in ("importing", "compiling (num_tokens=16)", "sweeping 2/2", "reading trace"):
        assert phase in stderr, stderr
    assert "\x1b[" not in stderr
    report = json.loads((out / "a.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["version"] == 1
    got = sorted(
        (f["code"], f["line"], f["baselined"], f["suppressed"] is not None)
        for f in report["findings"]
    )
    threshold = _line(layer, "if x.shape[0] <= 2048")
    window = _line(layer, "y = x[-4095:]")
    unused = _line(layer, "return y + 1")
    assert (
        got
        == [
            ("ARF102", threshold, False, True),
            ("ARF102", window, True, False),  # comment and spacing ignored: still the same line
            ("ARF104", threshold, False, True),
            ("ARF901", unused, False, False),  # ARF101 suppressed nothing there
            ("ARF902", 3 + 9, False, False),  # the stale entry, at its line in the baseline
        ]
        or got
    )
    by = {f["code"]: f for f in report["findings"]}
    assert by["ARF902"]["path"] == str(repo / "audit" / "baseline.json")  # not under models/
    assert "ARF103" in by["ARF902"]["message"]
    assert report["summary"]["suppressed"] == 2 and report["summary"]["baselined"] == 1
    last = res.stdout.decode().rstrip().splitlines()[-1]
    assert last.startswith("FAIL: 2 new finding(s)"), last
    gh = (out / "a.gh").read_text().splitlines()
    assert (
        f"::error file=models/layer.py,line={unused},title=ARF901 unused-suppression::"
        in (gh[0][: gh[0].index("::", 8) + 2])
        or gh
    )

    # the baseline is rewritten, not appended to: the stale entry goes
    wrote = arfuse(
        "audit", "--trace", "out/keep", "--write-baseline", "audit/baseline.json", cwd=repo
    )
    assert wrote.returncode == 0, wrote.stderr.decode()
    entries = json.loads((repo / "audit" / "baseline.json").read_text())["findings"]
    assert [(e["code"], e["line"]) for e in entries] == [("ARF102", window)]

    # fix the unused suppression: the gate passes, and says why it is not a proof
    layer.write_text(layer.read_text().replace("  # arfuse: ignore[ARF101]", ""))
    clean = arfuse("audit", "--trace", "out/keep", cwd=repo)
    assert clean.returncode == 0, clean.stdout.decode()
    last = clean.stdout.decode().rstrip().splitlines()[-1]
    assert "stays dynamic" not in last and "1 baselined, 2 suppressed" in last, last


def test_a_target_that_fails_to_import(repo: Path):
    res = arfuse(
        "audit",
        "models/broken.py:build",
        "--keep",
        "out/keep",
        "--also",
        "json=out/b.json",
        "--also",
        "sarif=out/b.sarif",
        "--also",
        "markdown=out/b.md",
        cwd=repo,
    )
    assert res.returncode == 2
    stderr = res.stderr.decode()
    line = _line(repo / "models" / "broken.py", "import not_a_module_anywhere")
    assert f"models/broken.py:{line}" in stderr, stderr
    assert "ModuleNotFoundError" in stderr
    log = repo / "out" / "keep" / "worker.log"
    assert str(log.relative_to(repo)) in stderr or str(log) in stderr
    assert "Traceback" in log.read_text() and "not_a_module_anywhere" in log.read_text()
    # every requested output is still written
    report = json.loads((repo / "out" / "b.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["exit_code"] == 2 and "not_a_module_anywhere" in report["errors"][0]
    sarif = json.loads((repo / "out" / "b.sarif").read_text())
    (invocation,) = sarif["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    note = invocation["toolExecutionNotifications"][0]
    assert note["level"] == "error" and "not_a_module_anywhere" in note["message"]["text"]
    assert "## Errors" in (repo / "out" / "b.md").read_text()


def test_piped_trace_on_stdin_and_bad_settings(tmp_path: Path):
    log = DATA / "torch-2.13.0-branch.log.gz"
    piped = arfuse(
        "audit", "--trace", "-", "--format", "json", cwd=tmp_path, stdin=log.read_bytes()
    )
    from_file = arfuse("audit", "--trace", str(log), "--format", "json", cwd=tmp_path)
    assert piped.returncode == from_file.returncode == 1, piped.stderr.decode()
    codes = lambda r: [(f["code"], f["line"]) for f in json.loads(r.stdout)["findings"]]  # noqa: E731
    assert codes(piped) == codes(from_file) and len(codes(piped)) == 4

    for args, needle in [
        (["--sizes", ""], "--sizes needs"),
        (["--timeout", "0"], "--timeout"),
        (["--select", "ARF1", "--ignore", "ARF1"], "no rule"),
    ]:
        res = arfuse("audit", "--trace", str(log), *args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stdout)
        assert needle in (res.stdout + res.stderr).decode(), (args, res.stderr)

    (tmp_path / "pyproject.toml").write_text('[tool.arfuse]\nignore = ["ARF104"]\nselct = []\n')
    bad = arfuse("audit", "--trace", str(log), cwd=tmp_path)
    assert bad.returncode == 2 and "unknown key 'selct'" in bad.stderr.decode()
    (tmp_path / "pyproject.toml").write_text('[tool.arfuse]\nignore = ["ARF104"]\n')
    cfg = arfuse("audit", "--trace", str(log), "--format", "json", cwd=tmp_path)
    assert {f["code"] for f in json.loads(cfg.stdout)["findings"]} == {"ARF102", "ARF103"}
    (tmp_path / "pyproject.toml").write_text(
        '[tool.arfuse]\nignore = ["ARF104"]\n'
        '[tool.arfuse.per-file-ignores]\n"/*/capture_trace_fixtures.py" = ["ARF103"]\n'
    )
    per_file = arfuse("audit", "--trace", str(log), "--format", "json", cwd=tmp_path)
    assert {f["code"] for f in json.loads(per_file.stdout)["findings"]} == {"ARF102"}
    (tmp_path / "pyproject.toml").write_text('[tool.arfuse]\nignore = ["ARF104"]\n')
    isolated = arfuse("audit", "--trace", str(log), "--format", "json", "--isolated", cwd=tmp_path)
    assert "ARF104" in {f["code"] for f in json.loads(isolated.stdout)["findings"]}
    # a flag overrides the file
    flag = arfuse(
        "audit", "--trace", str(log), "--format", "json", "--ignore", "ARF103", cwd=tmp_path
    )
    assert {f["code"] for f in json.loads(flag.stdout)["findings"]} == {"ARF102", "ARF104"}


def test_html_is_one_self_contained_page_linked_from_tlparse(tmp_path: Path):
    res = arfuse(
        "audit", "--trace", str(DATA / "ranks-divergent-torch-2.13.0"), "--html", "html", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr.decode()
    html = tmp_path / "html"
    page = (html / "findings.html").read_text()
    assert "<style>" in page and "<link" not in page and "<script" not in page
    # every link is relative and lands on a file tlparse wrote
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs and all(not h.startswith(("/", "http")) for h in hrefs)
    assert all((html / h).is_file() for h in hrefs), hrefs
    # ARF303: a table row per rank; each finding shows its fix
    block = page[page.index('<span class="code">ARF303</span>') :].split('<div class="finding"')[0]
    rows = re.findall(r"<tr><td>(\d)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", block)
    assert [(r, g) for r, g, _ in rows] == [("0", "0/0"), ("1", "0/0")], rows
    assert "no fused op" in rows[1][2]
    assert page.count('class="fix"') == page.count('class="finding"') > 0
    for index in (html / "index.html", html / "rank_0" / "index.html"):
        assert 'findings.html">arfuse audit findings</a>' in index.read_text()


def test_every_target_of_the_config_in_one_command(repo: Path):
    text = PYPROJECT.replace(
        'targets = ["models/layer.py:build"]',
        'targets = ["models/layer.py:build", "models/broken.py:build"]',
    )
    (repo / "pyproject.toml").write_text(text)
    res = arfuse("audit", "-q", "--also", "json=out/all.json", cwd=repo)
    assert res.returncode == 2  # the worst of the two: one target did not import
    out = res.stdout.decode()
    assert "arfuse audit: models/layer.py:build" in out
    assert "arfuse audit: models/broken.py:build" in out
    assert out.rstrip().splitlines()[-1].startswith("arfuse audit, 2 targets: ERROR")
    assert res.stderr.decode().count("error: ") == 1  # -q: the error, no phases
    report = json.loads((repo / "out" / "all.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert [s["target"] for s in report["summary"]["targets"]] == [
        "models/layer.py:build",
        "models/broken.py:build",
    ]
    assert report["errors"][0].startswith("models/broken.py:build: ")
    assert {f["code"] for f in report["findings"]} >= {"ARF102", "ARF104", "ARF901", "ARF902"}


def test_json_paths_are_relative_and_compiler_findings_sit_on_the_model(tmp_path: Path):
    """The H200 trace of a tiny HF Llama: ARF106 (Inductor's 64-bit indexing switch) is shown
    at the compiled model frame, Inductor's line related; dismissed guards carry the package
    path, not the recording machine's site-packages."""
    res = arfuse(
        "audit", "--trace", str(DATA / "gpu-torch-2.11.0" / "hf_llama.tar.gz"),
        "--max-tokens", "65536", "--format", "json", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(res.stdout)
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    (f,) = report["findings"]
    assert f["code"] == "ARF106" and f["path"] == "transformers/utils/generic.py"
    assert [x["path"] for x in f["frames"]] == [f["path"], "torch/_inductor/codegen/simd.py"]
    assert report["summary"]["dismissed"]
    assert all(d["path"].startswith("torch/") for d in report["summary"]["dismissed"])
