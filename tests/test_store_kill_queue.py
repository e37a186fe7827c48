"""kill -9 after a full queue dropped messages: the store held what the broker held.

A persistent session's queue is bounded (``--max-queued``); past it the oldest queued
message is dropped.  The store must drop its copy too: with the session saved whole
only at CONNECT and DISCONNECT (it used to be), a broker killed after the drops came
back with every message ever queued, past the bound; now CONNECT and DISCONNECT save
only the session's own fields, so nothing would ever remove them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from mqtt_twisted.codec import Disconnect
from tests.test_store_restart import RestartTestCase


class QueueBoundAfterKillTests(RestartTestCase):

    broker_options = ("--max-queued", "5")

    @inlineCallbacks
    def test_dropped_messages_stay_dropped(self) -> Any:
        """12 QoS 1 messages for an offline session with room for 5; kill -9; restart;
        reconnect: the last 5 arrive, in order, and nothing else."""
        sub = yield self.connected("bounded-sub", clean=False)
        yield sub.subscribe("q/#", 1)
        sub.send(Disconnect())
        yield sub.wait_closed()
        publisher = yield self.connected("publisher")
        for pid in range(1, 13):
            ack = yield publisher.publish("q/x", b"m%02d" % pid, 1, pid)
            self.assertEqual(ack.packet_id, pid)

        yield self.kill_and_restart()

        connack = yield sub.connect(self.broker.port, "bounded-sub", clean=False)
        self.assertEqual((connack.reason_code, connack.session_present), (0, True))
        yield self.until(lambda: len(sub.delivered) >= 5, "the queued messages")
        yield deferLater(self.reactor, 0.5, lambda: None)  # anything more would be here
        self.assertEqual([p.payload for p in sub.delivered],
                         [b"m%02d" % pid for pid in range(8, 13)])
