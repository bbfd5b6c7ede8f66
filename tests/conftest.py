"""Test-wide set-up: structlog configured once for JSON, as in production."""

from __future__ import annotations

import pytest

from watcher.logging import configure_logging


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-soak", action="store_true", default=False, help="run the long soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with make soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _logging() -> None:
    configure_logging("json", "warning")
