"""The compiled crossing path (cluster/twins.py): which implementation runs.

``cluster/_router.pyx``, ``_batch.pyx`` and ``_inbox.pyx`` compile ``router.py``,
``batch.py`` and ``inbox.py`` as they are; ``twins.py`` sets their methods and
functions over the pure ones.  These tests say which is bound, that what a node
calls on a crossing message is the compiled code where built (and what that code calls
by name, its own module's), and that the switch and the fallback work; the cluster
tests run whichever is bound (compiled here, pure under ``MQTT_TWISTED_PURE=1`` in CI),
and the last one here runs a crossing both ways.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from types import FunctionType
from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from mqtt_twisted.cluster import batch, drain, inbox, router, twins
from mqtt_twisted.codec import _accel
from mqtt_twisted.message import Message

BUILT = twins.COMPILED is not None
needs_build = pytest.mark.skipif(not BUILT, reason="the crossing path is not built here")


@pytest.fixture
def restore() -> Iterator[None]:
    """Leave the codec's switch (and so this one) as it was."""
    was = _accel.compiled_in_use()
    try:
        yield
    finally:
        _accel.use(was)


def _compiled_module(name: str) -> Any:
    return sys.modules[f"mqtt_twisted.cluster._{name}"]


@needs_build
def test_the_crossing_path_is_compiled_where_built(restore: None) -> None:
    """What a crossing QoS 1 message runs through on both nodes is the compiled code."""
    _accel.use(True)
    assert twins.compiled_in_use()
    hot = [(router.ClusterRouter, "dispatch", "router"), (batch.Outbox, "append", "batch"),
           (batch.Outbox, "flush_entries", "batch"), (inbox.InboxReader, "_drain", "inbox")]
    for cls, name, module in hot:
        method = vars(cls)[name]
        assert not isinstance(method, FunctionType), name  # a cyfunction
        assert method is vars(getattr(_compiled_module(module), cls.__name__))[name]
    # Module functions: bound on the pure module (drain.py calls inbox.deliver_items),
    # and the compiled _drain's own global is the compiled one too.
    assert inbox.deliver_items is _compiled_module("inbox").deliver_items
    assert not isinstance(inbox.deliver_items, FunctionType)
    assert drain.inbox is inbox
    assert _compiled_module("inbox").read_entry is _compiled_module("batch").read_entry
    # An instance made anywhere runs them.
    outbox = batch.Outbox(Clock(), "A", lambda *a: succeed(b"1-0"), lambda *a: None)
    assert outbox.append.__func__ is vars(_compiled_module("batch").Outbox)["append"]


def test_the_switch_binds_the_pure_ones(restore: None) -> None:
    _accel.use(False)
    assert not twins.compiled_in_use()
    for (owner, name), pure in twins.PURE.items():
        assert (vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)) is pure
    assert isinstance(vars(router.ClusterRouter)["dispatch"], FunctionType)
    _accel.use(True)
    assert twins.compiled_in_use() == BUILT


def _choice(env_extra: dict[str, str], block: bool = False) -> subprocess.CompletedProcess:
    program = ("import sys\n"
               + ("sys.modules['mqtt_twisted.cluster._inbox'] = None\n" if block else "")
               + "from mqtt_twisted.cluster import router, twins\n"
               "print('compiled' if twins.compiled_in_use() else 'pure')")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    return subprocess.run([sys.executable, "-c", program], env={**env, **env_extra},
                          capture_output=True, text=True)


def test_choice_at_import() -> None:
    """Compiled where built, pure with MQTT_TWISTED_PURE=1 or where one module is
    missing; a missing build with MQTT_TWISTED_REQUIRE_EXT=1 is an ImportError."""
    default = _choice({})
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["compiled" if BUILT else "pure"]
    assert _choice({"MQTT_TWISTED_PURE": "1"}).stdout.split() == ["pure"]
    blocked = _choice({}, block=True)
    assert blocked.returncode == 0, blocked.stderr
    assert blocked.stdout.split() == ["pure"]
    required = _choice({"MQTT_TWISTED_REQUIRE_EXT": "1"}, block=True)
    assert required.returncode != 0
    assert "is not importable" in required.stderr


class _Node:
    """What ``deliver_items`` reads of a node, recording what it delivers."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, str]] = []
        self.router = self
        self.received = 0
        self.leaving: dict[str, Any] = {}
        self.broker = self
        self.publisher = None
        self.store = self
        self.mark = self.mark_index = None
        self.delivered: dict[str, int] = {}
        self.mark_field = b"f"
        self.barriers = self
        self.windows = False
        self.origin = None
        self.seq = 0

    def plain_receiver(self) -> Any:
        return lambda message, origin: self.got.append((message.topic, message.payload, origin))

    def receive(self, message: Message, origin: str, *rest: Any) -> int:
        self.got.append((message.topic, message.payload, origin))
        return 1

    def writes_of(self, f: Any, *args: Any) -> tuple[Any, list[Any]]:
        return f(*args), []


@pytest.mark.parametrize("compiled", [False, True])
def test_a_crossing_both_ways(restore: None, compiled: bool) -> None:
    """Appended on one node, packed into one entry, read and delivered on the other:
    the same messages in the same order, whichever implementation is bound."""
    if compiled and not BUILT:
        pytest.skip("the crossing path is not built here")
    _accel.use(compiled)
    assert twins.compiled_in_use() == compiled
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def add(to: str, *fields: Any) -> Any:
        sent.append((to, fields))
        return succeed(b"1-0")

    clock = Clock()
    outbox = batch.Outbox(clock, "A", add, lambda *a: None)
    writes = [outbox.append("B", Message(f"t/{i}", b"%d" % i, 1), b"B", None, 0, i + 1)
              for i in range(5)]
    clock.advance(0)
    outbox.flush()
    assert len(sent) == 1 and all(w is writes[0] for w in writes)
    to, fields = sent[0]
    node = _Node()
    origin, items = inbox.entry_items([b"o", b"A", *fields])  # type: ignore[misc]
    assert (to, origin) == ("B", "A")
    at, pending = inbox.deliver_items(node, origin, items)  # type: ignore[arg-type]
    assert (at, pending) == (5, [])
    assert node.got == [(f"t/{i}", b"%d" % i, "A") for i in range(5)]
    assert node.received == 5 and node.delivered == {"A": 5}
