"""What a serve or worker sets up at start is frozen out of the collector's walks, once
per process."""

from __future__ import annotations

import gc

from tether.engine.gc_freeze import freeze_long_lived


def test_start_up_objects_are_frozen_once_per_process() -> None:
    freeze_long_lived()
    frozen = gc.get_freeze_count()
    assert frozen > 0  # the modules and classes loaded so far, at least
    later = [{"made": n} for n in range(1000)]  # what a process makes after its start
    freeze_long_lived()
    assert gc.get_freeze_count() == frozen  # not frozen: the collector still walks them
    assert len(later) == 1000
