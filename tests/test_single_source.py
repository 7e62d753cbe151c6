"""Issue 14's defects that no other test pinned: a custom allreduce op in the cross-rank rule
and in ranges='auto', the pass's cache key under ARFUSE_TWOSHOT and the ARFUSE_THRESHOLDS file,
skip reasons warned once per pass without node names, and dead code. Graph level, no compile;
`.notes/defect_tests.md` maps every defect of the issue to its test."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import arfuse
from arfuse.audit import analyze
from arfuse.audit.trace.reader import parse_bytes

PACKAGE = Path(arfuse.__file__).parent
VLLM = "vllm::all_reduce"
_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")


def _rank_log(ops: list[str], named: tuple[str, ...]) -> bytes:
    """One rank's trace: the pass's report naming `named` as allreduce ops, and a post-grad
    graph that calls `ops` (torch.ops.<ns>.<op>.default) in order, one model line each."""
    head = (
        'V1129 12:00:00.000000 1 x.py:1] {{"artifact": {{"name": "{}", "encoding": "{}"}}, '
        '"frame_id": 0, "frame_compile_id": 0, "attempt": 0, "has_payload": "0"}}\n'
    )
    report = {"matches": 0, "skipped": [], "allreduce_ops": list(named), "norm_ops": []}
    graph = "".join(
        f"\t        # File: /m/model.py:{10 + i} in forward, code: y{i} = comm(x)\n"
        f'\t        c{i}: "f32[s0, 64]" = torch.ops.{op}.default(arg0_1)\n'
        for i, op in enumerate(ops)
    )
    return (
        head.format("arfuse_fusion", "json")
        + "\t"
        + json.dumps(report)
        + "\n"
        + head.format("inductor_post_grad_graph", "string")
        + graph
        + 'V1129 12:00:00.100000 1 x.py:1] {"compilation_metrics": {"compile_id": "0/0", '
        '"co_name": "forward", "co_filename": "/m/model.py", "co_firstlineno": 9}, '
        '"frame_id": 0, "frame_compile_id": 0, "attempt": 0}\n'
    ).encode()


@pytest.mark.parametrize("named", [(VLLM,), ()])
def test_arf304_counts_an_allreduce_op_named_in_the_fusion_config(named):
    """Defect 1 (ranks): rank 0 issues vllm::all_reduce before the c10d allreduce, rank 1 does
    not: a hang when the pass's config names the op, nothing the audit can see otherwise."""
    ops = {
        0: ["vllm.all_reduce", "_c10d_functional.all_reduce"],
        1: ["_c10d_functional.all_reduce"],
    }
    traces = {rank: parse_bytes(_rank_log(o, named)) for rank, o in ops.items()}
    findings = analyze(traces, select=["ARF304"]).findings
    if not named:
        assert findings == []
        return
    (f,) = findings
    assert (f.code, f.path, f.line, f.ranks) == ("ARF304", "/m/model.py", 10, [0, 1])
    assert "collective #1 is rank 0: vllm.all_reduce; rank 1: _c10d_functional.all_reduce" in (
        f.message
    )


# an allreduce op of the user's that ranges='auto' cannot guess by name (no "all_reduce" in it)
_LIB = torch.library.Library("arfuse_single_source", "DEF")
_LIB.define("tp_sum(Tensor input, str group_name) -> Tensor")


def test_ranges_auto_finds_an_allreduce_op_named_in_the_fusion_config():
    """Defect 1 (ranges): ranges='auto' sizes its split points from the first allreduced
    activation; a FusionConfig's own allreduce op is one, with its group argument."""
    from arfuse.ranges import _allreduced

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["example_value"] = torch.empty(4, 64)
    ar = graph.call_function(torch.ops.arfuse_single_source.tp_sum.default, (x, "tp_group"))
    ar.meta["example_value"] = torch.empty(4, 64, dtype=torch.bfloat16)
    graph.output(ar)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    val, group = _allreduced(gm, ("arfuse_single_source::tp_sum",))
    assert (tuple(val.shape), val.dtype, group) == ((4, 64), torch.bfloat16, "tp_group")
    assert _allreduced(gm) == (None, None)


def _uuid_in_subprocess(env: dict[str, str]) -> str:
    code = "import arfuse; print(arfuse.AllReduceFusionPass().uuid().hex())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ARFUSE_TWOSHOT", "ARFUSE_THRESHOLDS")}


def test_uuid_follows_arfuse_twoshot():
    """Defect 2: ARFUSE_TWOSHOT decides what a ranged compile fuses, so the default pass's
    cache key must differ between its values (the env var is read at import: subprocesses)."""
    on, again, off = (_uuid_in_subprocess({"ARFUSE_TWOSHOT": v}) for v in ("1", "1", "0"))
    assert on == again != off


def test_uuid_follows_the_thresholds_file(tmp_path, monkeypatch):
    """Defect 2: a table loaded from ARFUSE_THRESHOLDS changes the default pass's uuid."""
    from arfuse import thresholds as th

    monkeypatch.delenv(th.ENV_VAR, raising=False)
    th.reload()
    before = arfuse.AllReduceFusionPass().uuid()
    path = tmp_path / "t.json"
    entry = {"oneshot_max_mb": 1.0, "fused_max_mb": 2.0, "source": "test"}
    path.write_text(json.dumps({"sm90": {"4": entry}}))
    monkeypatch.setenv(th.ENV_VAR, str(path))
    th.reload()
    try:
        assert arfuse.AllReduceFusionPass().uuid() != before
    finally:
        monkeypatch.delenv(th.ENV_VAR)
        th.reload()
    assert arfuse.AllReduceFusionPass().uuid() == before


def _leaky_chains(x, r1, r2, w):
    """Two allreduce + add + RMSNorm chains whose allreduce output is also used elsewhere."""
    y1 = arfuse.ops.all_reduce(x, "0")
    out1 = arfuse.ops.rms_norm(y1 + r1, w, 1e-6)
    y2 = arfuse.ops.all_reduce(out1, "0")
    out2 = arfuse.ops.rms_norm(y2 + r2, w, 1e-6)
    return out2, y1 * 2, y2 * 3


def _apply(fusion: arfuse.AllReduceFusionPass) -> list[str]:
    from torch.fx.experimental.proxy_tensor import make_fx

    args = (torch.randn(4, 64), torch.randn(4, 64), torch.randn(4, 64), torch.randn(64))
    gm = make_fx(_leaky_chains, tracing_mode="fake")(*args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fusion.apply(gm.graph)
    return [str(w.message) for w in caught if "arfuse" in str(w.message)]


def test_skip_reasons_are_warned_once_per_pass_without_node_names():
    """Defects 5 and 9: a reason is warned once per pass (a second pass warns again, whatever
    ran before it: no process-wide set), and its text names no node, so two chains that leak
    for the same reason share one warning while `skipped` keeps each node."""
    first = arfuse.AllReduceFusionPass()
    warned = _apply(first)
    assert len(warned) == 1 and "used outside" in warned[0]
    reasons = {reason for reason, _ in first.skipped}
    nodes = [node for _, node in first.skipped]
    assert len(first.skipped) == 2 and len(reasons) == 1 and len(set(nodes)) == 2
    assert not any(node in warned[0] for node in nodes)
    assert _apply(first) == []  # the same pass: already warned
    assert _apply(arfuse.AllReduceFusionPass()) == warned  # a new pass warns again


def _defined_names(tree: ast.Module) -> list[str]:
    """Module-level functions and classes, and methods, that no decorator registers."""
    found = []
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else []
        for n in [node, *members]:
            if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.decorator_list:
                found.append(n.name)
    return found


def test_no_private_definition_in_the_package_is_unused():
    """Defect 6: a private function, method or class that nothing names is dead code
    (`match._strip_convert` was one). Registered ones (decorated) are used by their decorator."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    words: dict[str, int] = {}
    for text in sources.values():
        for word in _IDENT.findall(text):
            words[word] = words.get(word, 0) + 1
    dead = [
        f"{p.relative_to(PACKAGE)}: {name}"
        for p, text in sources.items()
        for name in _defined_names(ast.parse(text))
        if name.startswith("_") and not name.startswith("__") and words.get(name, 0) < 2
    ]
    assert dead == []


@pytest.mark.parametrize(
    "module,name",
    [
        ("arfuse.audit.trace.records", "merge"),
        ("arfuse.audit.trace.reader", "merge"),
        ("arfuse.testing.graphs", "post_grad_graph"),
        ("arfuse.patterns.match", "_strip_convert"),
    ],
)
def test_dead_public_names_stay_gone(module, name):
    """Defect 6: the dead names the issue listed (public ones no scan can call dead)."""
    import importlib

    assert not hasattr(importlib.import_module(module), name)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """arfuse modules `path` imports, at module level or in a function (a lazy import is a
    dependency too), not under TYPE_CHECKING, nor its own package (a registry or lazy
    `__init__` that its submodules name)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            }
    return {m for m in found if m in modules and m != me and not me.startswith(m + ".")}


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(paths)) for m, p in paths.items()}


def test_production_code_does_not_import_the_test_helpers():
    """Defect 7: `audit/worker.py` and `bench/cli.py` imported `arfuse.testing`."""
    users = {
        m: sorted(t for t in deps if t.startswith("arfuse.testing"))
        for m, deps in _import_graph().items()
        if not m.startswith("arfuse.testing")
    }
    assert {m: t for m, t in users.items() if t} == {}


def test_no_import_cycle_in_the_package():
    """Defect 7: `audit/baseline.py` and `audit/report.py` imported each other (lazily)."""
    graph = _import_graph()
    reach = {m: set(deps) for m, deps in graph.items()}
    changed = True
    while changed:  # transitive closure; the package has ~100 modules
        changed = False
        for seen in reach.values():
            more = set().union(*(reach[d] for d in seen)) - seen
            if more:
                seen |= more
                changed = True
    assert sorted(m for m, seen in reach.items() if m in seen) == []


def test_no_module_imports_another_modules_private_names():
    """Defect 7: `rules/ranks.py` imported `rules/fusion.py`'s `_frame_of`: a private name is
    its module's own; a helper two modules share is public."""
    borrowed = [
        f"{p.relative_to(PACKAGE)}: {node.module}.{a.name}"
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arfuse")
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    assert borrowed == []


# Package-level edges that are the design, not a cycle to break: the audit's built-in target
# is the example TP decoder, and `examples.hf_audit` is an example of an audit target.
_ALLOWED_PACKAGE_EDGES = {("arfuse.audit", "arfuse.examples"), ("arfuse.examples", "arfuse.audit")}


def test_no_two_packages_or_modules_depend_on_each_other():
    """Defect 7: `config.py` and `patterns/` depended on each other (`patterns/cli.py`, and the
    matcher before it, imported the config that imports `patterns/spec.py`). Each subpackage of
    arfuse counts as one node; the root package and the CLI that maps every command do not."""

    def node(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges = {
        (node(m), node(d))
        for m, deps in _import_graph().items()
        for d in deps
        if node(m) != node(d) and "arfuse" not in (node(m), node(d)) and m != "arfuse.cli"
    } - _ALLOWED_PACKAGE_EDGES
    reach: dict[str, set[str]] = {}
    for a, b in edges:
        reach.setdefault(a, set()).add(b)
    changed = True
    while changed:
        changed = False
        for seen in reach.values():
            more = set().union(*(reach.get(d, set()) for d in seen)) - seen
            if more:
                seen |= more
                changed = True
    assert sorted(m for m, seen in reach.items() if m in seen) == []


def _top_level(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(function names, class names, arfuse modules imported anywhere) of one module."""
    tree = ast.parse(path.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    return functions, classes, imported


def test_the_trace_modules_and_the_cli_each_hold_one_idea():
    """Defect 8: `audit/trace.py` held the event model, the parser, the streaming policy and
    file discovery; `audit/cli.py` rendered HTML. The event model parses nothing and knows no
    reader or policy; the reader defines no event; the policy reads no file; the CLI holds no
    markup (`audit/report/html.py` does)."""
    audit = PACKAGE / "audit"
    functions, _, imported = _top_level(audit / "trace" / "records.py")
    assert not {f for f in functions if f.startswith(("parse_", "read_", "open_", "trace_files"))}
    assert not imported & {"arfuse.audit.trace.reader", "arfuse.audit.trace.slim", "gzip"}
    _, classes, _ = _top_level(audit / "trace" / "reader.py")
    assert not classes & set(dir(__import__("arfuse.audit.trace.records", fromlist=["x"])))
    functions, _, imported = _top_level(audit / "trace" / "slim.py")
    assert not {f for f in functions if f.startswith(("parse_", "read_", "open_"))}
    assert "arfuse.audit.trace.reader" not in imported
    assert not re.search(r"<(html|table|a href|td|tr)\b", (audit / "cli.py").read_text())


def _deps_of(package: str) -> set[str]:
    return {
        d
        for m, deps in _import_graph().items()
        if m == package or m.startswith(package + ".")
        for d in deps
    }


def test_the_audit_packages_point_one_way():
    """Issue 21: `trace/` (torch's records) imports nothing above it; `judge/` knows no report
    and no rule; nothing imports the audit CLI but the command map `arfuse/cli.py`."""
    trace = _deps_of("arfuse.audit.trace")
    assert {
        d
        for d in trace
        if d.startswith("arfuse.audit")
        and not d.startswith("arfuse.audit.trace")
        and d != "arfuse.audit.options"
    } == set()
    judge = _deps_of("arfuse.audit.judge")
    above = ("arfuse.audit.report", "arfuse.audit.rules", "arfuse.audit.live", "arfuse.audit.api")
    assert {d for d in judge if d.startswith(above)} == set()
    assert {m for m, deps in _import_graph().items() if "arfuse.audit.cli" in deps} <= {
        "arfuse.cli"
    }


def test_audit_functions_fit_on_a_screen():
    """Issue 21: no function body in arfuse/audit/ longer than 60 lines (the audit command was
    136, the reader's feed 117, the text report 90)."""
    long = []
    for path in (PACKAGE / "audit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if ast.get_docstring(node) is not None:
                    body = body[1:]
                if body and (node.end_lineno or 0) - body[0].lineno + 1 > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []
