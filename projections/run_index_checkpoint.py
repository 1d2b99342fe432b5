"""The run index's checkpoint: which runs it held (open ones and the recent finished ones)
at a run-log position, so that a restart reads those runs' logs and the log after that
position instead of the whole history.

One key per partition (``run_index.p<k>``) in the checkpoints bucket, each holding that
partition's run ids and the position they cover: a single key would pass the bucket's size
cap at a few tens of thousands of open runs. Start-up follows the log from the lowest
position of all keys; a key written later than that only holds runs the log after the
lowest position also shows, and the index skips events of a run it has already applied.

Several API processes may write the same keys: each key they write is a consistent snapshot
of its partition at that writer's position, and mixing keys of different writers (or of
one writer interrupted halfway) is safe for the reason above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tether.engine.connection import Connection
from tether.engine.provision import ensure_bucket
from tether.engine.subjects import Names, check_run_id
from tether.projections.checkpoints import Checkpoint, Checkpoints

log = logging.getLogger("tether.run_index")

# How often the checkpoint is written while the run log moves on.
CHECKPOINT_EVERY_S = 5.0


def checkpoint_name(partition: int) -> str:
    return f"run_index.p{partition}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    position: int  # the run log is followed after this sequence
    run_ids: list[str]  # runs whose logs are read first


async def load_snapshot(checkpoints: Checkpoints, names: Names) -> Snapshot:
    """The runs to read and where to follow from; ``Snapshot(0, [])`` (the whole log) when
    a partition has no usable checkpoint yet."""
    loaded = await asyncio.gather(
        *(checkpoints.load(checkpoint_name(p)) for p in range(names.partitions))
    )
    positions: list[int] = []
    run_ids: list[str] = []
    for partition, checkpoint in enumerate(loaded):
        ids = _run_ids(checkpoint.state) if checkpoint is not None else None
        if checkpoint is None or ids is None:
            if checkpoint is not None:
                log.error(
                    "unusable run index checkpoint; reading the run log from the start",
                    extra={"partition": partition},
                )
            return Snapshot(0, [])
        positions.append(checkpoint.position)
        run_ids.extend(ids)
    return Snapshot(min(positions, default=0), run_ids)


def _run_ids(state: Any) -> list[str] | None:
    runs = state.get("runs") if isinstance(state, dict) else None
    if not isinstance(runs, list):
        return None
    try:
        return [check_run_id(run_id) for run_id in runs]
    except (TypeError, ValueError):
        return None


async def save_snapshot(
    checkpoints: Checkpoints, names: Names, position: int, run_ids: Iterable[str]
) -> bool:
    """Write every partition's key at ``position``; False if any was not written (that
    partition's older key then stays, and start-up follows from its older position)."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(names.partitions)}
    for run_id in run_ids:
        by_partition[names.partition(run_id)].append(run_id)
    saved = await asyncio.gather(
        *(
            checkpoints.save(checkpoint_name(p), Checkpoint(position, {"runs": ids}))
            for p, ids in by_partition.items()
        )
    )
    return all(saved)


# What the index holds now: (the position applied, the ids of the runs held).
Held = Callable[[], tuple[int, list[str]]]


class IndexCheckpoint:
    """Loads the run index's checkpoint at start and writes it every ``every_s`` while the
    log moves on (when ``write``), and once more on stop."""

    def __init__(
        self, conn: Connection, held: Held, *, write: bool, every_s: float = CHECKPOINT_EVERY_S
    ) -> None:
        self._conn = conn
        self._names = conn.settings.names
        self._held = held
        self._write = write
        self._every_s = every_s
        self._checkpoints: Checkpoints | None = None
        self._written = 0  # the position of the last checkpoint written or loaded
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> Snapshot:
        conn = self._conn
        bucket = await ensure_bucket(conn.js, conn.settings, self._names.checkpoints_bucket)
        self._checkpoints = Checkpoints(bucket)
        snapshot = await load_snapshot(self._checkpoints, self._names)
        info = await conn.js.stream_info(self._names.runs_stream)
        if snapshot.position > int(info.state.last_seq):
            # a run log younger than the checkpoint (the stream was recreated)
            log.error(
                "run index checkpoint is ahead of the run log; reading the log from the start",
                extra={"position": snapshot.position, "last_seq": info.state.last_seq},
            )
            snapshot = Snapshot(0, [])
        self._written = snapshot.position
        return snapshot

    def start_writing(self) -> None:
        if self._write and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self.write()

    async def write(self) -> bool:
        """Write what is held and the position it covers, if the log moved on since the last
        checkpoint; True if written."""
        if not self._write or self._checkpoints is None:
            return False
        # taken in one step of the event loop, so the runs and the position agree
        position, run_ids = self._held()
        if position <= self._written:
            return False
        if not await save_snapshot(self._checkpoints, self._names, position, run_ids):
            return False
        self._written = position
        return True

    async def stop(self) -> None:
        """Stop the periodic writes and write a last checkpoint (unless NATS closed the
        connection for good: the next start then follows from the last one written)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._conn.nc.is_closed:
            await self.write()
