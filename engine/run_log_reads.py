"""Reading a run's whole log in one round trip, by the chain its guarded appends leave.

Every append to a run's log carries ``Nats-Expected-Last-Subject-Sequence: N`` scoped to the
run's subjects, and the server stores the message only if the run's last event was at N.
The stored header therefore names each event's predecessor, checked by the server. One
``multi_last`` direct get returns the last event of each of the run's subjects (one subject
per event type), taken at one point of the stream; following the predecessors down from the
newest event shows which events lie hidden under a later one of their type, and each is read
by its sequence. A log the chain cannot account for (a message written without the guard,
or more hidden events than ``MAX_HIDDEN``) is left to the caller's counted read.
"""

from __future__ import annotations

from collections.abc import Mapping

from tether.engine import wire
from tether.engine.nats_io import DirectReader, StoredMessage

# At most one subject per event type lives under a run's prefix.
MOST_SUBJECTS = 64
# Hidden events are read one round trip each; beyond this many a counted read is cheaper.
MAX_HIDDEN = 1


async def read_run_log(reader: DirectReader, stream: str, run_filter: str) -> list[StoredMessage]:
    """The run's whole log, oldest first: by its chain when that accounts for it, else by
    counting its subjects (reusing the chain's ``multi_last`` answer)."""
    newest = await reader.last_of_each(stream, run_filter, most=MOST_SUBJECTS)
    chained = await read_chained(reader, stream, run_filter, newest)
    if chained is not None:
        return chained
    return await reader.read_subjects(stream, run_filter, last_of_each=newest)


async def read_chained(
    reader: DirectReader, stream: str, run_filter: str, newest: list[StoredMessage]
) -> list[StoredMessage] | None:
    """The run's log, oldest first, from ``newest`` (the last message of each of its
    subjects), or None when the chain does not account for it."""
    if not newest:
        return []
    if len(newest) >= MOST_SUBJECTS:
        return None
    by_seq = {m.seq: m for m in newest}
    chain: list[StoredMessage] = []
    current: StoredMessage | None = newest[-1]
    hidden = 0
    while current is not None:
        chain.append(current)
        previous = _predecessor(current, run_filter)
        if previous is None:
            return None  # written without the run's guard: only a count can tell
        if previous == 0:
            break
        current = by_seq.get(previous)
        if current is None:
            hidden += 1
            if hidden > MAX_HIDDEN:
                return None
            current = await reader.read_seq(stream, previous)
            if current is None or not _in_run(current, run_filter):
                return None
    if len(chain) - hidden != len(newest):
        return None  # a subject's last message is not on the chain
    chain.reverse()
    return chain


def guarded_predecessor(headers: Mapping[str, str], run_filter: str) -> int | None:
    """The sequence a message's guarded append followed (0: it was the run's first), as
    its stored headers say; None when it was written without the run's guard."""
    if headers.get(wire.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT) != run_filter:
        return None
    try:
        previous = int(headers.get(wire.EXPECTED_LAST_SUBJECT_SEQ, ""))
    except ValueError:
        return None
    return previous if previous >= 0 else None


def _predecessor(message: StoredMessage, run_filter: str) -> int | None:
    previous = guarded_predecessor(message.headers, run_filter)
    return previous if previous is not None and previous < message.seq else None


def _in_run(message: StoredMessage, run_filter: str) -> bool:
    return message.subject.startswith(run_filter.removesuffix(">"))
