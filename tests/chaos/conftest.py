"""Fixtures for the chaos suite. The nats-server, namespace, settings, app and server come
from ``tests/conftest.py``; the child processes (workers and ``tether serve`` that a test can
SIGKILL) and the headless browser come from the integration tests, reused as they are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.report import ROWS, table
from tests.integration.test_dashboard_browser import browser
from tests.integration.test_resilience import children
from tether.engine.nats_server import NatsServer

__all__ = ["browser", "children", "own_nats"]


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test alone, so it can be killed and restarted on the same port
    and store; ``sync_always`` so that what was acknowledged survives the SIGKILL."""
    server = NatsServer(store_dir=tmp_path / "nats", sync_always=True).start()
    try:
        yield server
    finally:
        server.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "chaos scenarios")
        terminalreporter.write_line(table(ROWS))
