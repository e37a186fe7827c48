"""The retained index (store/retained_index.py): a dict of topics, a trie built for the
first wildcard filter that needs it, and ``#`` walks that survive changes of the dict."""

from __future__ import annotations

import gc
import random

from twisted.internet.defer import Deferred

from mqtt_twisted.codec import topic_matches
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.overlay import SysRetainedOverlay
from mqtt_twisted.store.retained_index import BUILD_STEP, RetainedIndex
from mqtt_twisted.testing import FakeClient, make_broker


def retained(topic: str, payload: bytes = b"v") -> Message:
    return Message(topic, payload, 0, True)


def topics_of(messages) -> list[str]:
    return [m.topic for m in messages if m is not None]


def test_storing_and_hash_and_exact_matches_build_no_trie() -> None:
    """Storing, '#' and a filter without wildcards use the dict alone: no trie is built."""
    index = RetainedIndex()
    for n in range(10):
        index.set(retained(f"a/{n}"))
    index.set(retained("$SYS/x"))
    assert topics_of(index.iter_match("#")) == [f"a/{n}" for n in range(10)]  # no '$'
    assert topics_of(index.iter_match("a/3")) == ["a/3"]
    assert topics_of(index.iter_match("a/x")) == []
    assert len(index) == 11
    assert index._root is None
    assert sorted(topics_of(index.iter_match("a/+"))) == sorted(f"a/{n}" for n in range(10))
    assert index._root is not None


def test_matches_follow_every_change_after_the_trie_is_built() -> None:
    """Random sets, replacements and deletions before and after the trie exists: every
    filter shape matches exactly what a brute-force topic_matches finds."""
    rng = random.Random(19)
    index = RetainedIndex()
    held: dict[str, bytes] = {}
    levels = ["a", "b", "", "$SYS", "ü"]
    filters = ["#", "+", "a/#", "+/+", "a/+/b", "/#", "+/#", "$SYS/#", "a", "a/b/+/+", "b/+"]
    for step in range(3000):
        topic = "/".join(rng.choice(levels) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            index.delete(topic)
            held.pop(topic, None)
        else:
            payload = str(step).encode()
            index.set(retained(topic, payload))
            held[topic] = payload
        if step % 97 == 0:
            for topic_filter in filters:
                found = {m.topic: m.payload for m in index.iter_match(topic_filter)}
                want = {t: p for t, p in held.items() if topic_matches(topic_filter, t)}
                assert found == want, topic_filter
    assert len(index) == len(held)
    assert {m.topic for m in index} == set(held)  # iteration includes '$' topics


def test_hash_walk_survives_changes_of_the_dict() -> None:
    """A '#' walk interrupted by new topics, deletions and replacements raises nothing,
    gives each remaining topic once, skips the deleted, gives replaced topics' new
    message; a second walk started after the change sees the new topics."""
    index = RetainedIndex()
    for n in range(100):
        index.set(retained(f"t/{n}", b"old"))
    walk = index.iter_match("#")
    first = [next(walk) for _ in range(10)]
    index.set(retained("t/new"))  # the dict grows: the walk goes on over a list
    index.delete("t/50")
    index.set(retained("t/60", b"new"))
    rest = list(walk)
    got = topics_of(first + rest)
    assert len(got) == len(set(got))
    assert "t/50" not in got
    assert set(got) == {f"t/{n}" for n in range(100)} - {"t/50"}
    assert [m.payload for m in rest if m.topic == "t/60"] == [b"new"]
    assert "t/new" in topics_of(index.iter_match("#"))
    assert index._walks == {}


def test_walk_that_is_dropped_unregisters() -> None:
    """A walk its subscriber abandons (session gone) leaves nothing registered."""
    index = RetainedIndex()
    for n in range(5):
        index.set(retained(f"t/{n}"))
    walk = index.iter_match("#")
    next(walk)
    assert len(index._walks) == 1
    del walk
    gc.collect()
    assert index._walks == {}
    index.set(retained("t/x"))  # no walk to detach
    assert len(index) == 6


def test_two_walks_each_detached_once() -> None:
    """Two concurrent walks, several changes: each goes on correctly over its own list."""
    index = RetainedIndex()
    for n in range(20):
        index.set(retained(f"t/{n}"))
    one, two = index.iter_match("#"), index.iter_match("#")
    a = [next(one) for _ in range(5)]
    b = [next(two) for _ in range(15)]
    for n in range(20, 25):
        index.set(retained(f"t/{n}"))
    index.delete("t/17")
    a += list(one)
    b += list(two)
    assert topics_of(a) == [f"t/{n}" for n in range(20) if n != 17]
    assert topics_of(b) == [f"t/{n}" for n in range(20) if n != 17]


def test_first_wildcard_filter_builds_the_trie_in_steps() -> None:
    """The first wildcard filter looks at every topic, yields None after each
    BUILD_STEP of them and leaves a complete trie; the next filter uses it (no None)."""
    index = RetainedIndex()
    count = BUILD_STEP * 3 + 5
    for n in range(count):
        index.set(retained(f"t/{n}"))
    items = list(index.iter_match("t/+"))
    assert items.count(None) == 3
    assert len(topics_of(items)) == count
    assert index._complete
    assert None not in list(index.iter_match("+/7"))
    assert topics_of(index.iter_match("+/7")) == ["t/7"]


def test_changes_during_the_build_are_in_the_trie() -> None:
    """Topics set and deleted while the first walk builds the trie (between its steps)
    end up in it exactly: later matches through the trie find what a scan finds."""
    index = RetainedIndex()
    held = {f"t/{n}/x" for n in range(BUILD_STEP * 2)}
    for topic in sorted(held):
        index.set(retained(topic))
    walk = index.iter_match("t/+/x")
    while next(walk) is not None:
        pass  # the first step done
    for n in range(5):
        index.set(retained(f"new/{n}/x"))
        held.add(f"new/{n}/x")
    for topic in sorted(held)[:40:3]:
        index.delete(topic)
        held.discard(topic)
    second = index.iter_match("+/+/x")  # while the first builds: a scan, not the trie
    assert sorted(topics_of(second)) == sorted(held)
    list(walk)
    assert index._complete
    for topic_filter in ("+/+/x", "new/#", "t/1/+", "#"):
        want = sorted(t for t in held if topic_matches(topic_filter, t))
        assert sorted(topics_of(index.iter_match(topic_filter))) == want, topic_filter


def test_build_dropped_unfinished_starts_again() -> None:
    """A first walk dropped half-way (its subscriber left) leaves no partial trie: the
    next wildcard filter builds it whole."""
    index = RetainedIndex()
    for n in range(BUILD_STEP * 2):
        index.set(retained(f"t/{n}"))
    walk = index.iter_match("t/+")
    while next(walk) is not None:
        pass
    del walk
    gc.collect()
    assert index._root is None and not index._complete
    index.set(retained("t/late"))
    assert len(topics_of(index.iter_match("t/+"))) == BUILD_STEP * 2 + 1
    assert index._complete


class _HeldStore(MemoryStore):
    """A memory store whose retained writes wait (as a plugin's subclass might)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[None]] = []

    def setRetained(self, message: Message) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.held.append(d)
        return d.addCallback(lambda _: MemoryStore.setRetained(self, message))


def test_a_subclass_that_overrides_setRetained_is_asked_through_it() -> None:
    """The broker's synchronous path (setRetainedNow) is the memory store's own only:
    a subclass that overrides setRetained gets every retained write through it, bare
    or behind the $SYS overlay (the first version of the fast path skipped it)."""
    assert MemoryStore().setRetainedNow is not None
    for wrap in (lambda s: s, SysRetainedOverlay):
        store = _HeldStore()
        broker, _ = make_broker(store=wrap(store))
        pub = FakeClient(broker)
        pub.connect("pub")
        pub.publish("a/b", b"v", 0, retain=True)
        assert len(store.held) == 1
        assert store.getRetained("a/b").result is None  # not stored before its write
        store.held.pop().callback(None)
        assert store.getRetained("a/b").result.payload == b"v"
