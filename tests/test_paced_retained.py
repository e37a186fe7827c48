"""Retained messages for a new subscription go out in slices that yield to the reactor
and wait while the subscriber's queue is long (issue: a new ``#`` subscriber over
100,000 retained messages stalled every other client for up to 2 s).

The sans-IO tests drive the slices with a fake clock; the slow one measures, against a
real ``twistd`` broker, the round trips of a bystander client while a ``#`` subscriber
receives 50,000 retained messages."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.codec import Publish, Subscribe, Subscription, encode
from mqtt_twisted.core import delivery
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker
from tests.livebroker import Bystander, LiveBroker, connect

SLICE = delivery.RETAINED_SLICE


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


class SliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker, self.clock = make_broker(BrokerSettings(max_queued=100_000))
        loader = FakeClient(self.broker)
        loader.connect("loader")
        self.count = SLICE * 3 + 17
        for n in range(self.count):
            loader.publish(f"r/{n:05d}", b"v", 0, retain=True)

    def test_slices(self) -> None:
        """One slice at SUBSCRIBE, the rest on later reactor turns, all in order."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        got = publishes(sub.subscribe("r/#"))
        self.assertEqual(len(got), SLICE)
        (rest,) = self.clock.getDelayedCalls()
        self.assertEqual(rest.getTime(), self.clock.seconds())  # the next reactor turn
        self.clock.advance(0)
        got += publishes(sub.received())
        self.assertEqual([p.topic for p in got], [f"r/{n:05d}" for n in range(self.count)])
        self.assertTrue(all(p.retain for p in got))

    def test_stored_messages_keep_no_encoding(self) -> None:
        """Delivering the retained messages (v3.1.1 and v5) leaves the store's messages
        without their PUBLISH bytes: cached there, a '#' subscriber over 100,000 of
        10 KB doubled the broker's RSS (+1 GB), uncounted by the retained quota."""
        for version in (4, 5):
            sub = FakeClient(self.broker, version)
            sub.connect(f"sub{version}")
            got = publishes(sub.subscribe("r/#"))
            self.clock.advance(0)
            got += publishes(sub.received())
            self.assertEqual(len(got), self.count)
        stored = list(self.broker.store.iterRetained("r/#"))
        self.assertEqual(len(stored), self.count)
        self.assertFalse(any(m.wire for m in stored))

    def test_index_changes_between_slices(self) -> None:
        """The memory store's matches are walked lazily (iterRetained): retained messages
        set and deleted between two slices raise nothing; a deleted one not yet sent is
        not sent, and the new subscription gets each topic at most once."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        got = publishes(sub.subscribe("r/#"))
        loader = FakeClient(self.broker)
        loader.connect("loader2")
        sent = {p.topic for p in got}
        unsent = sorted(f"r/{n:05d}" for n in range(self.count) if f"r/{n:05d}" not in sent)
        loader.publish(unsent[0], b"", 0, retain=True)  # deleted before its turn
        for n in range(50):
            loader.publish(f"r/new/{n}", b"v", 0, retain=True)
        self.clock.advance(0)
        got += [p for p in publishes(sub.received()) if p.retain]
        topics = [p.topic for p in got]
        self.assertNotIn(unsent[0], topics)
        self.assertEqual(len(topics), len(set(topics)))
        self.assertEqual(set(unsent[1:]) - set(topics), set())

    def test_waits_for_a_paused_client(self) -> None:
        """A client that does not read gets no more slices until its transport drains."""
        sub = FakeClient(self.broker)
        sub.connect("slow")
        sub.connection.pauseWriting()
        sub.subscribe("r/#", qos=1)
        session = self.broker.sessions["slow"]
        self.assertEqual(len(session.queue), SLICE)
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual(len(session.queue), SLICE)  # parked, not growing
        sub.connection.resumeWriting()
        self.assertEqual(len(session.queue), 0)
        for _ in range(5):
            self.clock.advance(0)
        got = publishes(sub.received())
        self.assertEqual(len(got), self.count)

    def test_stops_when_session_goes(self) -> None:
        """A session discarded mid-way gets nothing more, and nothing is left scheduled."""
        sub = FakeClient(self.broker)
        sub.connect("gone")
        sub.subscribe("r/#")
        sub.disconnect()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotIn("gone", self.broker.sessions)


@pytest.mark.slow
@pytest.mark.timing
def test_bystander_round_trips_while_retained_flow(tmp_path: Path) -> None:
    """50,000 retained 1 KiB messages to a new '#' subscriber: a bystander's round trip
    through the broker stays short (it was stalled for the whole delivery before)."""
    retained, size = 50_000, 1024
    broker = LiveBroker(tmp_path, "--max-queued", "100000")
    try:
        loader = connect(broker.port, "loader")
        body = b"x" * size
        batch = b"".join(encode(Publish(f"load/{n}", body, 0, True), 4) for n in range(retained))
        loader.sendall(batch)
        loader.sendall(b"\xc0\x00")  # PINGREQ: answered once every PUBLISH before it is handled
        assert loader.recv(2) == b"\xd0\x00"
        bystander = Bystander(broker.port)
        baseline = [bystander.round_trip() for _ in range(20)]
        expected = 5 + sum(len(encode(Publish(f"load/{n}", body, 0, True), 4))  # SUBACK
                           for n in range(retained))                         # + PUBLISHes
        received = [0]

        def read_all() -> None:
            wildcard = connect(broker.port, "wildcard", timeout=60)
            wildcard.sendall(encode(Subscribe(1, [Subscription("load/#", 0)])))
            while received[0] < expected:
                data = wildcard.recv(1 << 20)
                if not data:
                    break
                received[0] += len(data)
            wildcard.close()

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        bystander.times.clear()
        while reader.is_alive() and len(bystander.times) < 5000:
            bystander.round_trip()
            time.sleep(0.001)
        reader.join(60)
        during = bystander.times
        assert received[0] == expected, (received[0], expected)
        assert len(during) >= 100, f"only {len(during)} round trips during the flow"
        p99 = bystander.percentile(0.99)
        print(f"bystander round trip: baseline median {statistics.median(baseline):.2f} ms; "
              f"during the retained flow median {statistics.median(during):.2f} ms, "
              f"p99 {p99:.2f} ms, max {max(during):.2f} ms over {len(during)} round trips")
        assert p99 < 50, sorted(during)[-10:]
    finally:
        broker.stop()
