"""`[tool.arfuse]`: found from the working directory upward, checked key by key."""

import pytest

from arfuse.audit import config

PYPROJECT = """
[project]
name = "team-model"

[tool.arfuse]
targets = ["audit/targets.py:build", "team.models:build_tp"]
select = ["ARF1"]
ignore = ["ARF107"]
baseline = "audit/baseline.json"
max-tokens = 16384
sizes = [16, 2048]
timeout = 90

[tool.arfuse.per-file-ignores]
"legacy/*.py" = ["ARF102"]
"""


def test_found_from_a_subdirectory_upward(tmp_path):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    # a pyproject.toml without [tool.arfuse] on the way up is skipped, as ruff skips it
    (tmp_path / "src" / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    cfg = config.find(sub)
    assert cfg.path == tmp_path / "pyproject.toml"
    assert cfg.default_map() == {
        "select": ["ARF1"],
        "ignore": ["ARF107"],
        "max_tokens": 16384,
        "timeout": 90,
        "sizes": "16,2048",
        "baseline": str(tmp_path / "audit/baseline.json"),
    }
    assert cfg.targets() == [f"{tmp_path}/audit/targets.py:build", "team.models:build_tp"]
    assert cfg.per_file_ignores() == {f"{tmp_path}/legacy/*.py": ["ARF102"]}


def test_no_config_anywhere_is_empty(tmp_path):
    assert config.find(tmp_path).path is None
    assert config.find(tmp_path).default_map() == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('selct = ["ARF1"]', "unknown key 'selct'"),
        ('per_file_ignores = {"a.py" = ["ARF1"]}', "did you mean 'per-file-ignores'?"),
        ("sizes = []", "sizes = [] is not valid"),
        ("sizes = [0, 16]", "sizes = [0, 16] is not valid"),
        ("timeout = 0", "timeout = 0 is not valid"),
        ('targets = "a.py:build"', "it takes a list of targets"),
        ("min-tokens = 64\nmax-tokens = 8", "min-tokens = 64 is above max-tokens = 8"),
    ],
)
def test_bad_keys_name_the_key(tmp_path, body, message):
    (tmp_path / "pyproject.toml").write_text(f"[tool.arfuse]\n{body}\n")
    with pytest.raises(ValueError, match="pyproject.toml") as err:
        config.find(tmp_path)
    assert message in str(err.value)


def test_explicit_config_file(tmp_path):
    (tmp_path / "arfuse.toml").write_text('ignore = ["ARF2"]\n')
    assert config.load(tmp_path / "arfuse.toml").default_map() == {"ignore": ["ARF2"]}
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"has no \[tool.arfuse\] table"):
        config.load(tmp_path / "pyproject.toml")
    with pytest.raises(ValueError, match="no such file"):
        config.load(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("ignore = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        config.load(tmp_path / "broken.toml")
