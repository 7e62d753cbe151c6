"""Rows of `arfuse bench` JSON for the tune tests, made by the bench's own `Row` type so they
have the keys a real result has."""

from arfuse.bench.sweep import Case, Row


def bench_row(tokens, one, two, eager, compiled, hidden=4096):
    """One bf16 row with residual, no quant: us per call of each strategy (None: not run)."""
    times = {
        "unfused_eager": eager,
        "unfused_compiled": compiled,
        "fused_oneshot": one,
        "fused_twoshot": two,
        "arfuse": None,
    }
    return Row(
        Case(hidden, "bf16", True, "none"), tokens, tokens * hidden * 2 / 2**20, times
    ).to_json()
