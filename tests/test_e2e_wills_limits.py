"""End-to-end: wills, keep alive, the CONNECT deadline, connection limits, malformed
packets and slow consumers, against a real broker on 127.0.0.1.

The keep alive and deadline tests run in real time (a second or two each).
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import formatEvent, globalLogPublisher

from mqtt_twisted.codec import (
    Connect,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
    encode,
)
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings

try:
    from tests.pahoclient import BrokerTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import BrokerTestCase  # type: ignore[no-redef]

END = "end"

#: A PUBLISH whose fixed header claims QoS 3 (flags 0b0110): malformed [MQTT-3.3.1-4].
QOS3_PUBLISH = bytes((0x36, 7)) + b"\x00\x03bad" + b"\x00\x01"


class WillTests(BrokerTestCase):
    """The will is published when a connection ends without DISCONNECT [MQTT-3.1.2-8]."""

    @inlineCallbacks
    def watcher(self, qos=2):
        client = yield self.paho("will-watcher")
        yield client.subscribe(("will/#", qos), (END, 2))
        return client

    @inlineCallbacks
    def test_will_on_killed_socket(self):
        """A client whose socket dies has its will published, with the will's QoS."""
        watcher = yield self.watcher()
        victim = yield self.paho("victim", will=("will/victim", b"gone", 1, False))
        yield victim.kill()
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload, message.qos, message.retain),
                         ("will/victim", b"gone", 1, False))
        self.assertEqual(self.broker.stats.wills_published, 1)

    @inlineCallbacks
    def test_no_will_after_disconnect(self):
        """A client that sends DISCONNECT has its will discarded [MQTT-3.14.4-3]."""
        watcher = yield self.watcher()
        polite = yield self.paho("polite", will=("will/polite", b"never", 1, False))
        yield polite.disconnect()
        yield self.wait_until(lambda: "polite" not in inspection.session_ids(self.broker))
        pub = yield self.paho("will-pub")
        yield pub.publish(END, b"", 2)
        self.assertEqual((yield watcher.collect_until(END)), [])
        self.assertEqual(self.broker.stats.wills_published, 0)

    @inlineCallbacks
    def test_will_on_protocol_violation(self):
        """A client closed for a malformed packet has its will published."""
        watcher = yield self.watcher()
        raw = yield self.raw("violator", will=Will("will/violator", b"broke the rules", 2))
        raw.send_bytes(QOS3_PUBLISH)
        yield raw.wait_closed()
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload, message.qos),
                         ("will/violator", b"broke the rules", 2))

    @inlineCallbacks
    def test_will_on_takeover(self):
        """A connection taken over by a new one with its client id has its will published."""
        watcher = yield self.watcher()
        first = yield self.paho("twin", will=("will/twin", b"replaced", 0, False))
        second = yield self.paho("twin")
        yield first.disconnected
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload, message.qos),
                         ("will/twin", b"replaced", 0))
        yield second.subscribe(("twin/t", 0))  # the new connection works

    @inlineCallbacks
    def test_retained_will_reaches_later_subscriber(self):
        """A will with retain=1 is stored as a retained message at its QoS."""
        victim = yield self.paho("retainer", will=("will/retained", b"last word", 2, True))
        yield victim.kill()
        yield self.wait_until(lambda: "retainer" not in inspection.session_ids(self.broker))
        later = yield self.paho("latecomer")
        yield later.subscribe(("will/retained", 2))
        message = yield later.next_message()
        self.assertEqual((message.payload, message.qos, message.retain),
                         (b"last word", 2, True))


class KeepAliveTests(BrokerTestCase):
    """Keep alive: closed after 1.5 x keep alive of silence [MQTT-3.1.2-24]."""

    @inlineCallbacks
    def test_silent_client_closed_after_one_and_a_half_keepalives(self):
        """A keep alive 1 client that goes silent is closed after ~1.5 s and its will is
        published."""
        watcher = yield self.paho("ka-watcher")
        yield watcher.subscribe(("will/#", 1))
        raw = yield self.raw("silent", keep_alive=1, will=Will("will/silent", b"timed out", 1))
        started = time.monotonic()
        yield raw.wait_closed(timeout=5)
        elapsed = time.monotonic() - started
        self.assertTrue(1.3 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s")
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload), ("will/silent", b"timed out"))
        self.assertEqual(self.broker.stats.keepalive_timeouts, 1)

    @inlineCallbacks
    def test_pings_keep_connection_open(self):
        """A keep alive 1 client that sends PINGREQ every 0.5 s stays connected past 1.5 s."""
        raw = yield self.raw("pinging", keep_alive=1)
        for _ in range(4):
            yield self.sleep(0.5)
            raw.send(PingReq())
            yield raw.expect(PingResp)
        self.assertFalse(raw.is_closed)
        self.assertEqual(self.broker.stats.keepalive_timeouts, 0)


class ConnectDeadlineTests(BrokerTestCase):
    """A socket that sends no CONNECT within the listener's deadline is closed."""

    connect_timeout = 0.5

    @inlineCallbacks
    def test_silent_socket_closed(self):
        """A socket that sends nothing is closed after connect_timeout (0.5 s)."""
        raw = yield self.raw()
        started = time.monotonic()
        yield raw.wait_closed(timeout=3)
        elapsed = time.monotonic() - started
        self.assertTrue(0.4 <= elapsed <= 2.5, f"closed after {elapsed:.2f}s")
        self.assertEqual(raw.bytes_received, 0)
        self.assertEqual(self.broker.stats.connect_timeouts, 1)

    @inlineCallbacks
    def test_partial_connect_closed(self):
        """Half a CONNECT is no CONNECT: the socket is closed at the deadline too."""
        raw = yield self.raw()
        raw.send_bytes(encode(Connect("slowpoke", 4, True, 0))[:6])
        yield raw.wait_closed(timeout=3)
        self.assertEqual(self.broker.stats.connect_timeouts, 1)

    @inlineCallbacks
    def test_connected_client_not_closed_by_deadline(self):
        """A client that connected in time outlives the deadline."""
        raw = yield self.raw("prompt")
        yield self.sleep(0.8)
        raw.send(PingReq())
        yield raw.expect(PingResp)
        self.assertFalse(raw.is_closed)


class MaxConnectionsTests(BrokerTestCase):
    """A listener holds at most max_connections sockets; the rest are refused and counted."""

    max_connections = 2

    @inlineCallbacks
    def test_third_socket_refused(self):
        """With max_connections=2 a third socket is closed at once and counted; once one
        goes, a new socket is accepted."""
        first = yield self.raw("one")
        second = yield self.raw("two")
        third = yield self.raw()
        yield third.wait_closed(timeout=2)
        self.assertEqual(third.bytes_received, 0)
        self.assertEqual(self.service.stats.connections_refused, 1)
        for client in (first, second):  # the held connections are unaffected
            client.send(PingReq())
            yield client.expect(PingResp)
        yield first.abort()
        yield self.wait_until(lambda: self.service.test_factory.active < 2)
        fourth = yield self.raw("four")
        self.assertFalse(fourth.is_closed)
        self.assertEqual(self.service.stats.connections_refused, 1)


class MalformedPacketTests(BrokerTestCase):
    """A malformed packet closes that one connection; every other client carries on."""

    @inlineCallbacks
    def test_malformed_packet_closes_only_that_connection(self):
        """A PUBLISH with QoS 3 closes its sender; other clients keep receiving."""
        sub = yield self.paho("bystander")
        yield sub.subscribe(("mal/#", 1))
        pub = yield self.paho("mal-pub")
        yield pub.publish("mal/t", b"before", 1)
        self.assertEqual((yield sub.next_message()).payload, b"before")
        bad = yield self.raw("malformed")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bad.send_bytes(QOS3_PUBLISH)  # [MQTT-3.3.1-4]
        yield bad.wait_closed()
        self.assertEqual(self.broker.stats.protocol_errors, 1)
        # A log line names the client and the reason.
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any("malformed" in line and "QoS 3" in line for line in lines), lines)
        self.assertNotIn("malformed", inspection.session_ids(self.broker))
        yield pub.publish("mal/t", b"after", 1)
        self.assertEqual((yield sub.next_message()).payload, b"after")
        self.assertFalse(sub.is_disconnected)
        self.assertFalse(pub.is_disconnected)

    @inlineCallbacks
    def test_wildcard_in_topic_name_closes_connection(self):
        """A PUBLISH to a topic name containing a wildcard closes its sender
        [MQTT-3.3.2-2]; a bystander is unaffected."""
        sub = yield self.paho("bystander2")
        yield sub.subscribe(("#", 0))
        bad = yield self.raw("wild-pub")
        payload = b"\x00\x03a/#x"
        bad.send_bytes(bytes((0x30, len(payload))) + payload)
        yield bad.wait_closed()
        pub = yield self.paho("good-pub")
        yield pub.publish("fine", b"ok", 0)
        message = yield sub.next_message()
        self.assertEqual(message.topic, "fine")


class SlowConsumerTests(BrokerTestCase):
    """A subscriber that stops reading does not make the broker buffer without bound."""

    settings = BrokerSettings(max_queued=100)
    payload_size = 10_000
    batches = 40
    batch = 50  # 40 x 50 x 10 kB = 20 MB

    @inlineCallbacks
    def test_slow_consumer_memory_bounded(self):
        """While one subscriber does not read, its queue stays within max_queued (oldest
        dropped), the broker's write buffer for it stays small, and a fast subscriber
        gets every message."""
        total = self.batches * self.batch
        slow = yield self.raw("slow")
        slow.send(Subscribe(1, [Subscription("flood/#", 0)]))
        yield slow.expect(SubAck)
        slow_seen = []
        slow.on_packet = lambda p: slow_seen.append(int(p.payload[:6]))
        slow.transport.pauseProducing()  # stop reading from the socket
        fast = yield self.paho("fast")
        yield fast.subscribe(("flood/#", 0))
        fast_seen = []
        fast.on_receive = lambda m: fast_seen.append(int(m.payload[:6]))
        fast.keep_messages = False  # keep only the indexes, not 20 MB of payloads
        publisher = yield self.raw("flooder")
        # The broker's side of the socket, for its buffer: no public way reaches it.
        # (On a plain TCP listener the connection writes to it directly.)
        tcp = self.broker.sessions["slow"].connection.transport
        peaks = {"queue": 0, "buffer": 0}

        def sample():
            peaks["queue"] = max(peaks["queue"], self.session("slow").queued)
            buffered = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
            peaks["buffer"] = max(peaks["buffer"], buffered)

        sampler = LoopingCall(sample)
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        filler = b"x" * (self.payload_size - 6)
        sent = 0
        for _ in range(self.batches):
            for _ in range(self.batch):
                publisher.send(Publish("flood/t", b"%06d" % sent + filler))
                sent += 1
            yield self.wait_until(lambda n=sent: len(fast_seen) >= n, timeout=10)
            sample()
        sampler.stop()
        # The fast subscriber got everything, in order.
        self.assertEqual(fast_seen, list(range(total)))
        # The slow one's queue was bounded, and it really was full: the oldest went.
        self.assertLessEqual(peaks["queue"], self.broker.settings.max_queued)
        session = self.session("slow")
        self.assertEqual(session.queued, self.broker.settings.max_queued)
        self.assertGreater(self.broker.stats.messages_dropped, 0)
        self.assertGreater(session.dropped, 0)
        self.assertTrue(inspection.connection_info(self.broker, "slow").paused)
        self.assertLess(peaks["buffer"], 1_000_000, "broker buffered without bound")
        # Once the slow subscriber reads again it gets what fitted, newest last.
        slow.transport.resumeProducing()
        yield self.wait_until(lambda: slow_seen and slow_seen[-1] == total - 1, timeout=10)
        self.assertEqual(slow_seen, sorted(set(slow_seen)))
        self.assertLess(len(slow_seen), total)


class HungClientTests(BrokerTestCase):
    """A client that stops both reading and sending is a dead client."""

    settings = BrokerSettings(max_queued=10)

    @inlineCallbacks
    def hung_client(self, client_id, **connect):
        """A client subscribed to a fire hose that stops reading (and sending), with the
        broker's writes to it backed up; returns the client."""
        hung = yield self.raw(client_id, **connect)
        hung.send(Subscribe(1, [Subscription("hose/#", 0)]))
        yield hung.expect(SubAck)
        hung.transport.pauseProducing()
        publisher = yield self.raw(f"{client_id}-hose")
        filler = b"x" * 10_000

        def burst():  # 25 MB/s for as long as the test runs: the buffers stay full
            for _ in range(50):
                publisher.send(Publish("hose/t", filler))

        hose = LoopingCall(burst)
        hose.start(0.02)
        self.addCleanup(lambda: hose.running and hose.stop())
        # The broker's writes backed up:
        yield self.wait_until(lambda: inspection.connection_info(self.broker, client_id).paused)
        # The kernel takes a little more for a moment; after a second it takes no more.
        yield self.sleep(1.0)
        return hung

    @inlineCallbacks
    def test_keepalive_closes_client_that_stopped_reading(self):
        """A keep alive 1 client that neither reads nor sends, with the broker's writes to
        it backed up, is still closed after ~1.5 s and its will published: closing must not
        wait for a buffer the client will never drain."""
        watcher = yield self.paho("hung-watcher")
        yield watcher.subscribe(("will/#", 1))
        yield self.hung_client("hung", keep_alive=1, will=Will("will/hung", b"hung up", 1))
        started = time.monotonic()  # ~1 s of the keep alive period is gone by now
        try:
            message = yield watcher.next_message(timeout=5)
        except defer.TimeoutError:
            self.fail(f"no will within 5 s; the broker's connection of hung: "
                      f"{inspection.connection_info(self.broker, 'hung')}")
        elapsed = time.monotonic() - started
        self.assertEqual((message.topic, message.payload), ("will/hung", b"hung up"))
        self.assertLessEqual(elapsed, 2.5, f"will published {elapsed:.2f}s late")
        session = inspection.session_info(self.broker, "hung")
        self.assertTrue(session is None or not session.online, session)
        self.assertEqual([c for c in inspection.connections(self.broker)
                          if c.client_id == "hung"], [])

    @inlineCallbacks
    def test_takeover_closes_old_connection_that_stopped_reading(self):
        """Taking over a client id whose old connection stopped reading really closes the
        old socket [MQTT-3.1.4-2], instead of holding it (and its buffer) open."""
        factory = self.service.test_factory
        yield self.hung_client("stuck")
        before = factory.active  # the hung client and its publisher
        yield self.raw("stuck")  # takes over: one more socket until the old one goes
        try:
            yield self.wait_until(lambda: factory.active == before, timeout=3)
        except self.failureException:
            self.fail(f"the taken-over socket is still open 3 s later "
                      f"({factory.active} sockets held, {before} expected)")
