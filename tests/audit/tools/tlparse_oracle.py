"""What the reference viewer says about a folder of rank logs (not a test; needs `tlparse` on
PATH, `pip install tlparse==0.4.3`):

    python tests/audit/tools/tlparse_oracle.py DIR

runs `tlparse DIR --all-ranks-html` on the rank logs of DIR (`.log.gz` are unpacked to a
temporary folder first) and writes DIR/tlparse.txt: the version, then every cross-rank
diagnostic line of its landing page (divergence warnings with their rank groups, execution
order, tensor metadata) and each rank's `collectives_parity.json` entries (collectives in the
schedule vs the output code, waits missing). tlparse only draws these on a page; this file is
the oracle the offline audit's cross-rank findings are compared with.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KEEP = re.compile(
    r"Warning|Ranks:|execution order|Collectives Schedule|Cache hit/miss|tensor meta"
    r"|Execution-order|Runtime analysis not available",
    re.IGNORECASE,
)


def oracle(folder: Path) -> list[str]:
    version = subprocess.run(["tlparse", "--version"], capture_output=True, text=True, check=True)
    lines = [version.stdout.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        for log in sorted(folder.glob("dedicated_log_torch_trace_rank_*.log*")):
            name = log.name.removesuffix(".gz")
            if log.suffix == ".gz":
                with gzip.open(log, "rb") as src, (logs / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(log, logs / name)
        out = Path(tmp) / "out"
        done = subprocess.run(
            ["tlparse", str(logs), "--all-ranks-html", "-o", str(out), "--no-browser"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:  # it happens: say so, the oracle is that it had nothing to say
            error = [x for x in done.stderr.splitlines() if x.startswith("Error")]
            return [*lines, f"tlparse failed (exit {done.returncode}): {' '.join(error[:1])}"]
        page = (out / "index.html").read_text()
        text = html.unescape(re.sub(r"<[^>]*>", "", page))
        heading = ""
        for line in text.splitlines():
            line = " ".join(line.split())
            if not line or "{" in line or not KEEP.search(line):
                continue  # CSS, scripts, prose
            if line.startswith("Ranks:"):
                line = f"  {heading} group: r{line[1:]}"
            elif line.startswith("Ranks exhibit divergent"):
                heading = "Divergent tensor metadata"
            else:
                heading = line.split(" detected")[0].removeprefix("Warning: ")
            lines.append(line)
        for parity in sorted(out.glob("rank_*/collectives_parity.json")):
            for g in json.loads(parity.read_text()).get("graphs", []):
                lines.append(
                    f"{parity.parent.name} parity: graph {g['graph']} compile_id "
                    f"{g['compile_id']} offset {g['offset']} missing_waits {g['missing_waits']}"
                )
    return lines


def main() -> None:
    folder = Path(sys.argv[1])
    lines = oracle(folder)
    (folder / "tlparse.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
