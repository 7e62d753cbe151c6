"""Trim recorded fixture logs in place (not a test): drop the `chromium_event` records (an
envelope line and its payload lines each), the timing events nothing here reads and most of a
log's bytes. Every other record stays as torch wrote it.

    python tests/audit/tools/trim_fixture.py LOG.gz [LOG.gz ...]
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path


def trim(data: bytes) -> bytes:
    out, skipping = [], False
    for line in data.split(b"\n"):
        if line.startswith(b"\t") or (skipping and not line):
            if not skipping:
                out.append(line)
            continue
        skipping = b'] {"chromium_event"' in line[:200]
        if not skipping:
            out.append(line)
    return b"\n".join(out)


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        data = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(trim(data), 9, mtime=0))


if __name__ == "__main__":
    main()
