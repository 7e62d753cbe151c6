"""What the rules look at: one rank's parsed trace plus what the driver knows about the run.

`AuditContext` joins the run (`arfuse.audit.trace.run_info.RunInfo`) with the trace: which
compile happened at which num_tokens (the driver logs an `arfuse_audit_call` artifact before
every call), which shape symbols are token symbols, and the guards' judgement.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING

from arfuse.audit.judge.domain import TokenDomain
from arfuse.audit.trace.records import (
    CALL_ARTIFACT,
    Artifact,
    CompileId,
    CreateSymbol,
    GuardAdded,
    SymbolicShapeSpecialization,
    Trace,
    UnknownEvent,
)
from arfuse.audit.trace.run_info import RunInfo

if TYPE_CHECKING:
    from arfuse.audit.judge.verdicts import Judgement

_SIZE_SOURCE = re.compile(r"\.size\(\)\[(\d+)\]$")
_INT_ARG_SOURCE = re.compile(r"^L\['[^']+'\]$")
_INT = re.compile(r"^-?\d+$")


def pretty_source(source: str) -> str:
    """`L['x'].size()[0]` -> `x.size()[0]`: how a user spells the input."""
    return re.sub(r"L\['([^']+)'\]", r"\1", source)


class AuditContext:
    """One rank's trace + the run; cached lookups the rules share."""

    def __init__(self, trace: Trace, run: RunInfo | None = None, rank: int = 0) -> None:
        self.trace = trace
        self.run = run or RunInfo()
        self.rank = rank
        self.domain = TokenDomain(self.run.min_tokens, self.run.max_tokens)

    @cached_property
    def judgement(self) -> Judgement:
        """Every token guard judged over the domain (`arfuse.audit.judge.verdicts.judge`),
        computed on first use: no caller has to run it first."""
        from arfuse.audit.judge.verdicts import judge

        return judge(self)

    # -- which call triggered which compile ---------------------------------------------
    @cached_property
    def compile_sizes(self) -> dict[CompileId, int]:
        """compile id -> num_tokens of the driver call during which it was compiled."""
        out: dict[CompileId, int] = {}
        current: int | None = None
        for e in self.trace.events:
            if isinstance(e, Artifact) and e.name == CALL_ARTIFACT:
                payload = e.payload_json()
                if isinstance(payload, dict) and isinstance(payload.get("num_tokens"), int):
                    current = payload["num_tokens"]
                continue
            if e.compile_id is not None and current is not None:
                out.setdefault(e.compile_id, current)
        for cid, n in self._described_sizes().items():
            out.setdefault(cid, n)
        return out

    def _described_sizes(self) -> dict[CompileId, int]:
        """A trace without our call markers: read the token size of each compile's inputs from
        Dynamo's describe_tensor/describe_source events."""
        tensors: dict[tuple, list] = {}
        out: dict[CompileId, int] = {}
        for e in self.trace.of(UnknownEvent):
            meta = e.metadata if isinstance(e.metadata, dict) else {}
            key = (e.compile_id, meta.get("describer_id"), meta.get("id"))
            if e.name == "describe_tensor" and isinstance(meta.get("size"), list):
                tensors[key] = meta["size"]
            elif e.name == "describe_source" and key in tensors and e.compile_id not in out:
                for d, n in enumerate(tensors[key]):
                    if isinstance(n, int) and self.is_token_source(
                        f"{meta.get('source')}.size()[{d}]"
                    ):
                        out[e.compile_id] = n
                        break
        return out

    # -- token symbols --------------------------------------------------------------------
    def is_token_source(self, source: str) -> bool:
        if self.run.token_sources:
            return source in self.run.token_sources
        m = _SIZE_SOURCE.search(source)
        return m is not None and m.group(1) == "0" and source.startswith("L[")

    @cached_property
    def token_symbols(self) -> dict[tuple[CompileId | None, str], str]:
        """(compile id, symbol) -> the token source it stands for."""
        out: dict[tuple[CompileId | None, str], str] = {}
        for e in self.trace.of(CreateSymbol):
            if self.is_token_source(e.source) or self._fallback_token(e) or self._int_token(e):
                out[(e.compile_id, e.symbol)] = e.source
        for e in self.trace.of(GuardAdded):  # TORCH_DTRACE: symbol -> source maps
            for sym, src in e.symbol_to_sources.items():
                srcs = src if isinstance(src, list) else [src]
                if any(self.is_token_source(str(s)) for s in srcs):
                    out.setdefault((e.compile_id, sym), str(srcs[0]))
        for e in self.trace.of(SymbolicShapeSpecialization):
            if any(self.is_token_source(s) for s in e.sources):
                out.setdefault((e.compile_id, e.symbol), e.sources[0])
        return out

    def _fallback_token(self, e: CreateSymbol) -> bool:
        """A frame entered after a graph break names its inputs differently; accept a size
        symbol of a token dim whose value is the num_tokens being fed."""
        if not self.run.token_sources or not self.run.token_dims:
            return False
        m = _SIZE_SOURCE.search(e.source)
        n = self.compile_sizes.get(e.compile_id) if e.compile_id else None
        dims = {d for ds in self.run.token_dims.values() for d in ds}
        return m is not None and int(m.group(1)) in dims and n is not None and e.val == str(n)

    def _int_token(self, e: CreateSymbol) -> bool:
        """An int argument equal to num_tokens (`x[:num_valid]` with num_valid == n): the same
        number as the token dim, whatever its name. Needs a size above 2 to tell them apart."""
        n = self.compile_sizes.get(e.compile_id) if e.compile_id else None
        return bool(_INT_ARG_SOURCE.match(e.source)) and n is not None and n > 2 and e.val == str(n)

    def symbol_values(self, cid: CompileId | None) -> dict[str, int]:
        """Every symbol's value in the compile that created it (its example size)."""
        return self._symbol_values.get(cid, {})

    @cached_property
    def _symbol_values(self) -> dict[CompileId | None, dict[str, int]]:
        out: dict[CompileId | None, dict[str, int]] = {}
        for e in self.trace.of(CreateSymbol):
            if _INT.match(e.val or ""):
                out.setdefault(e.compile_id, {})[e.symbol] = int(e.val)
        return out

    def token_source(self, cid: CompileId | None, symbol: str) -> str | None:
        return self.token_symbols.get((cid, symbol))

    @cached_property
    def token_source_names(self) -> set[str]:
        """Sources as recompile reasons spell them: L['x'].size()[0] -> x.size()[0]."""
        names = set(self.run.token_sources) | set(self.token_symbols.values())
        return {re.sub(r"L\['([^']+)'\]", r"\1", s) for s in names} | names

    @cached_property
    def all_paths(self) -> list[str]:
        return sorted(set(self.trace.strings.values()))

    def resolve_path(self, suffix: str) -> str:
        """Recompile reasons cut paths to their last characters; find the full one."""
        matches = [p for p in self.all_paths if p.endswith(suffix)]
        return max(matches, key=len) if matches else suffix
