import pytest

from arfuse.testing import SpawnedGroup


@pytest.fixture(scope="session")
def gloo2():
    """One real 2-rank gloo group for the whole session (spawning costs seconds)."""
    group = SpawnedGroup(world_size=2, backend="gloo", timeout=240)
    yield group
    group.close()


@pytest.fixture
def group2(gloo2):
    """The session's group, respawned if an earlier test killed it (a timeout or a crash)."""
    if not gloo2.alive:
        pytest.fail("the 2-rank gloo group died in an earlier test; see that failure")
    return gloo2
