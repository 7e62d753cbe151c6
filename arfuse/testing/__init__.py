"""Helpers for users' test suites (and ours): `assert_dynamic`, and `SpawnedGroup` re-exported
from `arfuse.process_group` (where production code imports it from)."""

from arfuse.process_group import RankError, SpawnedGroup

__all__ = ["RankError", "SpawnedGroup", "assert_dynamic"]


def __getattr__(name: str):
    # imported lazily: the audit pulls in torch.compile machinery that plain
    # SpawnedGroup users do not need
    if name == "assert_dynamic":
        from arfuse.testing.dynamic import assert_dynamic

        return assert_dynamic
    raise AttributeError(name)
