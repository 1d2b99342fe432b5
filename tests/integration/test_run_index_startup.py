"""The run index starts from its checkpoint, not from all history, and holds open and recent
runs only: a restart reads the runs it held and the run log after the checkpoint; an evicted
run is still found on demand (``lookup``, ``GET /api/runs/{id}``); older finished runs page
through the run log (``GET /api/runs?before=``, ``tether runs list --before``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

import tether.projections.run_index
from tests.helpers import wait_for_status, wait_until
from tests.integration.conftest import READER, bearer
from tether import DurableContext, Tether
from tether.cli.main import main
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.provision import ensure_bucket
from tether.http.schemas import NEXT_BEFORE_HEADER
from tether.projections.checkpoints import Checkpoint, Checkpoints
from tether.projections.run_index import RunIndex
from tether.projections.run_index_checkpoint import checkpoint_name
from tether.serve import TetherServer


def define(app: Tether) -> tuple[Any, Any]:
    @app.durable_task(name="double")
    async def double(input: dict[str, int], ctx: DurableContext) -> int:
        return int(await ctx.step("double", lambda: input["x"] * 2))

    @app.durable_task(name="payment-approval", execution_timeout=timedelta(minutes=5))
    async def approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        decision = await ctx.wait_for_event(
            "approval:decision", expression=f"input.runId == '{ctx.run_id}'"
        )
        return {"decision": decision["decision"]}

    return double, approval


async def finish_in_order(task: Any, count: int) -> list[str]:
    """Run ``count`` runs one after another, so they finish in that order."""
    ids = []
    for i in range(count):
        ref = await task.run_no_wait({"x": i})
        await ref.result(timeout=15)
        ids.append(ref.run_id)
    return ids


async def last_seq(conn: Connection) -> int:
    info = await conn.js.stream_info(conn.settings.names.runs_stream)
    return int(info.state.last_seq)


async def checkpoints(conn: Connection) -> Checkpoints:
    bucket = conn.settings.names.checkpoints_bucket
    return Checkpoints(await ensure_bucket(conn.js, conn.settings, bucket))


def statuses(index: RunIndex) -> dict[str, str]:
    return {run_id: view.state.status for run_id, view in index.runs.items()}


async def started(conn: Connection, **options: Any) -> RunIndex:
    index = RunIndex(conn, **options)
    await index.start()
    return index


async def test_a_restarted_index_reads_its_checkpoint_and_the_tail_not_the_history(
    app: Tether, server: TetherServer
) -> None:
    double, approval = define(app)
    conn = await app.connection()
    async with app.worker("w", slots=4):
        waiting = [(await approval.run_no_wait({"x": i})).run_id for i in range(3)]
        for run_id in waiting:
            await wait_for_status(app, run_id, "waiting")
        done = await finish_in_order(double, 12)

        first = await started(conn, recent_finished=5)
        assert first.started_after == 0  # no checkpoint yet: the whole log, once
        assert first.handled == await last_seq(conn)
        # memory follows open runs: the earlier finished ones were dropped on the way
        assert set(first.runs) == {*waiting, *done[-5:]}
        await first.stop()  # writes the checkpoint
        position = first.cursor

        later = await finish_in_order(double, 2)
        await app.events.push("approval:decision", {"runId": waiting[0], "decision": "approve"})
        await wait_for_status(app, waiting[0], "completed")

    end = await last_seq(conn)
    second = await started(conn, recent_finished=5)
    try:
        assert second.started_after == position
        assert second.loaded == 8  # the 3 open runs and the 5 recent finished it held
        assert second.handled == end - position  # the tail since the checkpoint, no more
        assert second.cursor == end
        assert set(second.runs) == {*waiting, done[-2], done[-1], *later}
        assert second.runs[waiting[0]].state.status == "completed"
        assert sorted(w.run_id for w in second.list_waits()) == sorted(waiting[1:])
        # the same as an index that replays the whole log
        whole = await started(conn, recent_finished=5, checkpoints=False)
        assert statuses(whole) == statuses(second)
        await whole.stop()
    finally:
        await second.stop()


async def test_keys_at_different_positions_start_from_the_lowest_and_agree(
    app: Tether, server: TetherServer
) -> None:
    double, approval = define(app)
    conn = await app.connection()
    store = await checkpoints(conn)
    async with app.worker("w", slots=4):
        waiting = (await approval.run_no_wait({"x": 1})).run_id
        await wait_for_status(app, waiting, "waiting")
        await finish_in_order(double, 4)
        first = await started(conn, recent_finished=3)
        await first.stop()
        older = {
            p: await store.load(checkpoint_name(p)) for p in range(conn.settings.names.partitions)
        }

        await finish_in_order(double, 4)
        await app.events.push("approval:decision", {"runId": waiting, "decision": "approve"})
        await wait_for_status(app, waiting, "completed")
        second = await started(conn, recent_finished=3)
        await second.stop()
    assert second.cursor > first.cursor
    # another writer's older key (or a write cut short) for the partition of the waiting run
    partition = conn.settings.names.partition(waiting)
    stale = older[partition]
    assert stale is not None and waiting in stale.state["runs"]
    assert await store.save(checkpoint_name(partition), stale)

    third = await started(conn, recent_finished=3)
    try:
        assert third.started_after == first.cursor
        assert statuses(third) == statuses(second)
    finally:
        await third.stop()


async def test_an_unusable_checkpoint_means_the_whole_log(
    app: Tether, server: TetherServer
) -> None:
    double, _ = define(app)
    conn = await app.connection()
    async with app.worker("w", slots=2):
        done = await finish_in_order(double, 3)
    first = await started(conn)
    await first.stop()
    store = await checkpoints(conn)
    assert await store.save(checkpoint_name(0), Checkpoint(first.cursor, {"runs": "nonsense"}))
    second = await started(conn)
    try:
        assert second.started_after == 0
        assert set(second.runs) == set(done)
    finally:
        await second.stop()


async def test_the_checkpoint_is_written_while_the_log_moves_on(
    app: Tether, server: TetherServer
) -> None:
    double, _ = define(app)
    conn = await app.connection()
    store = await checkpoints(conn)
    index = await started(conn, checkpoint_every_s=0.05)
    try:
        async with app.worker("w", slots=2):
            [run_id] = await finish_in_order(double, 1)
        await index.sync()
        key = checkpoint_name(conn.settings.names.partition(run_id))

        async def written() -> Checkpoint | None:
            found = await store.load(key)
            return found if found is not None and found.position == index.cursor else None

        checkpoint = await wait_until(written, message="the checkpoint at the index's cursor")
        assert run_id in checkpoint.state["runs"]
    finally:
        await index.stop()


@pytest.fixture
def two_recent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The API's index holds the two most recently finished runs only."""
    monkeypatch.setattr(tether.projections.run_index, "RECENT_FINISHED", 2)
    yield


async def page(http: aiohttp.ClientSession, **params: str) -> tuple[list[str], str | None]:
    async with http.get("/api/runs", params=params, headers=bearer(READER)) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        return [r["run_id"] for r in body["runs"]], response.headers.get(NEXT_BEFORE_HEADER)


async def test_an_evicted_run_is_read_on_demand_and_older_runs_page_through_the_log(
    two_recent: None, app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    double, approval = define(app)
    async with app.worker("w", slots=2):
        waiting = (await approval.run_no_wait({"x": 0})).run_id
        await wait_for_status(app, waiting, "waiting")
        done = await finish_in_order(double, 6)
    assert api_server.api is not None and api_server.api.index is not None
    index = api_server.api.index
    await index.sync()
    assert set(index.runs) == {waiting, done[-2], done[-1]}

    oldest = done[0]
    assert index.get(oldest) is None
    found = await index.lookup(oldest)
    assert found is not None and found.state.status == "completed"
    assert await index.lookup("never-requested") is None
    async with http.get(f"/api/runs/{oldest}", headers=bearer(READER)) as response:
        assert response.status == 200
        detail = await response.json()
    assert detail["run"]["status"] == "completed" and detail["run"]["output"] == 0

    listed, cursor = await page(http)
    assert listed == [done[-1], done[-2], waiting]
    older: list[str] = []
    while cursor is not None:
        ids, cursor = await page(http, before=cursor, limit="2")
        older += ids
    assert older == done[-3::-1]  # the rest, most recently finished first
    assert (await page(http, before="999999999"))[0] == done[::-1]  # past the end: the newest
    assert await page(http, status="waiting") == ([waiting], None)
    assert await page(http, before="999999999", status="failed") == ([], None)
    assert (await page(http, before="999999999", task="payment-approval"))[0] == []
    async with http.get("/api/runs?before=0", headers=bearer(READER)) as response:
        assert response.status == 422
        assert "before must be a run-log sequence" in (await response.json())["error"]["message"]


async def test_cli_lists_older_finished_runs_with_before(
    app: Tether, server: TetherServer, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    double, _ = define(app)
    async with app.worker("w", slots=2):
        done = await finish_in_order(double, 3)
    base = ["--nats-url", settings.nats_url, "--namespace", settings.namespace]

    async def cli(*args: str) -> tuple[str, str]:
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["runs", "list", *base, *args]) == 0
        out, err = capsys.readouterr()
        return out, err

    out, err = await cli("--limit", "1")
    assert done[-1] in out and done[0] not in out
    cursor = err.split("--before ")[1].split()[0]
    out, err = await cli("--before", cursor, "--limit", "1")
    assert done[-2] in out and done[-1] not in out
    out, err = await cli("--before", err.split("--before ")[1].split()[0], "--json")
    assert done[0] in out and done[1] not in out
