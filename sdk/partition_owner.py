"""A `tether serve` process's share of the work: the partitions its leases give it.

Follows the leases bucket and hands each partition it acquires to the engine service, the
timer and the matcher (``own``), and takes it back from them before the lease goes
(``release``). See ``tether.engine.leases`` for how partitions are claimed and spread.
"""

from __future__ import annotations

import logging

from tether.engine.connection import Connection
from tether.engine.leases import PartitionLeases
from tether.engine.provision import ensure_bucket
from tether.engine.service import EngineService
from tether.projections.follower import Follower
from tether.projections.matcher import Matcher
from tether.projections.timer import TimerProjection

log = logging.getLogger("tether.serve")


class PartitionOwner:
    def __init__(
        self,
        conn: Connection,
        name: str,
        *,
        engine: EngineService,
        matcher: Matcher,
        timer: TimerProjection,
    ) -> None:
        self._conn = conn
        self.name = name
        self._engine = engine
        self._matcher = matcher
        self._timer = timer
        self.leases: PartitionLeases | None = None
        self._follower: Follower | None = None

    @property
    def partitions(self) -> list[int]:
        return sorted(self.leases.owned) if self.leases is not None else []

    async def start(self) -> None:
        """Join the owners and take a first share (its work running when this returns)."""
        conn, names = self._conn, self._conn.settings.names
        bucket = await ensure_bucket(conn.js, conn.settings, names.leases_bucket)
        self.leases = PartitionLeases(
            bucket,
            self.name,
            names.partitions,
            on_acquire=self._acquire,
            on_release=self._release,
            open_waits=self._matcher.open_waits_by_partition,
            member_stats=lambda: {"commands_handled": self._engine.commands_handled},
        )
        self._follower = Follower(
            conn.js,
            stream=f"KV_{names.leases_bucket}",
            subjects=[f"$KV.{names.leases_bucket}.>"],
            handler=self.leases.on_entry,
            last_per_subject=True,
        )
        await self._follower.start()
        await self.leases.join()
        log.info("partitions owned", extra={"owner": self.name, "partitions": len(self.partitions)})

    async def stop(self) -> None:
        """Hand every partition back (work stops, checkpoints are written, leases go)."""
        if self.leases is not None:
            await self.leases.leave()
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None

    async def _acquire(self, partition: int) -> None:
        await self._engine.own(partition)
        await self._timer.own(partition)
        await self._matcher.own(partition)

    async def _release(self, partition: int) -> None:
        await self._matcher.release(partition)
        await self._timer.release(partition)
        await self._engine.release(partition)
