"""Partition leases: which `tether serve` process owns which partition.

Every serve process announces itself with a member key (``member.<name>``) and claims
partitions with lease keys (``partition.<p>``) in the leases bucket, each write guarded by
the key's revision (create when absent, update with the revision last seen), so two
processes never both win one claim. Owners renew members and leases every heartbeat.

A key is alive while its revision keeps changing: each process times the revisions it
sees on its own monotonic clock, so no two machines' clocks are compared. A lease or
member unchanged for ``LEASE_TTL_S`` has lapsed and may be taken over.

Each process aims at its fair share of the partitions among the live members
(``fair_share``): it claims free or lapsed partitions below that, and releases the extra
above it (stopping their work first), so partitions spread evenly as processes join and
leave. During a takeover an old owner may still act on a partition for a moment; that is
safe because every decision is an OCC append to the run's log (docs/partitions.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.engine import wire
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS, retry_transient

log = logging.getLogger("tether.leases")

# How often members and leases are renewed, and how long one unchanged has lapsed. A
# SIGKILLed owner's partitions are taken over within about LEASE_TTL_S + HEARTBEAT_S.
HEARTBEAT_S = 1.0
LEASE_TTL_S = 5.0

# A member key unchanged this long belongs to a process that is gone: it is deleted.
DEPARTED_AFTER_S = 12 * LEASE_TTL_S
# How long a process tries to announce itself while the bucket cannot take writes yet.
JOIN_WITHIN_S = 15.0

MEMBER_PREFIX = "member."
LEASE_PREFIX = "partition."

PartitionHook = Callable[[int], Awaitable[None]]


def member_key(name: str) -> str:
    """KV keys allow fewer characters than names (``host:pid``): encode the name."""
    return MEMBER_PREFIX + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def lease_key(partition: int) -> str:
    return f"{LEASE_PREFIX}{partition}"


def fair_share(members: list[str], me: str, partitions: int) -> int:
    """How many partitions ``me`` should own among ``members`` (sorted by name, the first
    ``partitions % n`` members take one more)."""
    ranked = sorted(set(members) | {me})
    base, extra = divmod(partitions, len(ranked))
    return base + (1 if ranked.index(me) < extra else 0)


@dataclass(slots=True)
class Seen:
    """A key as this process last saw it."""

    revision: int
    value: dict[str, object] | None  # None: deleted
    changed_at: float  # monotonic time of the revision's arrival


class PartitionLeases:
    """Claims, renews and releases this process's partitions; calls ``on_acquire(p)`` once
    a partition is its own and ``on_release(p)`` before letting one go."""

    def __init__(
        self,
        bucket: KeyValue,
        name: str,
        partitions: int,
        *,
        on_acquire: PartitionHook,
        on_release: PartitionHook,
        open_waits: Callable[[], dict[int, int]] = dict,
        member_stats: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.name = name
        self._bucket = bucket
        self._partitions = partitions
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._open_waits = open_waits
        self._member_stats = member_stats
        self.seen: dict[str, Seen] = {}
        self.owned: dict[int, int] = {}  # partition -> revision of our lease
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()  # one claim/release round at a time
        # Loops also check this flag: a cancellation can be swallowed by a wait_for inside
        # nats-py (Python 3.11), and leave() must not wait on a loop that goes on forever.
        self._leaving = False

    # -- what the bucket says ---------------------------------------------------------------

    def on_entry(self, msg: Msg) -> None:
        """A change of the bucket (from a follower of its stream)."""
        key = msg.subject.split(".", 2)[2]  # $KV.<bucket>.<key>
        removed = (msg.headers or {}).get(wire.KV_OPERATION) in wire.KV_REMOVALS or not msg.data
        value: dict[str, object] | None = None
        if not removed:
            try:
                loaded = orjson.loads(msg.data)
                value = loaded if isinstance(loaded, dict) else None
            except orjson.JSONDecodeError:
                log.warning("unreadable lease entry ignored", extra={"key": key})
        self.seen[key] = Seen(msg.metadata.sequence.stream, value, time.monotonic())
        self._changed.set()

    def _alive(self, seen: Seen | None, now: float) -> bool:
        return seen is not None and seen.value is not None and now - seen.changed_at < LEASE_TTL_S

    def live_members(self) -> list[str]:
        now = time.monotonic()
        return sorted(
            str(seen.value["name"])
            for key, seen in self.seen.items()
            if key.startswith(MEMBER_PREFIX) and seen.value is not None and self._alive(seen, now)
        )

    def _claimable(self, partition: int, now: float) -> Seen | bool:
        """The lease to take over (a Seen), True for a free partition, False if taken."""
        seen = self.seen.get(lease_key(partition))
        if seen is None or seen.value is None:
            return True
        if seen.value.get("owner") == self.name or not self._alive(seen, now):
            return seen  # lapsed, or ours from before a restart under the same name
        return False

    # -- lifecycle ----------------------------------------------------------------------------

    async def join(self) -> None:
        """Announce this process and claim its first share; returns once those partitions'
        work has started."""
        await retry_transient(self._renew_member, within_s=JOIN_WITHIN_S, what="joining")
        try:
            await self.balance()
        except TRANSIENT_NATS_ERRORS as exc:  # (a new cluster's bucket) the loop goes on
            log.warning("first claim round failed; retrying", extra={"error": repr(exc)})
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="leases-renew"),
            asyncio.create_task(self._balance_loop(), name="leases-balance"),
        ]

    async def leave(self) -> None:
        """Release every partition (their work stops first) and the member key."""
        self._leaving = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2 * HEARTBEAT_S)
        async with self._lock:
            for partition in sorted(self.owned):
                await self._release(partition)
        try:
            await self._bucket.delete(member_key(self.name))
        except Exception as exc:  # it lapses by itself within LEASE_TTL_S
            log.warning("member key not removed", extra={"error": repr(exc)})

    # -- renewing -----------------------------------------------------------------------------

    async def _renew_member(self) -> None:
        body = {"name": self.name, "renewed_at": time.time(), **self._member_stats()}
        await self._bucket.put(member_key(self.name), orjson.dumps(body))

    def _lease_body(self, partition: int, open_waits: int = 0) -> bytes:
        body = {"owner": self.name, "renewed_at": time.time(), "open_waits": open_waits}
        return orjson.dumps(body)

    async def _renew_loop(self) -> None:
        while not self._leaving:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._renew_member()
                waits = self._open_waits()  # (for `tether status`)
                for partition, revision in list(self.owned.items()):
                    await self._renew(partition, revision, waits.get(partition, 0))
            except Exception as exc:  # NATS away: the next heartbeat tries again
                log.warning("lease renewal failed", extra={"error": repr(exc)})

    async def _renew(self, partition: int, revision: int, open_waits: int) -> None:
        try:
            new = await self._bucket.update(
                lease_key(partition), self._lease_body(partition, open_waits), last=revision
            )
        except KeyWrongLastSequenceError:
            # Someone took it over (we lapsed, e.g. paused past the TTL): stop its work.
            if self.owned.get(partition) == revision:
                log.warning("partition lease lost", extra={"partition": partition})
                async with self._lock:
                    if self.owned.pop(partition, None) is not None:
                        await self._on_release(partition)
            return
        if partition in self.owned:
            self.owned[partition] = new

    # -- balancing ----------------------------------------------------------------------------

    async def _balance_loop(self) -> None:
        while not self._leaving:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT_S)
            self._changed.clear()
            try:
                await self.balance()
            except Exception as exc:
                log.warning("partition balancing failed; retrying", extra={"error": repr(exc)})

    async def balance(self) -> None:
        """One round: release what is above this process's fair share, claim up to it."""
        await self._forget_departed()
        async with self._lock:
            target = fair_share(self.live_members(), self.name, self._partitions)
            for partition in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - target)]:
                await self._release(partition)
            now = time.monotonic()
            for partition in range(self._partitions):
                if len(self.owned) >= target:
                    break
                if partition not in self.owned:
                    await self._claim(partition, self._claimable(partition, now))

    async def _forget_departed(self) -> None:
        """Delete member keys long lapsed (a killed process under a `host:pid` name leaves
        one behind), guarded by the revision seen so a process that came back is kept."""
        now = time.monotonic()
        for key, seen in list(self.seen.items()):
            departed = seen.value is not None and now - seen.changed_at > DEPARTED_AFTER_S
            if key.startswith(MEMBER_PREFIX) and departed:
                # (a wrong revision means it was renewed meanwhile: alive after all)
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await self._bucket.delete(key, last=seen.revision)
                seen.value = None

    async def _claim(self, partition: int, claimable: Seen | bool) -> None:
        if claimable is False:
            return
        key, body = lease_key(partition), self._lease_body(partition)
        try:
            if isinstance(claimable, Seen):
                revision = await self._bucket.update(key, body, last=claimable.revision)
            else:
                revision = await self._bucket.create(key, body)
        except KeyWrongLastSequenceError:
            return  # another process claimed it first
        self.owned[partition] = revision
        try:
            await self._on_acquire(partition)
        except Exception as exc:
            # Its work did not (fully) start, e.g. a consumer not created while a stream
            # elects a leader. Kept, the lease would be renewed while no one serves the
            # partition: undo what started and give the lease up, so that a later round
            # (of this process or another) claims it afresh.
            log.warning(
                "partition not started; releasing it",
                extra={"partition": partition, "error": repr(exc)},
            )
            try:
                await self._release(partition)
            except Exception as undo:  # the lease lapses by itself within LEASE_TTL_S
                log.warning("partition release failed", extra={"error": repr(undo)})
            raise
        log.info("partition acquired", extra={"partition": partition, "owner": self.name})

    async def _release(self, partition: int) -> None:
        revision = self.owned.pop(partition, None)
        if revision is None:
            return
        await self._on_release(partition)
        try:
            await self._bucket.delete(lease_key(partition), last=revision)
        except KeyWrongLastSequenceError:
            pass  # renewed or taken meanwhile; either way it is not ours to delete now
        except Exception as exc:  # it lapses by itself within LEASE_TTL_S
            log.warning("lease not released", extra={"partition": partition, "error": repr(exc)})
        log.info("partition released", extra={"partition": partition, "owner": self.name})
