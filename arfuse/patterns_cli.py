"""`arfuse patterns`: every fusion variant the pass knows, and whether a config enables it."""

from __future__ import annotations

import json

import click

from arfuse.patterns.spec import AXES, DESCRIPTIONS, all_specs


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text table, or one JSON object",
)
@click.option(
    "--disable",
    multiple=True,
    metavar="AXIS=FORM",
    help="preview a FusionConfig with a form switched off, e.g. --disable norm=gemma",
)
def patterns(fmt: str, disable: tuple[str, ...]) -> None:
    """List every registered pattern variant: allreduce x norm x residual x quant.

    Each variant becomes one fused op, arfuse::fused_allreduce_rmsnorm (or _fp8 with the FP8
    quant). dtypes (bf16/fp16/fp32), any eps and 2-D/3-D activations are handled by every
    variant."""
    from arfuse.config import FusionConfig

    off: dict[str, set[str]] = {}
    for item in disable:
        axis, _, form = item.partition("=")
        if axis not in AXES or form not in AXES[axis]:
            raise click.BadParameter(
                f"{item!r}: write AXIS=FORM with AXIS in {list(AXES)} and "
                "FORM one of its forms as listed by `arfuse patterns`",
                param_hint="--disable",
            )
        off.setdefault(axis, set()).add(form)

    def kept(axis: str) -> frozenset[str]:
        return frozenset(AXES[axis]) - off.get(axis, set())

    config = FusionConfig(
        allreduce=kept("allreduce"),
        norm=kept("norm"),
        residual=kept("residual"),
        quant=kept("quant"),
    )
    specs = list(all_specs())
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "patterns": [
                        {
                            "name": s.name,
                            "allreduce": s.allreduce,
                            "norm": s.norm,
                            "residual": s.residual,
                            "quant": s.quant,
                            "fused_op": s.fused_op,
                            "enabled": config.enables(s),
                        }
                        for s in specs
                    ]
                },
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{len(specs)} fusion patterns ({sum(config.enables(s) for s in specs)} enabled)"
    )
    for column in ("pattern", "fused op", "enabled"):
        table.add_column(column)
    for s in specs:
        table.add_row(s.name, s.fused_op, "yes" if config.enables(s) else "no")
    console = Console(width=100)
    console.print(table)
    console.print("Forms:")
    for axis, forms in AXES.items():
        for form in forms:
            console.print(
                f"  {axis:9} {form:9} {DESCRIPTIONS[form] if form != 'none' else ''}".rstrip(),
                highlight=False,
            )
