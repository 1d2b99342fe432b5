"""Keeping what a process set up at start out of the cyclic garbage collector's walks.

Python's full collection walks every container object the process holds. A serve or a
worker holds tens of thousands that live as long as the process (modules, classes, pydantic
schemas, the app's tasks). Over one run of ``bench/hitl_method.py`` (timed with
``gc.callbacks``), a full collection stopped the worker for 51 ms on average (at most 65)
and ``tether serve`` for 69 ms (at most 110); with what they set up frozen, 8 ms and 28 ms
(the serve still walks what it holds for open waits). Memory is still freed by reference
counting as usual; only a reference cycle among the frozen objects would stay.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_long_lived() -> None:
    """Collect once, then move every object alive now out of the collector's walks. Only
    the first call in a process does it: a process that starts several servers or workers
    (a test session) freezes what its start-up made, not what later ones leave behind."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
