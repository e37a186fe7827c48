"""The collector settings ``twistd mqttbroker`` applies once it listens
(``mqtt_twisted/gctune.py``): the start-up heap frozen, the thresholds raised, and the
survivors of each full collection frozen, with a thaw every ``THAW_INTERVAL``."""

from __future__ import annotations

import gc
import time

from mqtt_twisted import gctune


class Collector:
    """What a Freezer calls of the ``gc`` module."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")


def test_settle_freezes_the_start_up_heap_and_sets_the_thresholds() -> None:
    """After settle() the objects alive then are frozen (not walked by any collection),
    the thresholds are set, and a Freezer follows the collections."""
    before = gc.get_threshold()
    try:
        freezer = gctune.settle()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == gctune.THRESHOLDS
        assert freezer in gc.callbacks
    finally:
        gc.callbacks.remove(freezer)
        gc.unfreeze()
        gc.set_threshold(*before)


def test_survivors_of_a_full_collection_are_frozen_and_thawed_on_time() -> None:
    """Only the end of a full collection (generation 2) freezes; the first one
    THAW_INTERVAL after the last thaw unfreezes instead, and the interval restarts."""
    now = [100.0]
    collector = Collector()
    freezer = gctune.Freezer(collector, lambda: now[0], interval=600)
    for generation in (0, 1):
        freezer("stop", {"generation": generation})
    freezer("start", {"generation": 2})
    assert collector.calls == []
    freezer("stop", {"generation": 2})
    assert collector.calls == ["freeze"]
    now[0] += 599
    freezer("stop", {"generation": 2})
    now[0] += 1
    freezer("stop", {"generation": 2})
    assert collector.calls == ["freeze", "freeze", "unfreeze"]
    freezer("stop", {"generation": 2})
    now[0] += 600
    freezer("stop", {"generation": 2})
    assert collector.calls == ["freeze", "freeze", "unfreeze", "freeze", "unfreeze"]
    assert (freezer.freezes, freezer.thaws) == (3, 2)


def test_a_full_collection_no_longer_walks_the_long_lived_heap() -> None:
    """With the Freezer on gc.callbacks, 200,000 long-lived objects are walked by the
    first full collection only; the next one (a new generation of survivors) takes a
    fraction of its CPU time, and an object frozen then freed by its reference count
    is really gone."""
    freezer = gctune.Freezer(interval=3600)
    before = gc.get_freeze_count()
    gc.callbacks.append(freezer)
    try:
        held = [[i] for i in range(200_000)]  # lists: tracked, as sessions' records are

        def full() -> float:
            start = time.thread_time()
            gc.collect()
            return time.thread_time() - start

        first = full()
        assert gc.get_freeze_count() >= before + 200_000
        second = min(full() for _ in range(3))
        assert second < first / 5, (first, second)
        frozen = gc.get_freeze_count()
        del held
        assert gc.get_freeze_count() <= frozen - 200_000
    finally:
        gc.callbacks.remove(freezer)
        gc.unfreeze()
