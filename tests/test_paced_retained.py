"""Retained messages for a new subscription go out in slices that yield to the reactor
and wait while the subscriber's queue is long (issue: a new ``#`` subscriber over
100,000 retained messages stalled every other client for up to 2 s).

The sans-IO tests drive the slices with a fake clock; the slow one measures, against a
real ``twistd`` broker, the round trips of a bystander client while a ``load/#``
subscriber receives 100,000 retained messages."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.codec import Publish, Subscribe, Subscription, encode
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.core import retained
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker
from tests.livebroker import Bystander, LiveBroker, connect

SLICE = retained.RETAINED_SLICE
#: Retained payloads big enough for several slices of SLICE_BYTES among a few hundred.
PAYLOAD = b"v" * 2000


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def per_slice() -> int:
    """Messages of ``PAYLOAD`` on topics ``r/NNNNN`` that one slice writes."""
    cost = len(PAYLOAD) + len("r/00000") + retained._OVERHEAD
    return -(-retained.SLICE_BYTES // cost)


def count_writes(client: FakeClient) -> list[int]:
    """The size of each write the broker makes to ``client`` from now on."""
    writes: list[int] = []
    write = client.transport.write

    def counted(data: bytes) -> None:
        writes.append(len(data))
        write(data)

    client.transport.write = counted  # type: ignore[method-assign]
    return writes


class SliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker, self.clock = make_broker(BrokerSettings(max_queued=100_000))
        self.loader = FakeClient(self.broker)
        self.loader.connect("loader")
        self.count = per_slice() * 3 + 17
        for n in range(self.count):
            self.loader.publish(f"r/{n:05d}", PAYLOAD, 0, retain=True)

    def drain(self, turns: int = 100) -> None:
        for _ in range(turns):
            if not self.clock.getDelayedCalls():
                return
            self.clock.advance(0)

    def test_slices(self) -> None:
        """One slice of SLICE_BYTES at SUBSCRIBE, written at once; the rest on later
        reactor turns, one write each, all in order."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        writes = count_writes(sub)
        got = publishes(sub.subscribe("r/#"))
        self.assertEqual(len(got), per_slice())
        self.assertEqual(len(writes), 2)  # the SUBACK, then the slice
        (rest,) = self.clock.getDelayedCalls()
        self.assertEqual(rest.getTime(), self.clock.seconds())  # the next reactor turn
        self.drain()
        got += publishes(sub.received())
        self.assertEqual([p.topic for p in got], [f"r/{n:05d}" for n in range(self.count)])
        self.assertTrue(all(p.retain and p.payload == PAYLOAD and not p.qos for p in got))
        self.assertEqual(len(writes), 1 + 4)  # the SUBACK, 3 full slices, the 17 left
        self.assertEqual(writes[1:], [writes[1]] * 3 + [writes[4]])
        self.assertLess(writes[4], writes[1])

    def test_batch_is_what_one_by_one_encoding_gives(self) -> None:
        """v3.1.1 and v5 subscribers get exactly the bytes of each retained PUBLISH
        encoded alone, after their SUBACK; the counters count every message."""
        for version in (4, 5):
            sub = FakeClient(self.broker, version)
            sub.connect(f"sub{version}")
            sent = self.broker.stats.messages_sent
            sub.subscribe("r/#")
            self.drain()
            want = b"".join(encode(Publish(f"r/{n:05d}", PAYLOAD, 0, True), version)
                            for n in range(self.count))
            written = bytes(sub.transport.written)
            self.assertEqual(written[-len(want):], want)
            self.assertEqual(self.broker.stats.messages_sent - sent, self.count)

    def test_slice_ends_on_time(self) -> None:
        """A slice whose time is up ends at the next clock check, even under its bytes."""
        self.patch(retained, "SLICE_SECONDS", 0)
        self.patch(retained, "SLICE_BYTES", 1 << 30)
        sub = FakeClient(self.broker)
        sub.connect("sub")
        got = publishes(sub.subscribe("r/#"))
        self.assertEqual(len(got), retained.CLOCK_EVERY)
        self.drain()
        self.assertEqual(len(got) + len(publishes(sub.received())), self.count)

    def test_looking_at_topics_without_matches_is_paced_too(self) -> None:
        """A first wildcard filter that matches nothing still looks at every topic (and
        builds the trie): in slices, ended by the time budget at the store's Nones."""
        self.patch(retained, "SLICE_SECONDS", 0)
        sub = FakeClient(self.broker)
        sub.connect("sub")
        self.assertEqual(publishes(sub.subscribe("zz/+")), [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # not done in one turn
        self.drain()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(publishes(sub.received()), [])

    def test_one_by_one_keeps_order_among_batches(self) -> None:
        """v5 messages with properties go one by one between batched ones, in order."""
        loader = FakeClient(self.broker, 5)
        loader.connect("loader5")
        for n in range(0, self.count, 7):
            loader.publish(f"r/{n:05d}", PAYLOAD, 0, retain=True,
                           properties={P.CONTENT_TYPE: "text/plain"})
        sub = FakeClient(self.broker, 5)
        sub.connect("sub")
        got = publishes(sub.subscribe("r/#"))
        self.drain()
        got += publishes(sub.received())
        self.assertEqual([p.topic for p in got], [f"r/{n:05d}" for n in range(self.count)])
        self.assertEqual([n for n, p in enumerate(got) if p.properties],
                         list(range(0, self.count, 7)))

    def test_client_maximum_packet_size(self) -> None:
        """Messages over a v5 client's maximum packet size are left out (counted), the
        others delivered [MQTT-3.1.2-25]."""
        self.loader.publish("r/big", b"x" * 5000, 0, retain=True)
        sub = FakeClient(self.broker, 5)
        sub.connect("small", properties={P.MAXIMUM_PACKET_SIZE: 3000})
        got = publishes(sub.subscribe("r/#"))
        self.drain()
        got += publishes(sub.received())
        self.assertEqual(len(got), self.count)
        self.assertNotIn("r/big", [p.topic for p in got])
        self.assertEqual(self.broker.stats.dropped_too_large, 1)

    def test_stored_messages_keep_no_encoding(self) -> None:
        """Delivering the retained messages (v3.1.1 and v5) leaves the store's messages
        without their PUBLISH bytes: cached there, a '#' subscriber over 100,000 of
        10 KB doubled the broker's RSS (+1 GB), uncounted by the retained quota."""
        for version in (4, 5):
            sub = FakeClient(self.broker, version)
            sub.connect(f"sub{version}")
            got = publishes(sub.subscribe("r/#"))
            self.drain()
            got += publishes(sub.received())
            self.assertEqual(len(got), self.count)
        stored = [m for m in self.broker.store.iterRetained("r/#") if m is not None]
        self.assertEqual(len(stored), self.count)
        self.assertFalse(any(m.wire for m in stored))

    def check_index_changes(self, topic_filter: str) -> None:
        sub = FakeClient(self.broker)
        sub.connect("sub")
        got = publishes(sub.subscribe(topic_filter))
        sent = {p.topic for p in got}
        unsent = sorted(f"r/{n:05d}" for n in range(self.count) if f"r/{n:05d}" not in sent)
        self.loader.publish(unsent[0], b"", 0, retain=True)  # deleted before its turn
        for n in range(50):
            self.loader.publish(f"r/new/{n}", b"v", 0, retain=True)
        self.drain()
        got += [p for p in publishes(sub.received()) if p.retain]
        topics = [p.topic for p in got]
        self.assertNotIn(unsent[0], topics)
        self.assertEqual(len(topics), len(set(topics)))
        self.assertEqual(set(unsent[1:]) - set(topics), set())

    def test_index_changes_between_slices(self) -> None:
        """The memory store's matches are walked lazily (iterRetained): retained messages
        set and deleted between two slices of 'r/#' (the trie's walk) raise nothing; a
        deleted one not yet sent is not sent, and each topic goes at most once."""
        self.check_index_changes("r/#")

    def test_dict_changes_between_slices(self) -> None:
        """The same for '#', which walks the store's dict itself."""
        self.check_index_changes("#")

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
        self.drain()
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
    """100,000 retained 1 KiB messages to a new 'load/#' subscriber (the first wildcard
    filter: it also builds the retained trie): a bystander's round trip through the
    broker stays short (it was stalled for the whole delivery before).  The bystander
    pings back to back: the flow lasts about a second (50,000 messages and a 1 ms pause
    between pings gave fewer than the 100 round trips a p99 needs)."""
    retained, size = 100_000, 1024
    # 155 MB of retained messages from one loader: over one client's default share
    # (--max-retained-bytes-per-client, 128 MiB), which would refuse the last 13,000.
    broker = LiveBroker(tmp_path, "--max-queued", "100000",
                        "--max-retained-bytes-per-client", "0")
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
