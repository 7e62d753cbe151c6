"""Audit several fixture targets in ONE fresh process (cheaper than one process each) and write
each report as json + text into OUT_DIR. Used by conftest.py:

    python tests/audit/_batch.py OUT_DIR branch equality ...
"""

import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    from arfuse.audit import audit
    from arfuse.audit.live.target import load

    for name in sys.argv[2:]:
        t0 = time.perf_counter()
        target = load(f"{FIXTURES / name}.py:build")
        target.name = f"{name}.py:build"
        report = audit(target)
        report.summary["seconds"] = 0.0  # golden outputs must not depend on timing
        for fmt in ("json", "text", "markdown", "sarif"):
            ext = {"markdown": "md"}.get(fmt, fmt)
            (out / f"{name}.{ext}").write_text(report.render(fmt, root=FIXTURES))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
