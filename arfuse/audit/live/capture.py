"""Capture torch's structured trace in this process (no TORCH_TRACE at startup needed).

Used by `arfuse.testing.assert_dynamic` and `audit()` on in-memory targets. Attaches a file
handler with torch's own trace formatter to the `torch.__trace` logger, and on exit prepends
the string table (file names interned before the capture started are not logged again).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def capture_trace(path: str | Path) -> Iterator[Path]:
    import torch._logging._internal as internal
    import torch._logging.structured as structured

    path = Path(path)
    body = path.with_suffix(".body")
    handler = logging.FileHandler(body, mode="w")
    handler.setFormatter(internal.TorchLogsFormatter(trace=True))
    log = internal.trace_log
    old_level, old_propagate = log.level, log.propagate
    # Without TORCH_TRACE, torch's lazy handler removes itself on the first record, mid-emit,
    # and logging then skips the next handler for that record: park it while we capture.
    # Park every other handler too but a real TORCH_TRACE one: pytest attaches its capture
    # handlers to non-propagating loggers, and a failing test would print every record.
    parked = [h for h in log.handlers if getattr(h, "root_dir", None) is None]
    for h in parked:
        log.removeHandler(h)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()
        for h in parked:
            log.addHandler(h)
        log.setLevel(old_level)
        log.propagate = old_propagate
        table = getattr(structured, "INTERN_TABLE", {})
        with path.open("w") as out:
            for text, sid in sorted(table.items(), key=lambda kv: kv[1]):
                out.write(
                    f"V0000 00:00:00.000000 0 arfuse/audit/live/capture.py:0] "
                    f"{json.dumps({'str': [text, sid]})}\n"
                )
            out.write(body.read_text())
        body.unlink()
