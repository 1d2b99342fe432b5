"""Runs the run index does not hold, read from the run log on demand: one run by its id, and
pages of finished runs, most recently finished first, before a run-log sequence.

A page finds the terminal events (``completed``, ``failed``, ``timed_out``, ``cancelled``)
stored before the cursor through a short-lived pull consumer that delivers headers only
(the subject names the run), in windows of sequences going back from the cursor, then folds
each of those runs from its own log. A page is bounded in what it examines, so a filter
that matches rarely answers a short page with a cursor to go on from, not a long scan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.engine.connection import Connection
from tether.engine.events import TERMINAL_TOKENS
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS
from tether.engine.subjects import Names, run_subject_parts
from tether.projections.run_view import RunView

log = logging.getLogger("tether.run_history")

# Runs read at once when several are needed (start-up, a page).
READ_CONCURRENCY = 32
# A read that fails for a passing reason (a reconnect, a leader election) is tried this often.
READ_ATTEMPTS = 3
# The first window of sequences a page looks through, per run it wants (a finished run has
# a few to a dozen events, interleaved with others'); a window with no match doubles it.
WINDOW_PER_RUN = 16
MAX_WINDOW = 65_536
# A page examines at most this many finished runs (and at least ten per run it lists), and
# looks through at most this many run-log sequences.
MIN_SCAN = 1_000
MAX_SCAN_SEQUENCES = 1_000_000
FETCH_BATCH = 256
# A page's consumer is deleted when done; if this process dies first, the server drops it.
PAGE_CONSUMER_IDLE_S = 60.0


async def read_view(conn: Connection, run_id: str, *, keep_events: int) -> RunView | None:
    """The run folded from its log as stored now, as the index keeps runs (no payloads);
    None if it was never requested."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            stored = await conn.store.read(run_id)
            break
        except TRANSIENT_NATS_ERRORS:
            if attempt == READ_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * attempt)
    view = RunView(run_id, keep_events=keep_events, payloads=False)
    for seq, event in stored:
        view.apply(seq, event)
    return view if view.state.exists else None


async def read_views(
    conn: Connection, run_ids: Iterable[str], *, keep_events: int
) -> dict[str, RunView]:
    """Each run folded from its log, ``READ_CONCURRENCY`` reads at a time; runs never
    requested are left out."""
    pending = iter(run_ids)
    found: dict[str, RunView] = {}

    async def reader() -> None:
        for run_id in pending:  # the readers share one iterator: each id is read once
            view = await read_view(conn, run_id, keep_events=keep_events)
            if view is not None:
                found[run_id] = view

    await asyncio.gather(*(reader() for _ in range(READ_CONCURRENCY)))
    return found


def terminal_tokens(statuses: Iterable[str] | None) -> list[str]:
    """The terminal subject tokens a status filter admits (all when there is no filter)."""
    wanted = set(statuses) if statuses else None
    return [token for token in TERMINAL_TOKENS if wanted is None or token in wanted]


async def _terminal_window(
    js: JetStreamContext, names: Names, tokens: Sequence[str], lo: int, hi: int
) -> list[tuple[int, str]]:
    """(sequence, run id) of the terminal events stored at ``lo`` <= seq < ``hi``, oldest
    first."""
    config = ConsumerConfig(
        filter_subjects=[names.runs_token_filter(token) for token in tokens],
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=lo,
        ack_policy=AckPolicy.NONE,
        headers_only=True,  # the subject names the run: no event bodies cross the wire
        mem_storage=True,
        inactive_threshold=PAGE_CONSUMER_IDLE_S,
    )
    sub = await js.pull_subscribe("", stream=names.runs_stream, config=config)
    found: list[tuple[int, str]] = []
    name = ""
    try:
        info = await sub.consumer_info()
        name, pending = info.name, int(info.num_pending or 0)
        while pending > 0:  # counted first: a fetch with nothing left would wait its timeout
            messages = await sub.fetch(min(pending, FETCH_BATCH), timeout=5.0)
            for message in messages:
                seq = message.metadata.sequence.stream
                if seq >= hi:
                    return found
                found.append((seq, run_subject_parts(message.subject)[0]))
            pending = int(messages[-1].metadata.num_pending or 0)
        return found
    finally:
        await sub.unsubscribe()
        if name:
            try:
                await js.delete_consumer(names.runs_stream, name)
            except Exception as exc:  # it lapses by itself after PAGE_CONSUMER_IDLE_S
                log.debug("page consumer not deleted", extra={"error": repr(exc)})


async def terminal_windows(
    js: JetStreamContext, names: Names, tokens: Sequence[str], before: int, *, want: int
) -> AsyncIterator[tuple[int, list[tuple[int, str]]]]:
    """Windows going back from sequence ``before``: each window's first sequence, and the
    terminal events stored in it, newest first."""
    hi, span = before, min(MAX_WINDOW, max(FETCH_BATCH, want * WINDOW_PER_RUN))
    while hi > 1 and tokens:
        lo = max(1, hi - span)
        found = await _terminal_window(js, names, tokens, lo, hi)
        if not found:
            span = min(MAX_WINDOW, span * 2)
        yield lo, found[::-1]
        hi = lo


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunView]  # most recently finished first
    next_before: int | None  # where the next page starts; None: nothing older


async def finished_page(
    conn: Connection,
    before: int,
    *,
    statuses: Iterable[str] | None = None,
    task: str | None = None,
    limit: int = 100,
    held: Callable[[str], RunView | None] = lambda run_id: None,
    keep_events: int = 10,
) -> RunPage:
    """Finished runs whose final event is stored before run-log sequence ``before``, most
    recently finished first; ``held`` gives the runs already in memory, the rest are read."""
    names = conn.settings.names
    info = await conn.js.stream_info(names.runs_stream)
    before = min(before, int(info.state.last_seq) + 1)  # a cursor past the end: the newest
    budget = max(MIN_SCAN, 10 * limit)
    runs: list[RunView] = []
    examined = 0
    windows = terminal_windows(conn.js, names, terminal_tokens(statuses), before, want=limit)
    async for lo, window in windows:
        for start in range(0, len(window), READ_CONCURRENCY):
            chunk = window[start : start + READ_CONCURRENCY]
            missing = [run_id for _, run_id in chunk if _finished(held(run_id)) is None]
            read = await read_views(conn, missing, keep_events=keep_events)
            for seq, run_id in chunk:
                examined += 1
                view = _finished(held(run_id)) or read.get(run_id)
                # listed at its own end (a second terminal event in a log does not apply)
                if (
                    view is not None
                    and view.ended_seq == seq
                    and (task is None or view.state.task == task)
                ):
                    runs.append(view)
                if len(runs) == limit or examined >= budget:
                    return RunPage(runs, seq)
        if before - lo >= MAX_SCAN_SEQUENCES:
            return RunPage(runs, lo)  # a rare filter: go on from here on the next page
    return RunPage(runs, None)


def _finished(view: RunView | None) -> RunView | None:
    return view if view is not None and view.ended_seq else None
