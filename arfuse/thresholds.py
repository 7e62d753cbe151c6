"""When the fused allreduce+RMSNorm kernel pays, and which of its strategies to run.

The table is keyed by GPU architecture (compute capability family: ``sm90`` = Hopper,
``sm100`` = Blackwell) and tensor-parallel world size. Each entry holds two sizes in MB
(MiB, 2**20 bytes) of *activation* - the per-rank ``[tokens, hidden]`` tensor that enters the
allreduce:

    oneshot_max_mb   one-shot kernel while the activation is <= this
    fused_max_mb     two-shot kernel up to this; above it the unfused path
                     (NCCL allreduce + compiled add+RMSNorm) is faster

Where the values come from (``Thresholds.source`` says it for every entry):

- sm90 TP2 / TP4: `arfuse tune` over `arfuse bench` on H200 at TP2 and TP4 (bf16, hidden 4096
  and 8192; bench/results/h200_tp*_bench.md), with per-hidden entries: at TP2 one-shot wins up
  to 32 MB at hidden 4096 and at every measured size (256 MB) at hidden 8192; at TP4 one-shot
  wins to 2-3 MB, two-shot to 8 MB (hidden 4096) / 16 MB (hidden 8192). The limits assume the
  unfused side is plain Inductor (NCCL + compiled add+RMSNorm), as under `arfuse.compile`.
- everything else: the seed values (vLLM's table), not yet measured by us.

Overrides, highest first: `set_override()` / `override()` (in-process, for tuning and tests), the
JSON file named by the ``ARFUSE_THRESHOLDS`` environment variable (read once per process; call
`reload()` after changing it), then the defaults. An override replaces only the entries it
names. The file format is what ``arfuse thresholds --json`` prints::

    {"sm90": {"4": {"oneshot_max_mb": 3, "fused_max_mb": 8}}}

Limits are checked when read (MB in [0, MAX_MB], else a ValueError naming the file and entry);
entries the kernel cannot use and one-shot limits above the fusion limit are warned once.

`lookup(capability, world_size, dtype, hidden)` turns an entry into token counts for one
hidden size and dtype.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arfuse import optable
from arfuse.jsonfile import read_json

if TYPE_CHECKING:  # the table itself needs no torch: `arfuse thresholds` stays fast
    import torch

ENV_VAR = "ARFUSE_THRESHOLDS"
MIB = 2**20
MAX_MB = 2**20  # 1 TiB of activation per rank: no GPU holds more; keeps MB -> tokens finite

_TUNED_TP2 = "tuned by arfuse tune on H200 TP2 (bench/results/h200_tp2_bench.md)"
_TUNED_TP4 = "tuned by arfuse tune on H200 TP4 (bench/results/h200_tp4_bench.md)"
_SEED = "seed (vLLM's table), not measured by arfuse"


@dataclass(frozen=True)
class Thresholds:
    """One table entry: activation sizes in MB (MiB) for one arch and world size.

    `hidden` holds entries for particular hidden sizes that take precedence over this one
    (measured crossovers differ by hidden size: at TP2 on H200 fusion stops paying past 32 MB at
    hidden 4096 but still wins at 256 MB at hidden 8192)."""

    oneshot_max_mb: float
    fused_max_mb: float
    source: str = ""
    hidden: tuple[tuple[int, Thresholds], ...] = ()

    def for_hidden(self, hidden: int) -> Thresholds:
        return dict(self.hidden).get(int(hidden), self)

    def __post_init__(self) -> None:
        for name in ("oneshot_max_mb", "fused_max_mb"):
            problem = _mb_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"thresholds: {problem}")


def _mb_problem(name: str, value: Any) -> str | None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_MB
    ):
        return (
            f"{name} must be a finite number of MB in [0, {MAX_MB}] (0: never fused), got {value!r}"
        )
    return None


@dataclass(frozen=True)
class Limits:
    """An entry resolved for one hidden size and dtype: token counts instead of MB."""

    arch: str
    world_size: int
    hidden: int
    dtype: torch.dtype
    oneshot_max_tokens: int  # one-shot for tokens <= this
    fused_max_tokens: int  # two-shot (or one-shot) for tokens <= this; unfused above
    thresholds: Thresholds

    def token_counts(self) -> list[int]:
        """The token counts where behaviour switches, each as t-1, t, t+1 (for sweeps)."""
        out: set[int] = set()
        for t in (self.oneshot_max_tokens, self.fused_max_tokens):
            out.update(x for x in (t - 1, t, t + 1) if x >= 1)
        return sorted(out)


DEFAULT_TABLE: dict[str, dict[int, Thresholds]] = {
    # SM90 TP2/TP4:
    # `arfuse tune bench/results/h200_tp2_bench.json bench/results/h200_tp4_bench.json`
    # (H200, bf16, residual on, 2026-11-27). The general entry serves hidden sizes not measured.
    "sm90": {
        2: Thresholds(
            256,
            256,
            _TUNED_TP2 + "; worst 1.081x of best at 16384 tokens, hidden 4096",
            hidden=(
                (
                    4096,
                    Thresholds(
                        32.0078125,
                        32.0078125,
                        _TUNED_TP2 + ", hidden 4096: one-shot best to 32 MB, unfused from 48 MB",
                    ),
                ),
                (
                    8192,
                    Thresholds(
                        256,
                        256,
                        _TUNED_TP2 + ", hidden 8192: one-shot "
                        "best at every size measured (to 256 MB)",
                    ),
                ),
            ),
        ),
        4: Thresholds(
            2.015625,
            15.984375,
            _TUNED_TP4 + "; worst 1.054x of best at 1025 tokens, hidden 8192",
            hidden=(
                (
                    4096,
                    Thresholds(
                        2,
                        8.0078125,
                        _TUNED_TP4 + ", hidden 4096: one-shot to 2 MB, two-shot to 8 MB",
                    ),
                ),
                (
                    8192,
                    Thresholds(
                        3,
                        16.015625,
                        _TUNED_TP4 + ", hidden 8192: one-shot to 3 MB, two-shot to 16 MB",
                    ),
                ),
            ),
        ),
        8: Thresholds(oneshot_max_mb=0.5, fused_max_mb=0.5, source=_SEED),
    },
    "sm100": {
        2: Thresholds(oneshot_max_mb=32, fused_max_mb=64, source=_SEED),
        4: Thresholds(oneshot_max_mb=4, fused_max_mb=32, source=_SEED),
        8: Thresholds(oneshot_max_mb=1, fused_max_mb=1, source=_SEED),
    },
}

_override: dict[str, dict[int, Thresholds]] = {}
_file_cache: tuple[str, dict[str, dict[int, Thresholds]]] | None = None
_generation = 0  # bumped on every change, so callers may cache resolved Limits
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def generation() -> int:
    """A counter that changes whenever the table in force may have changed."""
    return _generation


def arch_of(capability: Any) -> str:
    """Normalise a compute capability to its table key.

    Accepts ``(9, 0)``, ``"9.0"``, ``90``, ``"90"``, ``"sm90"``, ``"sm_90a"``; returns ``"sm90"``
    (Hopper) or ``"sm100"`` (any 10.x, Blackwell) and ``"sm<major*10>"`` otherwise.
    """
    major = None
    if isinstance(capability, (tuple, list)) and capability:
        major = int(capability[0])
    elif isinstance(capability, int) and not isinstance(capability, bool):
        major = capability // 10 if capability >= 10 else capability
    elif isinstance(capability, str):
        text = capability.strip().lower().removeprefix("sm").lstrip("_").rstrip("af")
        try:
            if "." in text:
                major = int(text.split(".")[0])
            else:
                major = int(text) // 10 if len(text) >= 2 else int(text)
        except ValueError:
            major = None
    if major is None or major < 1:
        raise ValueError(
            f"thresholds: cannot read compute capability {capability!r}; write it "
            "as (9, 0), '9.0' or 'sm90'"
        )
    return f"sm{major * 10}"


def parse_table(data: Any, where: str = "thresholds") -> dict[str, dict[int, Thresholds]]:
    """Validate a JSON-shaped table ``{arch: {world_size: {oneshot_max_mb, fused_max_mb}}}``.

    Arch keys go through `arch_of`; world sizes may be ints or digit strings; entries may be
    `Thresholds` objects or dicts (``source`` optional, defaulting to `where`). Entries the
    fused kernel can never use (an arch or world size it does not run on) and one-shot limits
    above the fusion limit are kept but warned about, once each.
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{where}: expected an object like "
            '{"sm90": {"4": {"oneshot_max_mb": 2, "fused_max_mb": 8}}}, '
            f"got {type(data).__name__}"
        )
    table: dict[str, dict[int, Thresholds]] = {}
    for arch_key, per_world in data.items():
        arch = arch_of(arch_key)
        if arch not in optable.KERNEL_ARCHS:
            _warn_once(
                f"{where}: entry {arch_key!r} ({arch}) is never used: the fused kernel "
                f"runs only on {', '.join(optable.KERNEL_ARCHS)}, so {arch} always takes "
                "the unfused path"
            )
        if not isinstance(per_world, Mapping):
            raise ValueError(
                f"{where}: {arch_key!r} must map world sizes to entries, got "
                f"{type(per_world).__name__}"
            )
        for ws_key, entry in per_world.items():
            try:
                ws = int(ws_key)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: world size {ws_key!r} under {arch_key!r} is not an integer"
                ) from None
            if ws < 1:
                raise ValueError(f"{where}: world size must be >= 1, got {ws}")
            if ws not in optable.KERNEL_WORLD_SIZES:
                _warn_once(
                    f"{where}: entry {arch_key}/{ws_key} is never used: the fused kernel "
                    f"runs only at world sizes {optable.KERNEL_WORLD_SIZES}"
                )
            if isinstance(entry, Thresholds):
                value = entry
            elif isinstance(entry, Mapping):
                value = _parse_entry(entry, f"{where}: entry {arch_key}/{ws_key}", where)
            else:
                raise ValueError(
                    f"{where}: entry {arch_key}/{ws_key} must be an object, got "
                    f"{type(entry).__name__}"
                )
            table.setdefault(arch, {})[ws] = value
    return table


def _parse_entry(entry: Mapping, what: str, where: str, nested: bool = False) -> Thresholds:
    allowed = {"oneshot_max_mb", "fused_max_mb", "source"} | (set() if nested else {"hidden"})
    unknown = set(entry) - allowed
    missing = {"oneshot_max_mb", "fused_max_mb"} - set(entry)
    if unknown or missing:
        raise ValueError(
            f"{what} has unknown keys {sorted(unknown)} / lacks {sorted(missing)}; "
            'write {"oneshot_max_mb": MB, "fused_max_mb": MB} (optionally with '
            '"hidden": {"8192": {...}} for per-hidden-size entries)'
        )
    per_hidden = entry.get("hidden") or {}
    if not isinstance(per_hidden, Mapping):
        raise ValueError(f'{what}: "hidden" must map hidden sizes to entries')
    parsed = []
    for h_key, sub in per_hidden.items():
        try:
            h = int(h_key)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: hidden size {h_key!r} is not an integer") from None
        if not isinstance(sub, Mapping) or h < 1:
            raise ValueError(f"{what}: hidden {h_key!r} must be >= 1 and map to an entry")
        parsed.append((h, _parse_entry(sub, f"{what}/hidden {h}", where, nested=True)))
    for name in ("oneshot_max_mb", "fused_max_mb"):
        problem = _mb_problem(name, entry[name])
        if problem:
            raise ValueError(f"{what}: {problem}")
    if entry["oneshot_max_mb"] > entry["fused_max_mb"]:
        _warn_once(
            f"{what}: oneshot_max_mb {entry['oneshot_max_mb']} > fused_max_mb "
            f"{entry['fused_max_mb']}; nothing above the fusion limit is fused, so "
            "one-shot stops at fused_max_mb too"
        )
    source = str(entry.get("source", where))
    return Thresholds(entry["oneshot_max_mb"], entry["fused_max_mb"], source, tuple(sorted(parsed)))


def _file_table() -> dict[str, dict[int, Thresholds]]:
    global _file_cache
    path = os.environ.get(ENV_VAR, "")
    if _file_cache is not None and _file_cache[0] == path:
        return _file_cache[1]
    table: dict[str, dict[int, Thresholds]] = {}
    if path:
        data = read_json(
            path,
            f"{ENV_VAR}={path!r}",
            "point it at a thresholds JSON file (`arfuse thresholds --json` prints one) or "
            "unset it",
        )
        table = parse_table(data, where=f"{ENV_VAR} file {path}")
    _file_cache = (path, table)
    return table


def reload() -> None:
    """Forget the cached ``ARFUSE_THRESHOLDS`` file (re-read on next use)."""
    global _file_cache, _generation
    _file_cache = None
    _generation += 1


def set_override(new: Mapping | None) -> None:
    """Replace the in-process override (None clears it). Same shape as the JSON file."""
    global _override, _generation
    _override = {} if new is None else parse_table(new, where="override")
    _generation += 1


@contextlib.contextmanager
def override(new: Mapping) -> Iterator[None]:
    """``with override({"sm90": {2: {...}}}):`` - the previous override comes back after."""
    global _override, _generation
    saved = _override
    set_override(new)
    try:
        yield
    finally:
        _override = saved
        _generation += 1


def table() -> dict[str, dict[int, Thresholds]]:
    """The table in force: defaults, then the file, then the in-process override."""
    merged = {arch: dict(per_world) for arch, per_world in DEFAULT_TABLE.items()}
    for layer in (_file_table(), _override):
        for arch, per_world in layer.items():
            merged.setdefault(arch, {}).update(per_world)
    return merged


def entry(
    capability: Any, world_size: int, tbl: Mapping[str, Mapping[int, Thresholds]] | None = None
) -> Thresholds | None:
    """The entry for this arch and world size, or None when there is none (no fused kernel).
    `tbl`: a table to read instead of the one in force (a `FusionPolicy`'s snapshot)."""
    return (table() if tbl is None else tbl).get(arch_of(capability), {}).get(int(world_size))


def lookup(
    capability: Any,
    world_size: int,
    dtype: torch.dtype,
    hidden: int,
    tbl: Mapping[str, Mapping[int, Thresholds]] | None = None,
) -> Limits | None:
    """Token limits for one (arch, world size, dtype, hidden), or None without an entry."""
    if hidden < 1:
        raise ValueError(f"thresholds.lookup: hidden must be >= 1, got {hidden}")
    found = entry(capability, world_size, tbl)
    if found is None:
        return None
    found = found.for_hidden(hidden)
    row_bytes = hidden * dtype.itemsize
    fused = int(found.fused_max_mb * MIB // row_bytes)
    oneshot = min(int(found.oneshot_max_mb * MIB // row_bytes), fused)
    return Limits(arch_of(capability), int(world_size), hidden, dtype, oneshot, fused, found)


def threshold_token_counts(
    capability: Any, world_size: int, dtype: torch.dtype, hidden: int
) -> list[int]:
    """Every token count where the strategy switches, +-1 (empty without an entry)."""
    limits = lookup(capability, world_size, dtype, hidden)
    return limits.token_counts() if limits else []


def to_json(tbl: Mapping[str, Mapping[int, Thresholds]] | None = None) -> dict:
    """The table as the JSON object the override file takes."""
    tbl = table() if tbl is None else tbl
    return {
        arch: {str(ws): _entry_json(e) for ws, e in sorted(per_world.items())}
        for arch, per_world in sorted(tbl.items())
    }


def _entry_json(e: Thresholds) -> dict:
    out: dict[str, Any] = {
        "oneshot_max_mb": e.oneshot_max_mb,
        "fused_max_mb": e.fused_max_mb,
        "source": e.source,
    }
    if e.hidden:
        out["hidden"] = {str(h): _entry_json(sub) for h, sub in e.hidden}
    return out
