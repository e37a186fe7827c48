"""kill -9 and the Redis store's batched record writes (``store/_redisbatch.py``).

A queued QoS 1 message going in flight is no longer written again with its packet id:
its packet id follows its sequence number and the session keeps a ``sent`` mark, the
highest sequence number sent.  These tests kill the broker with messages that went in
flight that way, and check that the client gets what a stored packet id gave it:
resends with DUP=1 and the ids it saw, then the rest in order.  And once every record
is gone, the mark keeps new messages' sequence numbers above it, so that they are not
taken for sent ones after the next kill.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from mqtt_twisted.codec import Disconnect, PubAck
from tests.test_store_restart import RestartTestCase


class SentMarkKillTests(RestartTestCase):

    broker_options = ("--max-inflight", "4")

    @inlineCallbacks
    def offline_subscriber(self, client_id: str) -> Any:
        sub = yield self.connected(client_id, clean=False)
        yield sub.subscribe("q/#", 1)
        sub.send(Disconnect())
        yield sub.wait_closed()
        return sub

    @inlineCallbacks
    def publish(self, payloads: list[bytes]) -> Any:
        """Publish each at QoS 1 and wait for its PUBACK: from then on it is stored."""
        publisher = yield self.connected("publisher")
        for pid, payload in enumerate(payloads, 1):
            ack = yield publisher.publish("q/x", payload, 1, pid)
            self.assertEqual(ack.packet_id, pid)
        publisher.send(Disconnect())
        yield publisher.wait_closed()

    @inlineCallbacks
    def test_queued_messages_sent_then_killed(self) -> Any:
        """10 messages queued for an offline session; it reconnects and takes 4 (the
        in-flight window) without acknowledging, then acknowledges the first (a 5th
        goes in flight); kill -9; restart; reconnect: the 4 unacknowledged come again
        with DUP=1 and their ids, then the 5 never sent, in order, with DUP=0."""
        sub = yield self.offline_subscriber("marked-sub")
        payloads = [b"m%02d" % i for i in range(10)]
        yield self.publish(payloads)
        sub.auto_ack = False
        connack = yield sub.connect(self.broker.port, "marked-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.publishes) >= 4, "the in-flight window")
        first = list(sub.publishes)
        self.assertEqual([p.payload for p in first], payloads[:4])
        self.assertFalse(any(p.dup for p in first))
        sub.send(PubAck(first[0].packet_id))  # type: ignore[arg-type]
        yield self.until(lambda: len(sub.publishes) >= 5, "the fifth message")
        in_flight = sub.publishes[1:5]
        self.assertEqual([p.payload for p in in_flight], payloads[1:5])
        yield deferLater(self.reactor, 0.3, lambda: None)  # the PUBACK's removal stored

        yield self.kill_and_restart()

        sub.auto_ack = True
        sub.publishes.clear()
        connack = yield sub.connect(self.broker.port, "marked-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.publishes) >= 9, "every unacknowledged message")
        yield deferLater(self.reactor, 0.3, lambda: None)  # anything more would be here
        got = sub.publishes
        self.assertEqual([p.payload for p in got], payloads[1:])
        self.assertEqual([(p.packet_id, p.dup) for p in got[:4]],
                         [(p.packet_id, True) for p in in_flight])
        self.assertFalse(any(p.dup for p in got[4:]))

    @inlineCallbacks
    def test_sequence_goes_on_after_every_record_went(self) -> Any:
        """3 messages queued for an offline session, which reconnects and acknowledges
        them (nothing stored is left but its sent mark); kill -9; restart; 2 messages
        are queued for it; kill -9 again; restart; it reconnects: the 2 arrive as new
        messages (DUP=0), not as resends."""
        sub = yield self.offline_subscriber("seq-sub")
        yield self.publish([b"a", b"b", b"c"])
        yield sub.connect(self.broker.port, "seq-sub", clean=False)
        yield self.until(lambda: len(sub.delivered) >= 3, "the first messages")
        yield deferLater(self.reactor, 0.3, lambda: None)  # the PUBACKs' removals stored

        yield self.kill_and_restart()
        yield self.publish([b"d", b"e"])
        yield self.kill_and_restart()

        sub.publishes.clear()
        connack = yield sub.connect(self.broker.port, "seq-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.publishes) >= 2, "the queued messages")
        yield deferLater(self.reactor, 0.3, lambda: None)
        self.assertEqual([(p.payload, p.dup) for p in sub.publishes],
                         [(b"d", False), (b"e", False)])
