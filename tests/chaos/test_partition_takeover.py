"""Two ``tether serve`` processes share the partitions; one is SIGKILLed while 300 runs wait.
The survivor takes over every partition within 15 s, and every run completes with the
approval it was sent, each wait resolved once and one terminal event per run. A third
process joining afterwards takes a share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.report import approved, emit, settle, tally
from tests.integration.procs import define_tasks, push_approvals, trigger_approvals
from tests.integration.test_resilience import Children, all_in_status
from tether import Tether
from tether.cli.status import read_status
from tether.engine.config import Settings

pytestmark = pytest.mark.chaos

RUNS = 300
TAKEOVER_WITHIN_S = 15.0
FINISH_WITHIN_S = 120.0


async def owners(settings: Settings) -> dict[str, list[int]]:
    status: dict[str, Any] = await read_status(settings)
    owned: dict[str, list[int]] = status["owners"]
    return owned


async def test_the_survivor_takes_over_a_killed_serves_partitions(
    app: Tether, children: Children, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    settings = Settings(nats_url=nats_url, namespace=namespace)
    tasks = define_tasks(app)
    first = await children.serve("serve-a", nats_url, namespace, name="serve-a")
    await children.serve("serve-b", nats_url, namespace, name="serve-b")
    await children.worker("worker", nats_url, namespace)
    partitions = (await read_status(settings))["partitions"]

    async def shared_evenly() -> dict[str, list[int]]:
        found = await owners(settings)
        halves = sorted(len(found.get(name, [])) for name in ("serve-a", "serve-b"))
        return found if halves == [partitions // 2, partitions - partitions // 2] else {}

    await children.until(shared_evenly, within=20, message="the two to own half each")

    refs = await trigger_approvals(tasks["approval"], RUNS, tmp_path)
    ids = [ref.run_id for ref in refs]
    await all_in_status(children, app, ids, "waiting", within=90)

    await first.kill()
    killed_at = time.monotonic()

    async def survivor_owns_all() -> bool:
        return await owners(settings) == {"serve-b": list(range(partitions))}

    await children.until(
        survivor_owns_all, within=TAKEOVER_WITHIN_S, message="serve-b to own every partition"
    )
    took_over_s = time.monotonic() - killed_at

    await push_approvals(app, ids, within=60)
    await settle(app, ids, within=FINISH_WITHIN_S)
    row = await tally(
        app,
        "two serves, one SIGKILLed",
        ids,
        approved,
        note=f"survivor owned all {partitions} partitions {took_over_s:.1f}s after the kill",
    )
    emit(row)
    assert row.clean, row.explain() + "\n" + children.report()

    await children.serve("serve-c", nats_url, namespace, name="serve-c")

    async def third_takes_a_share() -> dict[str, list[int]]:
        found = await owners(settings)
        shares = sorted(len(found.get(name, [])) for name in ("serve-b", "serve-c"))
        return found if shares == [partitions // 2, partitions - partitions // 2] else {}

    await children.until(third_takes_a_share, within=20, message="serve-c to take half")
