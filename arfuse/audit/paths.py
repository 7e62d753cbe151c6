"""Where a finding's path points and how the audit writes its outputs.

- `rel(path, root)`: the path shown in reports and baselines - relative to `root` (the working
  directory, usually the repository) when under it, `torch/...` for installed packages (the
  same on every machine), else as recorded.
- `sarif_location(path, root)`: the same path as a SARIF artifactLocation, an RFC 3986 URI
  (percent-encoded: `#`, `?`, spaces, non-ASCII), relative to `%SRCROOT%` (the repository
  root, which code-scanning services resolve themselves) when it is under the root.
- `atomic_write(path, text)`: a temporary file in the same directory, then `os.replace`, so a
  full disk or a kill never leaves a half-written baseline or report.
- `check_writable(path)`: fail before a long audit, not after it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote

SRCROOT = "%SRCROOT%"
_LIBRARY_MARKERS = ("/site-packages/", "/dist-packages/", "\\site-packages\\", "\\dist-packages\\")


def package_path(path: str) -> str | None:
    """The part after the (innermost) site-packages of an installed file - `torch/_inductor/
    ir.py`, `transformers/...`: the same on every machine - or None for any other path."""
    for marker in _LIBRARY_MARKERS:
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return None


def rel(path: str, root: Path) -> str:
    if not path or path.startswith("<"):
        return path
    installed = package_path(path)
    if installed is not None:
        return installed
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path


def sarif_location(path: str, root: Path) -> dict[str, str]:
    """`{"uri": ..., "uriBaseId": "%SRCROOT%"}` for a path under `root`; an absolute `file:`
    URI otherwise; a relative URI for installed-library paths (`torch/...`) and pseudo-files
    (`<compiled graph>`), which have no place on disk that a viewer could open."""
    shown = rel(path, root)
    if shown and not shown.startswith("<") and not PurePosixPath(shown).is_absolute():
        under_root = package_path(path) is None
        out = {"uri": quote(shown, safe="/")}
        if under_root:
            out["uriBaseId"] = SRCROOT
        return out
    if shown.startswith("/"):
        return {"uri": "file://" + quote(shown, safe="/")}
    return {"uri": quote(shown or "<unknown>", safe="/")}


def check_writable(path: Path) -> None:
    """ValueError unless `path` can be written: its nearest existing ancestor must be a
    directory we can create a file in (tried for real). Checked before an audit that takes a
    minute, not after it."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; name a file to write")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{path} cannot be written: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ValueError(
            f"{path} cannot be written ({exc.strerror or exc} in {probe}); choose another path"
        ) from None


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` all at once: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
