"""Fixtures of the HTTP API tests: ``tether serve`` with the API on a free port, tokens of
three kinds, and an HTTP session on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tether.engine.config import Settings
from tether.operator.auth import TokenAuth
from tether.serve import TetherServer

ALICE = "alice-token-0123456789"  # may decide approval:* and cancel
BOB = "bob-token-0123456789ab"  # may only push payments:*
READER = "reader-token-012345678"  # read-only

AUTH = TokenAuth.parse(
    {
        ALICE: {"name": "alice", "keys": ["approval:*"], "cancel": True},
        BOB: {"name": "bob", "keys": ["payments:*"]},
        READER: {"name": "auditor"},
    },
    source="test",
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api_server(settings: Settings) -> AsyncIterator[TetherServer]:
    srv = TetherServer(settings, http="127.0.0.1:0", auth=AUTH)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def http(api_server: TetherServer) -> AsyncIterator[aiohttp.ClientSession]:
    assert api_server.api is not None
    async with aiohttp.ClientSession(api_server.api.url) as session:
        yield session
