"""The `arfuse` command line: a click group whose subcommands live beside the code they drive.

Subcommands are imported lazily so `arfuse --help` stays fast and one broken optional part
(say, plotting) does not take the others down.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
_COMMANDS = {
    "audit": "arfuse.audit.cli:audit",
    "bench": "arfuse.bench.cli:bench",
    "tune": "arfuse.bench.cli:tune",
    "rules": "arfuse.audit.cli:rules",
    "patterns": "arfuse.patterns.cli:patterns",
    "thresholds": "arfuse.thresholds_cli:thresholds",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="arfuse")
def main() -> None:
    """Fuse all_reduce + residual add + RMSNorm (+FP8) under torch.compile, and audit compiled
    models for num_tokens specializations."""
