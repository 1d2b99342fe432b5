"""Scale-out on a three-node R3 cluster: three ``tether serve`` processes share the
partitions while runs wait at an approval. The nats-server node leading the run log and one
serve process are both SIGKILLed; the approvals pushed afterwards complete every run, each
wait resolved once and one terminal event per run, and the two surviving serves end up
owning every partition between them, half each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tests.chaos.report import Row, approved, emit, settle, tally
from tests.integration.cluster import NatsCluster
from tests.integration.procs import define_tasks, executions, push_approvals, trigger_approvals
from tests.integration.test_resilience import Children, all_in_status
from tether import Tether
from tether.cli.status import read_status
from tether.engine.config import Settings
from tether.engine.ids import partition_of
from tether.engine.leases import PartitionLeases, lease_key
from tether.engine.provision import ProvisionError

pytestmark = pytest.mark.chaos

RUNS = 150
SERVES = ("serve-1", "serve-2", "serve-3")
# Lease TTL (5 s), then JetStream requests sent while the cluster elects new leaders may
# each wait out their 10 s timeout before the partition is claimed again: 9-17 s seen.
TAKEOVER_WITHIN_S = 30.0
FINISH_WITHIN_S = 45.0


@pytest.fixture
async def cluster() -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster().start()
    try:
        await nodes.wait_ready()
        yield nodes
    finally:
        nodes.cleanup()


async def owners(settings: Settings) -> dict[str, list[int]]:
    """``tether status``'s owners; none while a stream leader election leaves JetStream
    unable to answer (the callers poll again)."""
    try:
        status: dict[str, Any] = await read_status(settings)
    except ProvisionError:
        return {}
    owned: dict[str, list[int]] = status["owners"]
    return owned


async def explain(
    row: Row, children: Children, settings: Settings, killed_wall: float, tmp_path: Path
) -> str:
    """What to read when runs did not end well: each one's partition and its owner now, and
    every child's whole log (the report keeps only the tail of each)."""
    for child in children.all:
        (tmp_path / f"{child.label}.log").write_bytes(bytes(child.stderr))
    partitions = settings.names.partitions
    owner_of = {p: name for name, ps in (await owners(settings)).items() for p in ps}
    bad = sorted({problem.split(":")[0] for problem in row.problems})
    where = [
        f"{run_id}: partition {partition_of(run_id, partitions)}, owned by "
        f"{owner_of.get(partition_of(run_id, partitions), 'no one')}"
        for run_id in bad
    ]
    return (
        f"{row.explain()}\n" + "\n".join(where[:15]) + f"\nkills at ts {killed_wall:.3f}; "
        f"whole child logs in {tmp_path}\n{children.report()}"
    )


def split_evenly(found: dict[str, list[int]], names: list[str], partitions: int) -> bool:
    """``names`` (and no one else) own every partition once, in shares at most one apart."""
    if sorted(found) != sorted(names):
        return False
    owned = sorted(p for name in names for p in found[name])
    shares = [len(found[name]) for name in names]
    return owned == list(range(partitions)) and max(shares) - min(shares) <= 1


async def test_a_cluster_survives_losing_its_run_log_leader_and_a_serve(
    cluster: NatsCluster,
    children: Children,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Children inherit the environment: the serves provision every stream with three replicas.
    monkeypatch.setenv("TETHER_REPLICAS", "3")
    settings = Settings(nats_url=cluster.url, namespace=namespace, replicas=3)
    app = Tether(settings=settings)
    tasks = define_tasks(app)
    try:
        # serve-1 provisions the namespace, then the other two start together (serves
        # started at the very same moment on a new cluster retry lookups of buckets
        # another has just created, but one whose replicas take longer still gives up).
        first = await children.serve(SERVES[0], cluster.url, namespace, name=SERVES[0])
        await asyncio.gather(
            *(children.serve(n, cluster.url, namespace, name=n) for n in SERVES[1:])
        )
        partitions: int = (await read_status(settings))["partitions"]

        async def three_share() -> bool:
            return split_evenly(await owners(settings), list(SERVES), partitions)

        await children.until(three_share, within=20, message="the three serves to share")

        # The worker comes after the serves, which created the streams with three replicas.
        await children.worker("worker", cluster.url, namespace)
        conn = await app.connection()
        runs_stream = settings.names.runs_stream
        assert (await conn.js.stream_info(runs_stream)).config.num_replicas == 3

        refs = await trigger_approvals(tasks["approval"], RUNS, tmp_path)
        ids = [ref.run_id for ref in refs]
        await all_in_status(children, app, ids, "waiting", within=60)

        leader = await cluster.leader(conn.js, runs_stream)
        cluster.kill(leader)
        await first.kill()
        killed_at, killed_wall = time.monotonic(), time.time()

        await push_approvals(app, ids, within=30)

        survivors = list(SERVES[1:])

        async def survivors_own_all() -> bool:
            return split_evenly(await owners(settings), survivors, partitions)

        await children.until(
            survivors_own_all, within=TAKEOVER_WITHIN_S, message="serve-2 and serve-3 to own all"
        )
        took_over_s = time.monotonic() - killed_at

        await settle(app, ids, within=FINISH_WITHIN_S)
        new_leader = await cluster.leader(conn.js, runs_stream)
        row = await tally(
            app,
            "R3 cluster: run-log leader node and one of three serves SIGKILLed",
            ids,
            approved,
            note=f"run log led by {leader}, then {new_leader}; the two surviving serves "
            f"owned all {partitions} partitions {took_over_s:.1f}s after the kills",
        )
        emit(row)
        if not row.clean:
            raise AssertionError(await explain(row, children, settings, killed_wall, tmp_path))
        assert new_leader != leader
        # The proposal step ran once per run: nothing was re-executed after the kills.
        assert executions(tmp_path, "propose") == RUNS
    finally:
        await app.close()


class FakeLeases:
    """The few calls of a KV bucket that ``PartitionLeases`` makes, revision-checked."""

    def __init__(self) -> None:
        self.revision = 0
        self.keys: dict[str, int] = {}  # key -> revision of its current value

    def _write(self, key: str) -> int:
        self.revision += 1
        self.keys[key] = self.revision
        return self.revision

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.keys:
            raise KeyWrongLastSequenceError()
        return self._write(key)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.keys.get(key) != last:
            raise KeyWrongLastSequenceError()
        return self._write(key)

    async def delete(self, key: str, last: int | None = None) -> bool:
        if last is not None and self.keys.get(key) != last:
            raise KeyWrongLastSequenceError()
        self.keys.pop(key, None)
        return True


async def test_a_partition_whose_work_fails_to_start_is_not_kept() -> None:
    """As the cluster test above caught it: a consumer not created during the leader
    election left the new owner renewing the lease of a partition whose waits no one
    matched, so its runs stayed waiting for good."""
    bucket = FakeLeases()
    started: list[int] = []
    released: list[int] = []

    async def acquire(partition: int) -> None:
        if partition == 1 and 1 not in released:
            raise TimeoutError("consumer not created")
        started.append(partition)

    async def release(partition: int) -> None:
        released.append(partition)

    leases = PartitionLeases(
        cast(KeyValue, bucket), "serve-2", 4, on_acquire=acquire, on_release=release
    )
    with pytest.raises(TimeoutError):
        await leases.balance()
    assert 1 not in leases.owned and released == [1]
    assert lease_key(1) not in bucket.keys  # free for whoever balances next

    await leases.balance()
    assert sorted(leases.owned) == [0, 1, 2, 3] == sorted(started)
