"""A resolved wait is dispatched once by whichever of the engine and the bookkeeping comes
first, and by the bookkeeping whenever the engine's dispatch did not go out."""

from __future__ import annotations

import asyncio

from tether.engine.dispatch import ResolutionDispatches


async def test_the_bookkeeping_skips_what_the_engine_dispatched() -> None:
    dispatches = ResolutionDispatches()
    published = dispatches.engine_begins(7)
    assert published is not None
    asked = asyncio.create_task(dispatches.engine_dispatched(7))
    await asyncio.sleep(0)
    assert not asked.done()  # it waits for the engine's publish to be acknowledged
    published.set_result(True)
    assert await asked is True


async def test_the_bookkeeping_dispatches_when_the_engine_could_not() -> None:
    dispatches = ResolutionDispatches()
    published = dispatches.engine_begins(7)
    assert published is not None
    published.set_result(False)
    assert await dispatches.engine_dispatched(7) is False


async def test_the_engine_skips_what_the_bookkeeping_dispatched() -> None:
    dispatches = ResolutionDispatches()
    assert await dispatches.engine_dispatched(7) is False
    assert dispatches.engine_begins(7) is None
    # each resolution is settled once: a later one at another sequence starts afresh
    assert dispatches.engine_begins(8) is not None


async def test_entries_left_behind_are_bounded() -> None:
    dispatches = ResolutionDispatches(most=3)
    begun = [dispatches.engine_begins(seq) for seq in range(10)]
    for published in begun:
        assert published is not None
        published.set_result(True)
    # the oldest were forgotten: their bookkeeping dispatches again (a dispatch dedupes)
    assert await dispatches.engine_dispatched(0) is False
    # the newest are remembered
    assert await dispatches.engine_dispatched(9) is True
