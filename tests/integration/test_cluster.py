"""On a three-node cluster with every stream replicated three times, losing the node that
leads the run log loses nothing: waiting runs resume on the approvals pushed after it died,
and new runs go through end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.integration.cluster import NatsCluster
from tests.integration.procs import (
    APPROVAL_KEY,
    approve,
    define_tasks,
    executions,
    push_approvals,
    trigger_approvals,
)
from tether import Tether
from tether.engine.config import Settings
from tether.serve import TetherServer


@pytest.fixture
async def cluster() -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster().start()
    try:
        yield nodes
    finally:
        nodes.cleanup()


async def start_serve(settings: Settings) -> TetherServer:
    """``tether serve`` in process, once the cluster has elected its JetStream leaders."""

    async def started() -> TetherServer | None:
        srv = TetherServer(settings)
        try:
            await srv.start()
        except Exception:
            await srv.stop()
            return None
        return srv

    return await wait_until(started, timeout=30, interval=0.5, message="JetStream on the cluster")


async def test_losing_the_run_log_leader_loses_nothing(
    cluster: NatsCluster, namespace: str, tmp_path: Path
) -> None:
    runs = 10
    settings = Settings(nats_url=cluster.url, namespace=namespace, replicas=3)
    srv = await start_serve(settings)
    app = Tether(settings=settings)
    tasks = define_tasks(app)
    try:
        conn = await app.connection()
        info = await conn.js.stream_info(settings.names.runs_stream)
        assert info.config.num_replicas == 3
        async with app.worker("w", tasks=[tasks["approval"]], slots=4):
            refs = await trigger_approvals(tasks["approval"], runs, tmp_path)

            async def all_waiting() -> bool:
                infos = await asyncio.gather(*(app.runs.get(r.run_id) for r in refs))
                return all(i.status == "waiting" for i in infos)

            await wait_until(all_waiting, timeout=30, message="every run to wait")

            leader = (await conn.js.stream_info(settings.names.runs_stream)).cluster
            assert leader is not None and leader.leader is not None
            cluster.kill(leader.leader)

            await push_approvals(app, [ref.run_id for ref in refs], within=30)
            outputs = await asyncio.gather(*(ref.result(timeout=60) for ref in refs))
            assert outputs == [{"decision": "approve", "action": {"pay": i}} for i in range(runs)]
            new_leader = (await conn.js.stream_info(settings.names.runs_stream)).cluster
            assert new_leader is not None and new_leader.leader not in (None, leader.leader)

            # New work goes through on the two remaining nodes.
            fresh = await tasks["approval"].run_no_wait({"amount": 77, "dir": str(tmp_path)})

            async def fresh_waiting() -> bool:
                return (await app.runs.get(fresh.run_id)).status == "waiting"

            await wait_until(fresh_waiting, timeout=30, message="the new run to wait")
            await app.events.push(APPROVAL_KEY, approve(fresh.run_id))
            assert await fresh.result(timeout=30) == {"decision": "approve", "action": {"pay": 77}}

        for ref in [*refs, fresh]:
            types = [e.type for e in (await app.runs.get(ref.run_id)).events]
            assert types.count("run.wait_satisfied.v1") == 1, types
            assert types.count("run.completed.v1") == 1, types
        assert executions(tmp_path, "propose") == runs + 1
    finally:
        await srv.stop()
        await app.close()
