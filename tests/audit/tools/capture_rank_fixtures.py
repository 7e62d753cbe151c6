"""Record the multi-rank fixture logs (not a test; CPU, ~2 min):

    python tests/audit/tools/capture_rank_fixtures.py [tests/audit/data]

runs the live audit of tests/audit/fixtures/tp_ranks.py:{consistent,divergent} (2 gloo ranks)
from the repository root and writes, per case, OUT/ranks-<case>-torch-<version>/: the ranks'
TORCH_TRACE logs as recorded (gzipped, torch's file names) and `live.json`, the live audit's
report of the same run - what the offline audit of those logs must agree with.
"""

import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/audit/data"
    version = torch.__version__.split("+")[0]
    for case in ("consistent", "divergent"):
        dest = out / f"ranks-{case}-torch-{version}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            keep = Path(tmp) / "keep"
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "arfuse",
                    "audit",
                    f"tests/audit/fixtures/tp_ranks.py:{case}",
                    "--keep",
                    str(keep),
                    "--format",
                    "json",
                    "-o",
                    str(dest / "live.json"),
                    "--no-progress",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode not in (0, 1):
                sys.exit(f"{case}: audit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            for log in sorted((keep / "trace").glob("*.log")):
                with log.open("rb") as src, gzip.open(dest / f"{log.name}.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
        print(f"{dest}: {sorted(p.name for p in dest.iterdir())}")


if __name__ == "__main__":
    main()
