"""`arfuse audit` and `arfuse rules` (click commands; `arfuse/cli.py` maps them lazily).

Exit codes: 0 clean, 1 findings not in the baseline, 2 usage or target error.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from arfuse.audit.options import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MIN_TOKENS,
    DEFAULT_SIZES,
    DEFAULT_TIMEOUT,
    AuditOptions,
)
from arfuse.audit.report.model import FORMATS

EXIT_USAGE = 2


def _fail(message: str) -> click.exceptions.Exit:
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(EXIT_USAGE)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v for item in values for v in item.split(",") if v.strip()]


def _split_sources(values: tuple[str, ...]) -> list[str]:
    # sources contain commas only inside brackets ("L['x'].size()[0]" has none): split on ", "
    # free commas so --token-source "A,B" works too
    out = []
    for v in values:
        out += [p.strip() for p in re.split(r",(?![^\[]*\])", v) if p.strip()]
    return out


def _write(path: Path, text: str) -> None:
    """All or nothing (temp file + os.replace): a full disk leaves the old file whole."""
    from arfuse.audit.paths import atomic_write

    try:
        atomic_write(path, text)
    except OSError as exc:
        raise _fail(f"cannot write {path} ({exc.strerror or exc}); it was left as it was") from exc


@click.command("audit")
@click.argument("target", required=False)
@click.option(
    "--sizes",
    help="Comma-separated num_tokens to sweep (default: the target's sizes, else "
    f"{','.join(map(str, DEFAULT_SIZES))}; plus every threshold +-1 the target declares).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here instead of stdout.",
)
@click.option(
    "--also",
    "also",
    multiple=True,
    metavar="FORMAT=PATH",
    help="Also write another rendering of the same run, e.g. --also sarif=out.sarif "
    "--also markdown=summary.md (CI: code scanning + PR comment).",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Accepted findings (JSON); only findings not in it fail (exit 1).",
)
@click.option(
    "--write-baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add this run's findings to a baseline file and exit 0.",
)
@click.option("--select", multiple=True, help="Rule codes or prefixes to run (ARF1, ARF102).")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip (ARF104).")
@click.option(
    "--html",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also render tlparse's HTML report of each audited rank's trace into this "
    "directory (DIR/rank_N/ when several ranks) and DIR/findings.html linking "
    "each finding to its compiled graph's page.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="mark_dynamic instead of maybe_mark_dynamic: a "
    "specialization raises ConstraintViolationError (reported as ARF105).",
)
@click.option(
    "--dtrace", is_flag=True, help="Capture TORCH_DTRACE (adds symbol-to-source maps; slower)."
)
@click.option(
    "--backend",
    help="Override the torch.compile backend (e.g. aot_eager: faster, "
    "but no Inductor guards and no fusion coverage).",
)
@click.option(
    "--trace",
    "trace_file",
    type=click.Path(exists=True, path_type=Path),
    help="Audit recorded logs instead of running a target: a TORCH_TRACE directory "
    "(one log per rank), one .log[.gz], a tarball of them, or a --keep directory.",
)
@click.option(
    "--token-source",
    "token_source",
    multiple=True,
    metavar="SOURCE",
    help="With --trace: the input size that is num_tokens, as torch names it "
    "(e.g. \"L['input_ids'].size()[0]\"); repeatable. Default: the recorded "
    "create_symbol sources, when each compiled graph has one dynamic size.",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the trace, run.json and worker log in this directory.",
)
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds before the target's process is killed.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--min-tokens",
    type=int,
    default=None,
    help="Smallest num_tokens the model serves (default: the target's, else "
    f"{DEFAULT_MIN_TOKENS}).",
)
@click.option(
    "--max-tokens",
    type=int,
    default=None,
    help="Largest num_tokens the model serves: every guard is judged over "
    "[min, max] and only one that fails inside it is a finding (default: the "
    f"target's, else {DEFAULT_MAX_TOKENS}).",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Text output: also list every guard that holds over the whole token domain, "
    "with the reason it is not a finding.",
)
def audit(
    target: str | None,
    sizes: str | None,
    fmt: str,
    output: Path | None,
    also: tuple[str, ...],
    baseline: Path | None,
    write_baseline: Path | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    html: Path | None,
    strict: bool,
    dtrace: bool,
    backend: str | None,
    trace_file: Path | None,
    token_source: tuple[str, ...],
    keep: Path | None,
    timeout: float,
    progress: bool | None,
    min_tokens: int | None,
    max_tokens: int | None,
    verbose: bool,
) -> None:
    """Prove a compiled model stays dynamic in num_tokens.

    TARGET is FILE.py:NAME or pkg.module:NAME; NAME() returns an arfuse.audit.AuditTarget or
    (model, make_inputs[, torch_compile_kwargs]). With no TARGET, audits the built-in
    tensor-parallel example (2 gloo ranks, Inductor + AllReduceFusionPass).
    """
    from arfuse.audit import api
    from arfuse.audit.report import baseline as baselines

    try:
        extra = []
        for item in also:
            kind, sep, path = item.partition("=")
            if not sep or kind not in FORMATS or not path:
                raise ValueError(
                    f"--also takes FORMAT=PATH with FORMAT one of "
                    f"{', '.join(FORMATS)}; got {item!r}"
                )
            extra.append((kind, Path(path)))
        if sizes:
            from arfuse.audit.live.sizes import parse_sizes

            size_list = parse_sizes(sizes)
        else:
            size_list = None
        opts = AuditOptions(
            sizes=tuple(size_list) if size_list else None,
            strict=strict,
            dtrace=dtrace,
            backend=backend,
            timeout=timeout,
            select=tuple(_split(select)),
            ignore=tuple(_split(ignore)),
            baseline=baseline,
            keep=keep,
            progress=sys.stderr.isatty() if progress is None else progress,
            token_sources=tuple(_split_sources(token_source)),
            min_tokens=min_tokens,
            max_tokens=max_tokens,
        )
        from arfuse.audit.rules import select_rules

        select_rules(opts.select, opts.ignore)  # validate before spending a minute compiling
        from arfuse.audit.paths import check_writable

        for dest in [write_baseline, output, *(p for _, p in extra)]:
            if dest is not None:
                check_writable(dest)  # before the audit, not after it
        if baseline is not None and not baseline.exists():
            raise ValueError(
                f"--baseline {baseline} does not exist; create it with --write-baseline {baseline}"
            )
        if token_source and trace_file is None:
            raise ValueError(
                "--token-source names num_tokens in a recorded trace; use it with "
                "--trace (a live audit knows its token dims from the target)"
            )
        if trace_file is not None:
            if target:
                raise ValueError("pass either TARGET or --trace, not both")
            from arfuse.audit.offline import load_traces

            traces, run = load_traces(trace_file, opts)
            logs = {r: t.source for r, t in traces.items()}
        else:
            from arfuse.audit.live.default_target import SPEC

            spec = target or SPEC
            from arfuse.audit.live.run import run_target  # only a live run needs the runner

            result = run_target(
                spec,
                opts,
                display=None
                if target
                else "built-in TP decoder example (arfuse.audit.live.default_target:tp_decoder)",
            )
            traces, run = result.traces, result.run  # parsed in its "reading trace" phase
            logs = {r: str(p) for r, p in result.trace_files.items() if r in traces}
        report = api.analyze(traces, run, opts)
    except ValueError as exc:  # the runner's TargetError is a ValueError
        raise _fail(str(exc)) from None
    if html is not None:
        from arfuse.audit.report.html import render

        try:
            render(logs, html, report, warn=lambda m: click.echo(m, err=True))
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if write_baseline is not None:
        try:
            text = baselines.merge_dump(
                write_baseline, report.findings, Path.cwd(), report.summary["target"]
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        _write(write_baseline, text)
        click.echo(f"wrote {len(report.findings)} finding(s) to {write_baseline}", err=True)
        raise click.exceptions.Exit(0)
    for kind, dest in extra:
        _write(dest, report.render(kind))
    text = report.render(fmt, verbose=verbose)
    if output is not None:
        _write(output, text)
    else:
        click.echo(text, nl=False)
    raise click.exceptions.Exit(report.exit_code)


@click.command("rules")
@click.argument("code", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
@click.option("--brief", is_flag=True, help="One line per rule.")
def rules(code: str | None, fmt: str, brief: bool) -> None:
    """Every audit rule with its code, name and docs (or one rule: `arfuse rules ARF102`)."""
    from arfuse.audit.rules import all_rules, get_rule

    try:
        chosen = [get_rule(code.upper())] if code else all_rules()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "code": r.code,
                        "name": r.name,
                        "summary": r.summary,
                        "docs": r.docs,
                        "fix": r.fix,
                    }
                    for r in chosen
                ],
                indent=2,
            )
        )
        return
    if fmt == "markdown":
        click.echo(rules_markdown(chosen), nl=False)
        return
    for i, r in enumerate(chosen):
        if brief:
            click.echo(f"{r.code}  {r.name:<34} {r.summary}")
        else:
            rule_line = "=" * 78
            click.echo(
                f"{rule_line if i else ''}\n{r.code} ({r.name}): {r.summary}\n\n{r.docs}\n".lstrip(
                    "\n"
                )
            )


def rules_markdown(chosen) -> str:
    out = []
    for r in chosen:
        docs = r.docs.replace("## ", "#### ")
        out.append(f"### {r.code} `{r.name}`\n\n{r.summary}.\n\n{docs}\n")
    return "\n".join(out)
