"""What each entry point imports: commands that need no model import no torch, `import arfuse`
loads no Dynamo/Inductor, and the arfuse:: ops are registered whenever torch is there.

Each check runs in a fresh interpreter: this test process has torch loaded already."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from arfuse import cli

DATA = Path(__file__).resolve().parent / "audit" / "data"

_RUN_CLI = """
import json, sys
from arfuse.cli import main
try:
    main(sys.argv[1:], prog_name="arfuse")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"exit": code, "torch": sorted(m for m in sys.modules
                                                if m == "torch" or m.startswith("torch."))}),
      file=sys.stderr)
"""


def _cli_in_fresh_process(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, *args], capture_output=True, text=True, timeout=120
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["rules"],
        ["rules", "ARF102", "--format", "json"],
        ["patterns"],
        ["thresholds"],
        ["audit", "--help"],
        ["audit", "--trace", str(DATA / "torch-2.13.0-branch.log.gz"), "--format", "json"],
        ["audit", "--trace", str(DATA / "ranks-divergent-torch-2.13.0"), "--no-progress"],
    ],
)
def test_commands_that_need_no_model_import_no_torch(args):
    result = _cli_in_fresh_process(*args)
    assert result["exit"] in (0, 1), result
    assert result["torch"] == [], f"arfuse {' '.join(args)} imported {result['torch'][:5]}"


def test_a_live_audit_parent_imports_no_torch(tmp_path):
    # the worker fails at once (file target with no such function); the parent must get there
    # without torch: only the worker pays for it
    target = tmp_path / "t.py"
    target.write_text("def build():\n    raise SystemExit(3)\n")
    result = _cli_in_fresh_process("audit", f"{target}:nope", "--no-progress")
    assert result["exit"] == 2
    assert result["torch"] == []


_IMPORT_ORDER = """
import sys
{first}
import {second}
import arfuse
print(arfuse.FusionConfig().__class__.__name__)
assert "arfuse.ops" in sys.modules, "ops not registered"
print(torch.ops.arfuse.fused_allreduce_rmsnorm.default.name())
print(torch.ops.arfuse.all_reduce.default.name())
heavy = [m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))]
print("heavy", heavy[:3])
"""


@pytest.mark.parametrize(
    "first,second",
    [
        ("import arfuse", "torch"),
        ("import torch", "arfuse"),
        ("import arfuse.audit.cli", "torch"),
        # libraries probe for torch without importing it (transformers' is_torch_available)
        ("import arfuse, importlib.util; assert importlib.util.find_spec('torch')", "torch"),
    ],
)
def test_ops_register_with_torch_in_any_import_order_and_no_dynamo(first, second):
    code = _IMPORT_ORDER.format(first=first, second=second)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        "FusionConfig",
        "arfuse::fused_allreduce_rmsnorm",
        "arfuse::all_reduce",
        "heavy []",
    ], proc.stdout


def test_import_arfuse_alone_imports_no_torch():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, arfuse; "
            "print('torch' in sys.modules, sorted(arfuse.__all__) == "
            "sorted(set(dir(arfuse)) & set(arfuse.__all__)))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_public_names_resolve_lazily():
    import arfuse
    from arfuse.fusion import AllReduceFusionPass
    from arfuse.ranges import compile as ranged_compile

    assert arfuse.AllReduceFusionPass is AllReduceFusionPass
    assert arfuse.compile is ranged_compile
    assert arfuse.ops is importlib.import_module("arfuse.ops")
    # submodules load on attribute access too (`arfuse.ranges.backend(...)` after `import arfuse`)
    assert arfuse.ranges is importlib.import_module("arfuse.ranges")
    assert arfuse.thresholds.lookup is importlib.import_module("arfuse.thresholds").lookup
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        arfuse.nope  # noqa: B018


def test_help_summaries_are_each_commands_own_first_sentence():
    for name, (where, summary) in cli._COMMANDS.items():
        module, attr = where.split(":")
        command = getattr(importlib.import_module(module), attr)
        doc = " ".join((command.help or "").split())
        assert doc.startswith(summary), (name, summary, doc[:120])
