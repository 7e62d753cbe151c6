"""Inline suppressions: parsed at the flagged line, applied per code, unused ones found."""

import pytest

from arfuse.audit.findings import Finding, Location
from arfuse.audit.report import suppress
from arfuse.audit.report.source_line import comment_start, normalise


def _finding(path, line, code):
    return Finding(code, "x", "m", Location(str(path), line))


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("if n <= 2048:  # arfuse: ignore[ARF102]", {"ARF102"}),
        ("if n <= 2048:  # arfuse: ignore[ARF101, arf102]", {"ARF101", "ARF102"}),
        ("if n <= 2048:  # arfuse: ignore", set()),
        ("if n <= 2048:  # noqa: E501, ARF102", {"ARF102"}),
        ("if n <= 2048:  # why # arfuse:ignore[ARF103]", {"ARF103"}),
    ],
)
def test_parse(text, codes):
    s = suppress.parse("m.py", 3, text)
    assert s is not None and s.codes == frozenset(codes)


@pytest.mark.parametrize(
    "text",
    ["if n <= 2048:", "x  # noqa: E501", "x  # noqa", 'x = "# arfuse: ignore[ARF102]"'],
)
def test_not_a_suppression(text):
    assert suppress.parse("m.py", 3, text) is None


def test_malformed_code_is_an_error():
    with pytest.raises(ValueError, match=r"m.py:3: .* write `# arfuse: ignore\[ARF102\]`"):
        suppress.parse("m.py", 3, "x  # arfuse: ignore[102]")


def test_apply_splits_and_finds_unused(tmp_path):
    src = tmp_path / "model.py"
    src.write_text(
        "def f(x):\n"
        "    if x.shape[0] <= 2048:  # arfuse: ignore[ARF102, ARF101]\n"
        "        return x\n"
        "    y = x[-4095:]  # arfuse: ignore\n"
        "    z = x.view(-1, 4)  # noqa: ARF103\n"
        "    return y  # arfuse: ignore[ARF201]\n"
    )
    found = [_finding(src, 2, "ARF102"), _finding(src, 5, "ARF104"), _finding(src, 3, "ARF102")]
    out = suppress.apply(
        found, [str(src)], ran={"ARF101", "ARF102", "ARF103", "ARF104"}, every_rule=True
    )
    assert [(f.line, s.line) for f, s in out.suppressed] == [(2, 2)]
    assert [(f.line, f.code) for f in out.kept] == [(5, "ARF104"), (3, "ARF102")]
    # ARF101 at line 2 suppressed nothing; the bare one at 4 nothing; ARF103 at 5 nothing;
    # ARF201 did not run, so its suppression is not judged
    assert [(s.line, sorted(c)) for s, c in out.unused] == [
        (2, ["ARF101"]),
        (4, []),
        (5, ["ARF103"]),
    ]
    partial = suppress.apply(found, [str(src)], ran={"ARF102"}, every_rule=False)
    assert [(s.line, sorted(c)) for s, c in partial.unused] == []


def test_recorded_line_when_the_file_is_elsewhere():
    f = Finding(
        "ARF102", "x", "m", Location("/other/machine/m.py", 7, code="if n > 8:  # noqa: ARF102")
    )
    out = suppress.apply([f], [], ran={"ARF102"}, every_rule=True)
    assert out.kept == [] and out.suppressed[0][1].line == 7


def test_normalise_ignores_comments_and_layout():
    assert normalise("if n <= 2048:   # arfuse: ignore[ARF102]") == normalise("  if n<=2048 :")
    assert normalise("if n <= 2048:") != normalise("if n <= 4096:")
    assert normalise("return x if a else y") == "return x if a else y"
    assert comment_start('s = "#"  # why') == 9
    assert comment_start("s = '''#'''") == -1
