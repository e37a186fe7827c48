"""Acknowledgements wait for the store: the broker core with a store that answers later.

``SlowStore`` is the memory store made to behave like a network store
(``persistsMessages`` true, every write answered only when the test says so), so
these sans-IO tests pin down what a client is told before and after its state is
stored: PUBACK/PUBREC, PUBREL, PUBCOMP and SUBACK each go out only once the writes
they vouch for are stored, and a failed write closes the client instead.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.codec import (
    ConnAck,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
)
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.session import AWAITING_PUBCOMP
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing import FakeClient, make_broker

_WRITES = ("saveSession", "deleteSession", "addSubscription", "removeSubscription",
           "storeOutbound", "removeOutbound", "addInboundQoS2", "removeInboundQoS2",
           "setRetained", "deleteRetained")


class SlowStore(MemoryStore):
    """A memory store whose writes take effect at once but answer only on release()."""

    persistsMessages = True

    def __init__(self, clock: Any = None) -> None:
        super().__init__(clock)
        self.pending: list[tuple[str, Deferred[None]]] = []
        for name in _WRITES:
            setattr(self, name, self._slow(getattr(super(), name), name))

    def _slow(self, method: Any, name: str) -> Any:
        def write(*args: Any) -> Deferred[None]:
            method(*args)
            d: Deferred[None] = Deferred()
            self.pending.append((name, d))
            return d

        return write

    def names(self) -> list[str]:
        return [name for name, _ in self.pending]

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for _, d in pending:
            d.callback(None)

    def fail(self) -> None:
        pending, self.pending = self.pending, []
        for _, d in pending:
            d.errback(StorageError("Redis unreachable"))


class DurableAckTests(SynchronousTestCase):
    """What the broker acknowledges while store writes are under way."""

    def setUp(self) -> None:
        self.store = SlowStore()
        self.broker, self.clock = make_broker(store=self.store)

    def client(self, client_id: str, version: int = 4, clean: bool = False) -> FakeClient:
        c = FakeClient(self.broker, version)
        self.assertEqual([type(p) for p in c.connect(client_id, clean=clean,
                                                     properties={0x11: 3600} if version == 5
                                                     and not clean else None)], [ConnAck])
        self.store.release()  # the session's saveSession
        return c

    def subscribed(self, client_id: str, topic_filter: str, qos: int) -> FakeClient:
        c = self.client(client_id)
        c.subscribe(topic_filter, qos=qos)
        self.store.release()
        c.received()
        return c

    def test_suback_after_subscription_stored(self) -> None:
        """A persistent session's SUBACK waits for the stored subscription; retained messages follow."""
        self.broker.store.setRetained(Message("r/1", b"kept", 1, True))
        self.store.release()
        c = self.client("sub")
        self.assertEqual(c.subscribe("r/#", qos=1), [])
        self.assertEqual(self.store.names(), ["addSubscription"])
        self.store.release()
        packets = c.received()
        self.assertEqual([type(p) for p in packets], [SubAck, Publish])
        self.assertEqual(packets[1].payload, b"kept")

    def test_clean_session_suback_at_once(self) -> None:
        """A clean session stores nothing, so its SUBACK is not held back."""
        c = self.client("clean", clean=True)
        self.assertEqual(c.subscribe("a", qos=1), [SubAck(1, [1])])

    def test_puback_after_queued_message_stored(self) -> None:
        """A QoS 1 PUBLISH for an offline persistent subscriber is PUBACKed once stored."""
        sub = self.subscribed("sub", "a", 1)
        sub.drop()
        self.store.release()
        pub = self.client("pub", clean=True)
        self.assertEqual(pub.publish("a", b"x", qos=1), [])
        self.assertEqual(self.store.names(), ["storeOutbound"])
        self.store.release()
        self.assertEqual(pub.received(), [PubAck(1)])

    def test_pubrel_after_state_stored(self) -> None:
        """PUBREL waits until AWAITING_PUBCOMP is stored, so a crash never resends the PUBLISH."""
        sub = self.subscribed("sub", "a", 2)
        pub = self.client("pub", clean=True)
        pub.publish("a", b"x", qos=2)
        self.store.release()
        publish = next(p for p in sub.received() if isinstance(p, Publish))
        sub.send(PubRec(publish.packet_id))
        self.assertEqual(sub.received(), [])
        self.assertEqual(self.store.names(), ["storeOutbound"])
        self.assertEqual(self.store._outbound["sub"][1].state, AWAITING_PUBCOMP)
        self.store.release()
        self.assertEqual(sub.received(), [PubRel(publish.packet_id)])

    def test_pubcomp_after_packet_id_released(self) -> None:
        """PUBCOMP waits until the released QoS 2 packet id is gone from the store."""
        pub = self.client("pub")
        pub.publish("nobody/listens", b"x", qos=2, packet_id=7)
        self.store.release()
        self.assertEqual(pub.received(), [PubRec(7)])
        pub.send(PubRel(7))
        self.assertEqual(pub.received(), [])
        self.assertEqual(self.store.names(), ["removeInboundQoS2"])
        self.store.release()
        self.assertEqual(pub.received(), [PubComp(7)])

    def test_acks_keep_their_order(self) -> None:
        """An ack whose writes finish first still waits for the acks before it."""
        self.subscribed("sub", "a", 1)
        pub = self.client("pub")
        pub.publish("a", b"1", qos=1, packet_id=1)  # a write for sub's in-flight copy
        pub.publish("elsewhere", b"2", qos=2, packet_id=2)  # only pub's QoS 2 id
        first, second = self.store.pending
        second[1].callback(None)
        self.assertEqual(pub.received(), [])
        first[1].callback(None)
        self.assertEqual(pub.received(), [PubAck(1), PubRec(2)])

    def test_failed_write_closes_v5_client_with_0x89(self) -> None:
        """A QoS 1 PUBLISH whose write fails gets no PUBACK; the v5 client gets DISCONNECT 0x89."""
        self.subscribed("sub", "a", 1).drop()
        self.store.release()
        pub = self.client("pub", version=5, clean=True)
        pub.publish("a", b"x", qos=1)
        self.store.fail()
        packets = pub.received()
        self.assertEqual(packets, [Disconnect(ReasonCode.SERVER_BUSY)])
        self.assertTrue(pub.transport.closed)
        self.assertGreaterEqual(self.broker.stats.store_errors, 1)

    def test_failed_subscription_write_closes_v3_client(self) -> None:
        """A SUBSCRIBE whose write fails gets no SUBACK; a 3.1.1 client is disconnected."""
        c = self.client("sub")
        c.subscribe("a", qos=1)
        self.store.fail()
        self.assertEqual(c.received(), [])
        self.assertTrue(c.transport.closed)

    def test_qos0_not_held_by_pending_writes(self) -> None:
        """QoS 0 delivery to a connected client does not wait for any store write."""
        sub = self.subscribed("sub", "a", 0)
        pub = self.client("pub", clean=True)
        pub.publish("a", b"fast", qos=0)
        self.assertEqual([p.payload for p in sub.received()], [b"fast"])
