"""The package's version constant is the installed distribution's (pyproject.toml)."""

from importlib.metadata import version

import watcher


def test_the_version_constant_is_the_distributions() -> None:
    assert watcher.__version__ == version("watcher")
