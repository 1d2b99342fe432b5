"""``tether serve`` and the worker are SIGKILLed and restarted while about 300 runs wait for
approvals and the approvals are being pushed: every run completes with the decision it was
sent, each wait resolved exactly once and one terminal event per run.

Serve and worker run in their own interpreters (the children of
``tests/integration/test_resilience.py``), so a kill drops whatever they held unacknowledged.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.report import approved, counts, emit, settle, tally
from tests.integration.procs import (
    APPROVAL_KEY,
    approve,
    define_tasks,
    executions,
    trigger_approvals,
)
from tests.integration.test_resilience import Children, all_in_status, statuses
from tether import Tether

pytestmark = pytest.mark.chaos

RUNS = 300
CHUNK = 10  # approvals pushed together, then a short pause: a steady stream, not one burst
PACE_S = 0.1
WORKER_ACK_WAIT_S = 3.0  # a killed worker's runs come back this soon
FINISH_WITHIN_S = 120.0


class Pusher:
    """Pushes one approval per run, a chunk at a time, retrying what fails while NATS is
    busy; the event id makes a retry harmless."""

    def __init__(self, app: Tether, run_ids: list[str]) -> None:
        self.app = app
        self.run_ids = run_ids
        self.pushed = 0
        self.retries = 0

    async def _push(self, run_id: str) -> None:
        for attempt in range(50):
            try:
                await self.app.events.push(APPROVAL_KEY, approve(run_id), id=f"ok-{run_id}")
                return
            except Exception:
                self.retries += 1
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)

    async def run(self) -> None:
        for start in range(0, len(self.run_ids), CHUNK):
            chunk = self.run_ids[start : start + CHUNK]
            await asyncio.gather(*(self._push(run_id) for run_id in chunk))
            self.pushed += len(chunk)
            await asyncio.sleep(PACE_S)  # pacing, so that the kills land mid-stream

    async def reached(self, count: int) -> None:
        while self.pushed < count:  # noqa: ASYNC110 - the pusher runs in this loop
            await asyncio.sleep(0.01)


async def test_serve_and_worker_killed_while_approvals_arrive(
    app: Tether, children: Children, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    tasks = define_tasks(app)
    serve = await children.serve("serve-1", nats_url, namespace)
    worker, _ = await children.worker("worker-1", nats_url, namespace, ack_wait=WORKER_ACK_WAIT_S)
    refs = await trigger_approvals(tasks["approval"], RUNS, tmp_path)
    ids = [ref.run_id for ref in refs]
    await all_in_status(children, app, ids, "waiting", within=90)

    pusher = Pusher(app, ids)
    pushing = asyncio.create_task(pusher.run())
    seen: dict[str, dict[str, int]] = {}
    await pusher.reached(RUNS // 5)
    await serve.kill()
    seen[f"serve killed at {pusher.pushed} pushed"] = counts(await statuses(app, ids))
    await pusher.reached(2 * RUNS // 5)
    await children.serve("serve-2", nats_url, namespace)
    await pusher.reached(3 * RUNS // 5)
    await worker.kill()
    seen[f"worker killed at {pusher.pushed} pushed"] = counts(await statuses(app, ids))
    await pusher.reached(4 * RUNS // 5)
    await children.worker("worker-2", nats_url, namespace, ack_wait=WORKER_ACK_WAIT_S)
    await pushing

    began = time.monotonic()
    await settle(app, ids, within=FINISH_WITHIN_S)
    took = time.monotonic() - began
    row = await tally(
        app,
        "serve + worker SIGKILL",
        ids,
        approved,
        note=f"statuses at the kills {seen}; {pusher.retries} push retries; "
        f"settled {took:.1f}s after the last push (bound {FINISH_WITHIN_S:g}s)",
    )
    emit(row)
    assert row.clean, row.explain() + "\n" + children.report()
    # every proposal was recorded before the kills, so no step ran twice
    assert executions(tmp_path, "propose") == RUNS
