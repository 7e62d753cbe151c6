"""`arfuse audit` and `arfuse rules` (click commands; `arfuse/cli.py` maps them lazily).

Exit codes: 0 clean, 1 findings not in the baseline, 2 usage or target error.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def _config_option(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """--config / --isolated (both eager): once both are known, load [tool.arfuse] and hand
    it to click as the command's default_map, so every flag given overrides its key."""
    ctx.meta[f"arfuse.{param.name}"] = value
    if "arfuse.config" in ctx.meta and "arfuse.isolated" in ctx.meta:
        from arfuse.audit import config

        path, isolated = ctx.meta["arfuse.config"], ctx.meta["arfuse.isolated"]
        try:
            if path is not None and isolated:
                raise ValueError("--config and --isolated contradict each other; pass one")
            found = (
                config.FileConfig() if isolated else config.load(path) if path else config.find()
            )
        except ValueError as exc:
            raise click.UsageError(str(exc), ctx) from None
        ctx.meta["arfuse.file_config"] = found
        ctx.default_map = {**(ctx.default_map or {}), **found.default_map()}
    return value


@click.command("audit")
@click.argument("target", required=False)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_config_option,
    help="Read settings from this file (a pyproject.toml's [tool.arfuse], or a TOML file of "
    "the table) instead of the first pyproject.toml with [tool.arfuse] from here upward.",
)
@click.option(
    "--isolated",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_config_option,
    help="Ignore every config file.",
)
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
    help="Write this run's findings as the target's entries of a baseline file (replacing "
    "them: stale entries go; other targets' entries stay) and exit 0.",
)
@click.option(
    "--update-baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Like --write-baseline, but keep every entry already in the file.",
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
    type=click.Path(exists=True, allow_dash=True, path_type=Path),
    help="Audit recorded logs instead of running a target: a TORCH_TRACE directory "
    "(one log per rank), one .log[.gz], a tarball of them, a --keep directory, or - "
    "(a log, plain or gzipped, on stdin).",
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
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds before the target's process is killed.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr: a bar on a terminal, one plain line per phase otherwise "
    "(a CI log). Default: on, unless -q.",
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
@click.option(
    "--quiet", "-q", is_flag=True, help="Only the report: no progress, phases or notices."
)
def audit(
    target: str | None,
    sizes: str | None,
    fmt: str,
    output: Path | None,
    also: tuple[str, ...],
    baseline: Path | None,
    write_baseline: Path | None,
    update_baseline: Path | None,
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
    quiet: bool,
) -> None:
    """Prove a compiled model stays dynamic in num_tokens.

    TARGET is FILE.py:NAME or pkg.module:NAME; NAME() returns an arfuse.audit.AuditTarget or
    (model, make_inputs[, torch_compile_kwargs]). With no TARGET, audits each target of
    `targets` in [tool.arfuse] (pyproject.toml, found from here upward), else the built-in
    tensor-parallel example (2 gloo ranks, Inductor + AllReduceFusionPass). Settings come from
    [tool.arfuse]; flags override them.
    """
    from arfuse.audit.config import FileConfig

    ctx = click.get_current_context()
    file_config: FileConfig = ctx.meta.get("arfuse.file_config") or FileConfig()
    baseline_out = write_baseline or update_baseline
    extra = _outputs(also, [baseline_out, output])
    if write_baseline and update_baseline:
        raise _fail("pass --write-baseline or --update-baseline, not both")
    if trace_file is not None and target:
        raise _fail("pass either TARGET or --trace, not both")
    if trace_file is not None:
        specs = [str(trace_file)]
    elif target:
        specs = [target]
    else:
        specs = file_config.targets() or [""]  # "": the built-in example
    show = not quiet if progress is None else progress and not quiet
    reports: list[Any] = []
    for spec in specs:
        try:
            opts = _options(
                sizes,
                strict,
                dtrace,
                backend,
                timeout,
                select,
                ignore,
                baseline,
                keep,
                show,
                token_source,
                min_tokens,
                max_tokens,
                trace_file,
                baseline_out,
                file_config,
            )
            report, logs = _run_one(spec, trace_file, opts)
        except ValueError as exc:  # the runner's TargetError is a ValueError
            click.echo(f"error: {exc}", err=True)
            report, logs = _error_report(spec, str(exc)), {}
        if html is not None and logs:
            from arfuse.audit.report.html import render

            where = html if len(specs) == 1 else html / f"target_{len(reports)}"
            try:
                render(logs, where, report, warn=_notice(quiet))
            except ValueError as exc:
                report.errors.append(str(exc))
        reports.append(report)
    from arfuse.audit.report.model import combine

    report = combine(reports)
    if baseline_out is not None and not report.errors:
        _write_baselines(reports, baseline_out, update_baseline is not None, quiet)
        raise click.exceptions.Exit(0)
    _emit(report, reports, fmt, verbose, extra, output)
    raise click.exceptions.Exit(report.exit_code)


def _outputs(also: tuple[str, ...], dests: list[Path | None]) -> list[tuple[str, Path]]:
    """The --also renderings; every file to write checked before the audit, not after it."""
    from arfuse.audit.paths import check_writable

    extra: list[tuple[str, Path]] = []
    for item in also:
        kind, sep, path = item.partition("=")
        if not sep or kind not in FORMATS or not path:
            raise _fail(
                f"--also takes FORMAT=PATH with FORMAT one of {', '.join(FORMATS)}; got {item!r}"
            )
        extra.append((kind, Path(path)))
    try:
        for dest in [*dests, *(p for _, p in extra)]:
            if dest is not None:
                check_writable(dest)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return extra


def _emit(
    report: Any,
    reports: list[Any],
    fmt: str,
    verbose: bool,
    extra: list[tuple[str, Path]],
    output: Path | None,
) -> None:
    """Every requested rendering (also on exit 2: a CI job's upload and summary show why)."""
    for kind, dest in extra:
        _write(dest, report.render(kind))
    if fmt == "text" and len(reports) > 1:
        text = "\n".join(r.render("text", verbose=verbose) for r in reports)
        text += f"arfuse audit, {len(reports)} targets: {report.verdict}.\n"
    else:
        text = report.render(fmt, verbose=verbose)
    if output is not None:
        _write(output, text)
    else:
        click.echo(text, nl=False)


def _write_baselines(reports: list[Any], path: Path, keep_old: bool, quiet: bool) -> None:
    """--write-baseline / --update-baseline: each target's findings, in turn, into `path`."""
    from arfuse.audit.report import baseline as baselines

    for r in reports:
        try:
            text = baselines.write_text(
                path, _baselinable(r), Path.cwd(), r.summary["target"], keep_old=keep_old
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        _write(path, text)
        if not quiet:
            click.echo(
                f"wrote {len(_baselinable(r))} finding(s) of {r.summary['target']} to {path}",
                err=True,
            )


def _options(
    sizes, strict, dtrace, backend, timeout, select, ignore, baseline, keep, show,
    token_source, min_tokens, max_tokens, trace_file, baseline_out, file_config,
) -> AuditOptions:  # fmt: skip
    """The one AuditOptions of this command line (flags over [tool.arfuse]); ValueError when
    a value is wrong, before a minute is spent compiling."""
    if sizes is not None:
        from arfuse.audit.live.sizes import parse_sizes

        size_list = parse_sizes(sizes)  # "" too: an empty sweep is an error, not the default
    else:
        size_list = None
    if baseline is not None and not baseline.exists():
        if baseline_out is None:
            raise ValueError(
                f"--baseline {baseline} does not exist; create it with --write-baseline {baseline}"
            )
        baseline = None  # the first --write-baseline of a configured baseline
    if token_source and trace_file is None:
        raise ValueError(
            "--token-source names num_tokens in a recorded trace; use it with "
            "--trace (a live audit knows its token dims from the target)"
        )
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
        progress=show and (trace_file is None or sys.stderr.isatty()),
        token_sources=tuple(_split_sources(token_source)),
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        per_file_ignores=file_config.per_file_ignores(),
    )
    from arfuse.audit.rules import select_rules

    select_rules(opts.select, opts.ignore)  # validate before spending a minute compiling
    return opts


def _run_one(spec: str, trace_file: Path | None, opts: AuditOptions) -> tuple[Any, dict]:
    """One target (or one recorded trace): its report, and its rank logs for --html."""
    from arfuse.audit import api

    if trace_file is not None:
        from arfuse.audit.offline import load_traces

        with _stdin_log(trace_file) as path:
            traces, run = load_traces(path, opts)
            if str(trace_file) == "-":
                run.target = "<stdin>"
            logs = {r: t.source for r, t in traces.items()}
            return api.analyze(traces, run, opts), logs
    from arfuse.audit.live.default_target import SPEC
    from arfuse.audit.live.run import run_target  # only a live run needs the runner

    result = run_target(
        spec or SPEC,
        opts,
        display=spec or f"built-in TP decoder example ({SPEC})",
    )
    logs = {r: str(p) for r, p in result.trace_files.items() if r in result.traces}
    return api.analyze(result.traces, result.run, opts), logs


@contextlib.contextmanager
def _stdin_log(trace_file: Path) -> Iterator[Path]:
    """`--trace -`: the log on stdin, spooled to a temporary file (gzip is detected)."""
    if str(trace_file) != "-":
        yield trace_file
        return
    import shutil
    import tempfile

    stdin = sys.stdin.buffer
    with tempfile.TemporaryDirectory(prefix="arfuse-stdin-") as tmp:
        head = stdin.read(2)
        if not head:
            raise ValueError("--trace -: nothing on stdin; pipe a TORCH_TRACE log into it")
        path = Path(tmp) / ("stdin.log.gz" if head == b"\x1f\x8b" else "stdin.log")
        with path.open("wb") as out:
            out.write(head)
            shutil.copyfileobj(stdin, out, 1 << 20)
        yield path


def _notice(quiet: bool) -> Callable[[str], None]:
    """Where notices (the tlparse report's path, warnings) go: stderr, unless -q."""

    def notice(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    return notice


def _error_report(spec: str, message: str) -> Any:
    """The report of a run that could not judge the model (exit 2), so every requested
    output is still written and says why."""
    from arfuse.audit.report.model import Report

    summary: dict[str, Any] = {"target": spec or "built-in example", "rules": [], "notes": []}
    summary.update(findings=0, new=0, baselined=0, suppressed=0)
    return Report([], summary, errors=[message])


def _baselinable(report: Any) -> list:
    """The findings a baseline accepts: not suppressed ones, not the ARF9xx about the baseline
    and the suppressions themselves (those are fixed at their source)."""
    from arfuse.audit.rules import get_rule

    return [
        f
        for i, f in enumerate(report.findings)
        if i not in report.suppressed and get_rule(f.code).scope != "report"
    ]


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
