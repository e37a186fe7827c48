"""The reconnecting client service on a Clock and in-memory transports: back-off counted
until a CONNACK accepts us, resubscription when the session was not present, QoS 1/2
publishes kept across reconnects, and the bounded offline queue."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.client import PublishError
from mqtt_twisted.client.service import MQTTClientService, QueueFull, backoff
from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    encode,
)
from mqtt_twisted.errors import MQTTError


class FakeEndpoint:
    """Connects to an in-memory transport, or refuses while ``refuse`` is set."""

    def __init__(self) -> None:
        self.refuse = False
        self.attempts = 0
        self.links: list[Link] = []

    def connect(self, factory: Any) -> Any:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = proto
        proto.makeConnection(transport)
        self.links.append(Link(proto, transport))
        return succeed(proto)


class Link:
    """One connection, seen from the broker's side."""

    def __init__(self, proto: Any, transport: StringTransportWithDisconnection) -> None:
        self.proto = proto
        self.transport = transport
        self.decoder = StreamDecoder(4)

    def received(self) -> list[Any]:
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def answer(self, packet: Any) -> None:
        self.proto.dataReceived(encode(packet, 4))

    def drop(self) -> None:
        self.transport.loseConnection()


class ServiceTests(SynchronousTestCase):
    def make(self, **options: Any) -> tuple[MQTTClientService, FakeEndpoint, Clock]:
        clock, endpoint = Clock(), FakeEndpoint()
        options.setdefault("retry_policy", backoff(1.0, 30.0, 2.0, jitter=lambda: 0.0))
        service = MQTTClientService(clock, endpoint, "svc", **options)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service, endpoint, clock

    def accept(self, endpoint: FakeEndpoint, session_present: bool = False) -> Link:
        link = endpoint.links[-1]
        packets = link.received()
        self.assertIsInstance(packets[0], Connect)
        link.answer(ConnAck(session_present, 0))
        return link

    def test_backoff_grows_and_is_capped(self) -> None:
        """Refused TCP connects are retried after 2, 4, 8, 16, 30, 30 s (capped)."""
        service, endpoint, clock = self.make()
        endpoint.refuse = True
        service.stopService()
        service.startService()
        delays = []
        for _ in range(6):
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [2.0, 4.0, 8.0, 16.0, 30.0, 30.0])

    def test_jitter_added(self) -> None:
        """The jitter is added to each delay."""
        policy = backoff(1.0, 10.0, 2.0, jitter=lambda: 0.25)
        self.assertEqual([policy(n) for n in (1, 2, 5)], [2.25, 4.25, 10.25])

    def test_refused_connack_keeps_backing_off(self) -> None:
        """A broker that accepts TCP but refuses CONNECT does not reset the back-off; an
        accepted CONNACK does."""
        service, endpoint, clock = self.make()
        delays = []
        for _ in range(3):
            link = endpoint.links[-1]
            link.received()
            link.answer(ConnAck(False, 5))  # not authorized: the client closes
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [2.0, 4.0, 8.0])
        self.accept(endpoint)
        self.assertTrue(service.online)
        endpoint.links[-1].drop()
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime() - clock.seconds(), 2.0)

    def test_resubscribes_when_session_not_present(self) -> None:
        """Subscriptions are sent again after a reconnect whose CONNACK says session
        present 0, and not when it says 1."""
        service, endpoint, clock = self.make(clean_start=False)
        link = self.accept(endpoint)
        d = service.subscribe([("a/#", 1), ("b", 2)])
        (sub,) = link.received()
        self.assertEqual([s.topic_filter for s in sub.subscriptions], ["a/#", "b"])
        link.answer(SubAck(sub.packet_id, [1, 2]))
        self.assertEqual(self.successResultOf(d), [1, 2])
        link.drop()
        clock.advance(2)
        link = self.accept(endpoint, session_present=True)
        self.assertEqual(link.received(), [])
        link.drop()
        clock.advance(2)
        link = self.accept(endpoint, session_present=False)
        again = link.received()
        self.assertEqual(sorted(s.topic_filter for p in again for s in p.subscriptions),
                         ["a/#", "b"])
        self.assertEqual({type(p) for p in again}, {Subscribe})

    def test_subscription_without_suback_sent_again(self) -> None:
        """A SUBSCRIBE whose SUBACK never came (the connection went first) is sent again
        even when the broker says session present: it may never have had it."""
        service, endpoint, clock = self.make(clean_start=False)
        link = self.accept(endpoint)
        service.subscribe("kept", 1)
        (sub,) = link.received()
        link.answer(SubAck(sub.packet_id, [1]))
        d = service.subscribe("lost", 1)
        link.received()
        link.drop()  # before the SUBACK of "lost"
        self.assertNoResult(d)
        clock.advance(2)
        link = self.accept(endpoint, session_present=True)
        (again,) = link.received()
        self.assertEqual([s.topic_filter for s in again.subscriptions], ["lost"])
        link.answer(SubAck(again.packet_id, [1]))
        self.assertEqual(self.successResultOf(d), [1])

    def test_subscribe_while_offline(self) -> None:
        """A subscribe made offline goes out once on connect and fires with the SUBACK."""
        service, endpoint, _clock = self.make()
        endpoint.links[-1].received()
        d = service.subscribe("x/+", 1)
        self.assertNoResult(d)
        endpoint.links[-1].answer(ConnAck(False, 0))
        (sub,) = endpoint.links[-1].received()
        self.assertEqual([s.topic_filter for s in sub.subscriptions], ["x/+"])
        endpoint.links[-1].answer(SubAck(sub.packet_id, [1]))
        self.assertEqual(self.successResultOf(d), [1])

    def test_offline_queue_in_order(self) -> None:
        """Publishes made before the CONNACK go out in order once it comes; QoS 0 fires
        when written, QoS 1 on its PUBACK."""
        service, endpoint, _clock = self.make()
        results = [service.publish("t", b"%d" % n, n % 2) for n in range(4)]
        self.assertEqual(service.queued, 4)
        link = self.accept(endpoint)
        packets = [p for p in link.received() if isinstance(p, Publish)]
        self.assertEqual([p.payload for p in packets], [b"0", b"1", b"2", b"3"])
        self.assertIsNone(self.successResultOf(results[0]))
        self.assertNoResult(results[1])
        for p in packets:
            if p.qos:
                link.answer(PubAck(p.packet_id))
        self.assertEqual(self.successResultOf(results[3]), 0)
        self.assertEqual(service.queued, 0)

    def test_offline_bound_count(self) -> None:
        """Past the count bound a QoS 0 publish is dropped and counted, a QoS 1 one
        fails with QueueFull; what was queued still goes out."""
        service, endpoint, _clock = self.make(max_queued=2)
        kept = [service.publish("t", b"a", 1), service.publish("t", b"b", 0)]
        dropped = service.publish("t", b"c", 0)
        self.assertIsNone(self.successResultOf(dropped))
        self.assertEqual(service.dropped, 1)
        self.failureResultOf(service.publish("t", b"d", 2), QueueFull)
        link = self.accept(endpoint)
        self.assertEqual([p.payload for p in link.received()], [b"a", b"b"])
        self.assertNoResult(kept[0])

    def test_offline_bound_bytes(self) -> None:
        """The byte bound counts topic and payload."""
        service, _endpoint, _clock = self.make(max_queued_bytes=20)
        service.publish("t", b"x" * 10, 1)
        self.failureResultOf(service.publish("t", b"x" * 10, 1), QueueFull)
        self.assertEqual((service.queued, service.queued_bytes), (1, 11))

    def test_inflight_republished_after_clean_reconnect(self) -> None:
        """A QoS 1 publish cut off by a lost connection (clean session) is published
        again on the next connection; its Deferred fires on that PUBACK only."""
        service, endpoint, clock = self.make()
        link = self.accept(endpoint)
        d = service.publish("t", b"m", 1)
        (_first,) = link.received()
        link.drop()
        self.assertNoResult(d)
        self.assertEqual(service.queued, 1)
        clock.advance(2)
        link = self.accept(endpoint)
        (again,) = link.received()
        self.assertEqual((again.topic, again.payload), ("t", b"m"))
        self.assertNoResult(d)
        link.answer(PubAck(again.packet_id))
        self.assertEqual(self.successResultOf(d), 0)

    def test_inflight_dup_resent_with_persistent_session(self) -> None:
        """With a persistent session the broker still holds, the core resends the QoS 1
        publish with DUP (once) and the Deferred fires on its PUBACK."""
        service, endpoint, clock = self.make(clean_start=False)
        link = self.accept(endpoint)
        d = service.publish("t", b"m", 1)
        (first,) = link.received()
        link.drop()
        clock.advance(2)
        link = self.accept(endpoint, session_present=True)
        (again,) = link.received()
        self.assertEqual((again.packet_id, again.dup), (first.packet_id, True))
        link.answer(PubAck(again.packet_id))
        self.assertEqual(self.successResultOf(d), 0)

    def test_inflight_republished_when_session_lost(self) -> None:
        """A persistent session the broker lost (session present 0): the publish goes
        out again as a new message rather than failing."""
        service, endpoint, clock = self.make(clean_start=False)
        link = self.accept(endpoint)
        d = service.publish("t", b"m", 1)
        link.received()
        link.drop()
        clock.advance(2)
        link = self.accept(endpoint, session_present=False)
        (again,) = link.received()
        self.assertFalse(again.dup)
        link.answer(PubAck(again.packet_id))
        self.assertEqual(self.successResultOf(d), 0)

    def test_refusal_is_the_answer(self) -> None:
        """A v5 broker's refusal (PUBACK 0x87) fails the Deferred with PublishError; it
        is not retried."""
        clock, endpoint = Clock(), FakeEndpoint()
        service = MQTTClientService(clock, endpoint, "v5", version=5)
        service.startService()
        link = endpoint.links[-1]
        link.decoder = StreamDecoder(5)
        link.received()
        link.proto.dataReceived(encode(ConnAck(False, 0), 5))
        d = service.publish("t", b"m", 1)
        (p,) = link.received()
        link.proto.dataReceived(encode(PubAck(p.packet_id, 0x87), 5))
        self.failureResultOf(d, PublishError)
        self.assertEqual(service.queued, 0)
        service.stopService()

    def test_local_refusal_is_the_answer(self) -> None:
        """A publish the client core itself refuses (no packet id left) fails at once
        with that error; it is not queued to be tried again and again."""
        service, endpoint, _clock = self.make()
        self.accept(endpoint)
        service.core._used_ids.update(range(1, 65536))
        failure = self.failureResultOf(service.publish("t", b"m", 1), MQTTError)
        self.assertIn("packet identifiers", str(failure.value))
        self.assertEqual(service.queued, 0)

    def test_stop_sends_disconnect(self) -> None:
        """Stopping the service writes DISCONNECT and stops reconnecting."""
        service, endpoint, clock = self.make()
        link = self.accept(endpoint)
        service.stopService()
        self.assertEqual([type(p).__name__ for p in link.received()], ["Disconnect"])
        clock.advance(100)
        self.assertEqual(endpoint.attempts, 1)

    def test_callbacks(self) -> None:
        """on_connect and on_disconnect hear of every accepted connection and its end."""
        service, endpoint, _clock = self.make()
        seen: list[Any] = []
        service.on_connect.append(lambda proto: seen.append("up"))
        service.on_disconnect.append(lambda reason: seen.append("down"))
        link = self.accept(endpoint)
        link.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, ["up", "down"])
        self.assertFalse(service.online)
