"""The `arfuse` command line: a click group whose subcommands live beside the code they drive.

Subcommands are imported only when run, and `arfuse --help` lists them from the summaries
below, so help costs no torch import and one broken optional part (say, plotting) does not take
the others down. tests/test_lazy_imports.py checks each summary against its command's docstring.
"""

from __future__ import annotations

import importlib

import click

# name -> ("module:attribute" of a click command, the first sentence of its docstring)
_COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("arfuse.audit.cli:audit", "Prove a compiled model stays dynamic in num_tokens."),
    "bench": (
        "arfuse.bench.cli:bench",
        (
            "Time allreduce + add + RMSNorm: unfused (eager / compiled) vs fused one-shot / "
            "two-shot vs arfuse's dispatch, per token count; write markdown + JSON + PNG."
        ),
    ),
    "tune": (
        "arfuse.bench.cli:tune",
        (
            "Choose thresholds from `arfuse bench` JSON files; print the diff against the "
            "table in force; write the thresholds JSON the pass loads."
        ),
    ),
    "rules": (
        "arfuse.audit.cli:rules",
        ("Every audit rule with its code, name and docs (or one rule: `arfuse rules ARF102`)."),
    ),
    "patterns": (
        "arfuse.patterns_cli:patterns",
        "List every registered pattern variant: allreduce x norm x residual x quant.",
    ),
    "thresholds": (
        "arfuse.thresholds_cli:thresholds",
        (
            "Print the threshold table in force: when the fused kernel runs one-shot, "
            "two-shot, or leaves the work to the unfused path (NCCL allreduce + "
            "compiled add+RMSNorm)."
        ),
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(map(len, _COMMANDS))
        rows = [
            # click's own shortening (click.utils.make_default_short_help is deprecated)
            (name, click.Command(name, help=summary).get_short_help_str(limit))
            for name, (_, summary) in sorted(_COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="arfuse")
def main() -> None:
    """Fuse all_reduce + residual add + RMSNorm (+FP8) under torch.compile, and audit compiled
    models for num_tokens specializations."""
