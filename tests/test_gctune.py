"""The collector settings ``twistd mqttbroker`` applies once it listens
(``mqtt_twisted/gctune.py``): the start-up heap frozen, the thresholds raised."""

from __future__ import annotations

import gc

from mqtt_twisted import gctune


def test_settle_freezes_the_start_up_heap_and_sets_the_thresholds() -> None:
    """After settle() the objects alive then are frozen (not walked by any collection)
    and full collections need THRESHOLDS[2] middle ones (CPython's default: 10)."""
    before = gc.get_threshold()
    try:
        gctune.settle()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == gctune.THRESHOLDS
        assert gctune.THRESHOLDS[2] >= 10 * before[2] or before == gctune.THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

