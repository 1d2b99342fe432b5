"""Every deterministic identity Tether derives: a run's partition, deadline keys and the
message ids that make a retried publish harmless.

They are formulas, not random ids, because two processes (or one process before and after
a crash) must arrive at the same name for the same thing: the same Nats-Msg-Id dedupes a
republished command, the same deadline key overwrites instead of adding a second timer.
A table test (tests/unit/test_ids.py) pins each formula: changing one changes the wire.
"""

from __future__ import annotations

import zlib

# How many partitions a namespace gets when it is first provisioned (TETHER_PARTITIONS).
DEFAULT_PARTITIONS = 32
MAX_PARTITIONS = 1024


def check_partitions(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(
            f"invalid partition count {partitions}: use 1 to {MAX_PARTITIONS} "
            f"(the default is {DEFAULT_PARTITIONS})"
        )
    return partitions


def partition_of(run_id: str, partitions: int) -> int:
    """The partition a run belongs to: a stable hash of its id (CRC-32 is the same in every
    process and Python version, unlike ``hash()``)."""
    return zlib.crc32(run_id.encode()) % partitions


# -- deadline keys (in the deadlines bucket; the partition leads so a timer can watch one) --


def deadline_prefix(partition: int) -> str:
    return f"p{partition}."


def deadline_partition(key: str) -> int | None:
    """The partition a deadline key belongs to (None for a key of another shape)."""
    head = key.partition(".")[0]
    return int(head[1:]) if head[:1] == "p" and head[1:].isdigit() else None


def run_deadline_key(partition: int, run_id: str) -> str:
    """The run's execution deadline."""
    return f"p{partition}.{run_id}.run"


def schedule_deadline_key(partition: int, run_id: str) -> str:
    """The run's schedule-to-start deadline."""
    return f"p{partition}.{run_id}.sched"


def retry_deadline_key(partition: int, run_id: str) -> str:
    """When a failed attempt's backoff is over."""
    return f"p{partition}.{run_id}.retry"


def wait_deadline_key(partition: int, run_id: str, position: int) -> str:
    """The timeout of the wait at durable-call ``position``."""
    return f"p{partition}.{run_id}.w{position}"


def sleep_deadline_key(partition: int, run_id: str, position: int, condition_id: str) -> str:
    """A sleep condition of the wait at ``position``."""
    return f"p{partition}.{run_id}.w{position}.{condition_id}"


def wait_position(wait_id: str) -> int:
    """The durable-call position a wait id (``<run_id>:<position>``) ends with."""
    return int(wait_id.rsplit(":", 1)[-1])


# -- Nats-Msg-Id formulas -------------------------------------------------------------------


def dispatch_msg_id(run_id: str, seq: int) -> str:
    """A dispatch to workers, named by the log sequence that made the run runnable."""
    return f"{run_id}:{seq}"


def run_ended_msg_id(run_id: str) -> str:
    """The event that tells a parent run its child ended."""
    return f"run-ended:{run_id}"


def rejection_msg_id(event_seq: int) -> str:
    return f"rejected:{event_seq}"


def resume_msg_id(wait_id: str | None, wait_seq: int | None, condition_id: str | None) -> str:
    return f"resume:{wait_id}:{wait_seq}:{condition_id}"


def expire_wait_msg_id(wait_id: str | None, wait_seq: int | None) -> str:
    return f"expire:{wait_id}:{wait_seq}"


def retry_msg_id(run_id: str, retry_seq: int | None) -> str:
    return f"retry:{run_id}:{retry_seq}"


def run_command_msg_id(kind: str, run_id: str) -> str:
    """Commands about the whole run (expire_run, expire_schedule, cancel)."""
    return f"{kind}:{run_id}"
