"""Reading the pushed events of one key back from the events stream, from both of its
subject spaces (anonymous ``<ns>.events.<key>`` and ``<ns>.from.<identity>.<key>``)."""

from __future__ import annotations

import asyncio

from tether.engine.nats_io import DirectReader, StoredMessage
from tether.engine.subjects import Names


async def read_key_events(
    reader: DirectReader,
    names: Names,
    key: str,
    *,
    start_seq: int = 1,
    start_time: str | None = None,
) -> list[StoredMessage]:
    """Every event stored on ``key`` from ``start_seq`` (or the RFC 3339 ``start_time``) on,
    oldest first."""
    reads = await asyncio.gather(
        *(
            reader.read_subject(
                names.events_stream, subject, start_seq=start_seq, start_time=start_time
            )
            for subject in names.event_key_filters(key)
        )
    )
    return sorted((message for read in reads for message in read), key=lambda m: m.seq)
