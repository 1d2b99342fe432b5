"""A namespace's partition count: chosen once, read by every process, never changed."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tether import DurableContext, Tether
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.namespace import PartitionCountMismatchError
from tether.engine.provision import ProvisionError
from tether.serve import TetherServer


async def test_every_process_uses_the_count_the_namespace_was_created_with(
    settings: Settings,
) -> None:
    first = await Connection.open(
        Settings(nats_url=settings.nats_url, namespace=settings.namespace, partitions=4)
    )
    await first.close()
    conn = await Connection.open(settings)  # no count asked for: the namespace's own
    try:
        assert conn.settings.names.partitions == 4
        assert conn.settings.names.run_subject("r1", "requested").split(".")[-1] in {
            "0",
            "1",
            "2",
            "3",
        }
    finally:
        await conn.close()
    with pytest.raises(PartitionCountMismatchError, match="has 4 partitions"):
        await Connection.open(
            Settings(nats_url=settings.nats_url, namespace=settings.namespace, partitions=32)
        )


async def test_runs_complete_in_a_namespace_of_few_partitions(settings: Settings) -> None:
    small = Settings(nats_url=settings.nats_url, namespace=settings.namespace, partitions=3)
    app = Tether(settings=settings)

    @app.durable_task(name="echo")
    async def echo(data: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        return await ctx.step("copy", lambda: dict(data))

    async with TetherServer(small) as server, app, app.worker("w", tasks=[echo], slots=4):
        assert server.owner is not None and server.owner.partitions == [0, 1, 2]
        results = await asyncio.gather(*(echo.run({"n": i}) for i in range(12)))
    assert [r["n"] for r in results] == list(range(12))


async def test_serve_refuses_another_partition_count(settings: Settings, app: Tether) -> None:
    await app.connection()  # provisions the namespace with the default count
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.cli.main",
        "serve",
        "--nats-url",
        settings.nats_url,
        "--namespace",
        settings.namespace,
        "--partitions",
        "8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, (out, err)
    assert b"has 32 partitions" in err and b"asked for 8" in err, err


def test_a_mismatch_is_a_provisioning_error() -> None:
    assert issubclass(PartitionCountMismatchError, ProvisionError)
