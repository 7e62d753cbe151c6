"""`arfuse audit` and `arfuse rules` (click commands; `arfuse/cli.py` maps them lazily).

Exit codes: 0 clean, 1 findings not in the baseline, 2 usage or target error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click

from arfuse.audit.report import FORMATS

EXIT_USAGE = 2


def _fail(message: str) -> "click.exceptions.Exit":
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(EXIT_USAGE)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v for item in values for v in item.split(",") if v.strip()]


def _tlparse(log: Path, out_dir: Path) -> str | None:
    """Render tlparse's HTML report; returns a warning on failure (the audit still counts)."""
    exe = shutil.which("tlparse") or str(Path(sys.executable).with_name("tlparse"))
    if not Path(exe).exists() and not shutil.which(exe):
        return "tlparse not found; `pip install tlparse` for --html"
    # tlparse 0.4.x needs the .log file itself (a directory or --latest fails)
    proc = subprocess.run([exe, str(log), "-o", str(out_dir), "--overwrite", "--no-browser"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"tlparse failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    return None


@click.command("audit")
@click.argument("target", required=False)
@click.option("--sizes", help="Comma-separated num_tokens to sweep (default: 1,2,16,255,256,"
              "2047,2048,2049,8192 plus every threshold +-1 the target declares).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report here instead of stdout.")
@click.option("--also", "also", multiple=True, metavar="FORMAT=PATH",
              help="Also write another rendering of the same run, e.g. --also sarif=out.sarif "
                   "--also markdown=summary.md (CI: code scanning + PR comment).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Accepted findings (JSON); only findings not in it fail (exit 1).")
@click.option("--write-baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Add this run's findings to a baseline file and exit 0.")
@click.option("--select", multiple=True, help="Rule codes or prefixes to run (ARF1, ARF102).")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip (ARF104).")
@click.option("--html", type=click.Path(file_okay=False, path_type=Path),
              help="Also render tlparse's HTML report of the rank-0 trace into this directory.")
@click.option("--strict", is_flag=True, help="mark_dynamic instead of maybe_mark_dynamic: a "
              "specialization raises ConstraintViolationError (reported as ARF105).")
@click.option("--dtrace", is_flag=True, help="Capture TORCH_DTRACE (adds symbol-to-source maps; "
              "slower).")
@click.option("--backend", help="Override the torch.compile backend (e.g. aot_eager: faster, "
              "but no Inductor guards and no fusion coverage).")
@click.option("--trace", "trace_file", type=click.Path(exists=True, path_type=Path),
              help="Audit an existing TORCH_TRACE .log (or a --keep directory) instead of "
                   "running a target.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the trace, run.json and worker log in this directory.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds before the target's process is killed.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
def audit(target: str | None, sizes: str | None, fmt: str, output: Path | None,
          also: tuple[str, ...], baseline: Path | None, write_baseline: Path | None, select: tuple[str, ...],
          ignore: tuple[str, ...], html: Path | None, strict: bool, dtrace: bool,
          backend: str | None, trace_file: Path | None, keep: Path | None, timeout: float,
          progress: bool | None) -> None:
    """Prove a compiled model stays dynamic in num_tokens.

    TARGET is FILE.py:NAME or pkg.module:NAME; NAME() returns an arfuse.audit.AuditTarget or
    (model, make_inputs[, torch_compile_kwargs]). With no TARGET, audits the built-in
    tensor-parallel example (2 gloo ranks, Inductor + AllReduceFusionPass).
    """
    from arfuse.audit import api
    from arfuse.audit import baseline as baselines
    from arfuse.audit.context import RunInfo
    from arfuse.audit.run import TargetError, run_target
    from arfuse.audit.sizes import parse_sizes
    from arfuse.audit.trace import parse_file

    try:
        extra = []
        for item in also:
            kind, sep, path = item.partition("=")
            if not sep or kind not in FORMATS or not path:
                raise ValueError(f"--also takes FORMAT=PATH with FORMAT one of "
                                 f"{', '.join(FORMATS)}; got {item!r}")
            extra.append((kind, Path(path)))
        size_list = parse_sizes(sizes) if sizes else None
        sel, ign = _split(select), _split(ignore)
        from arfuse.audit.rules import select_rules

        select_rules(sel, ign)  # validate before spending a minute compiling
        if baseline is not None and not baseline.exists():
            raise ValueError(f"--baseline {baseline} does not exist; create it with "
                             f"--write-baseline {baseline}")
        if trace_file is not None:
            if target:
                raise ValueError("pass either TARGET or --trace, not both")
            if trace_file.is_dir():  # a --keep directory: run.json + trace/*.log
                from arfuse.audit.run import _rank_of
                from arfuse.audit.trace import trace_files

                if not (trace_file / "run.json").exists():
                    raise ValueError(f"{trace_file} is a directory without run.json; pass a "
                                     f"--keep directory of `arfuse audit` or a .log file")
                run = RunInfo.load(trace_file / "run.json")
                files = {_rank_of(p): p for p in trace_files(trace_file / "trace")}
                traces = {r: parse_file(p) for r, p in files.items() if r in run.ranks}
                log = files[min(files)]
            else:
                run, log = RunInfo(target=str(trace_file)), trace_file
                traces = {0: parse_file(trace_file)}
            report = api.analyze(traces, run, select=sel, ignore=ign, baseline=baseline)
        else:
            from arfuse.audit.default_target import SPEC

            spec = target or SPEC
            if not target and baseline is None:
                # the built-in example ships with its accepted (compiler-internal) findings
                baseline = Path(__file__).with_name("default_baseline.json")
            show = sys.stderr.isatty() if progress is None else progress
            result = run_target(spec, sizes=size_list, out_dir=keep, strict=strict,
                                dtrace=dtrace, backend=backend, timeout=timeout, progress=show,
                                display=None if target else "built-in TP decoder example "
                                "(arfuse.audit.default_target:tp_decoder)")
            traces = {r: parse_file(p) for r, p in result.trace_files.items()
                      if r in result.run.ranks}
            report = api.analyze(traces, result.run, select=sel, ignore=ign, baseline=baseline)
            log = result.trace_files[min(result.trace_files)]
    except (TargetError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if html is not None:
        warning = _tlparse(log, html)
        click.echo(f"warning: {warning}" if warning else f"tlparse report: {html}/index.html",
                   err=True)
    if write_baseline is not None:
        write_baseline.parent.mkdir(parents=True, exist_ok=True)
        write_baseline.write_text(baselines.merge_dump(write_baseline, report.findings,
                                                       Path.cwd(), report.summary["target"]))
        click.echo(f"wrote {len(report.findings)} finding(s) to {write_baseline}", err=True)
        raise click.exceptions.Exit(0)
    for kind, path in extra:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.render(kind))
    text = report.render(fmt)
    if output is not None:
        output.write_text(text)
    else:
        click.echo(text, nl=False)
    raise click.exceptions.Exit(report.exit_code)


@click.command("rules")
@click.argument("code", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]),
              default="text", show_default=True)
@click.option("--brief", is_flag=True, help="One line per rule.")
def rules(code: str | None, fmt: str, brief: bool) -> None:
    """Every audit rule with its code, name and docs (or one rule: `arfuse rules ARF102`)."""
    from arfuse.audit.rules import all_rules, get_rule

    try:
        chosen = [get_rule(code.upper())] if code else all_rules()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps([{"code": r.code, "name": r.name, "summary": r.summary,
                                "docs": r.docs, "fix": r.fix} for r in chosen], indent=2))
        return
    if fmt == "markdown":
        click.echo(rules_markdown(chosen), nl=False)
        return
    for i, r in enumerate(chosen):
        if brief:
            click.echo(f"{r.code}  {r.name:<34} {r.summary}")
        else:
            rule_line = "=" * 78
            click.echo(f"{rule_line if i else ''}\n{r.code} ({r.name}): {r.summary}\n\n"
                       f"{r.docs}\n".lstrip("\n"))


def rules_markdown(chosen) -> str:
    out = []
    for r in chosen:
        docs = r.docs.replace("## ", "#### ")
        out.append(f"### {r.code} `{r.name}`\n\n{r.summary}.\n\n{docs}\n")
    return "\n".join(out)
