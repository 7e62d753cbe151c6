"""Helpers for users' test suites (and ours)."""

from arfuse.testing.process_group import RankError, SpawnedGroup

__all__ = ["RankError", "SpawnedGroup"]
