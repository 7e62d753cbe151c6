"""Reading a JSON file a user handed arfuse (bench results, a baseline, a thresholds table).

`read_json(path, name, fix)` returns the parsed value or raises a ValueError that names the
file and says what was wrong with it - it cannot be read, it is not UTF-8, or it is not JSON
(with the line and column) - followed by `fix`, how to get a valid one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, name: str, fix: str) -> Any:
    """The JSON value in `path`; `name` is how messages call the file ("baseline x.json")."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        return json.loads(text)
    except OSError as e:
        raise ValueError(f"{name}: cannot read it ({e.strerror or e}); {fix}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{name}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {fix}"
        ) from None
