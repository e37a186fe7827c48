"""A publisher that resets its connection right after its last PUBLISH loses nothing."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from mqtt_twisted.codec import Publish, encode
from mqtt_twisted.core.settings import BrokerSettings
from tests.pahoclient import BrokerTestCase

PAD = b"." * 1000
SIOCOUTQ = termios.TIOCOUTQ  # bytes the kernel has not yet had acknowledged


class PublisherResetTests(BrokerTestCase):
    """The bench's publisher-disconnect scenario, reset variant, in one test."""

    # Room to queue everything: the point is the reset, not the queue bound.  The
    # subscriber's in-flight window (20) makes flow control stop reading from the
    # publisher, so most of its bytes still wait in the broker's socket at the reset.
    settings = BrokerSettings(max_queued=100_000)

    @inlineCallbacks
    def reset_after(self, count: int, qos: int) -> Any:
        """Publish ``count`` messages without reading the acks, then reset."""
        data = b"".join(
            encode(Publish("reset/t", b"%06d" % i + PAD, qos, False, False, (i % 65535) + 1 if qos
                           else None), 4)
            for i in range(count))
        yield self.write_then_reset("resetting-publisher", data)

    @inlineCallbacks
    def write_then_reset(self, client_id: str, data: bytes) -> Any:
        """Write ``data`` as a client that never reads its PUBACKs, wait until the broker's
        kernel has every byte, then close: unread PUBACKs make the kernel send a reset."""
        pub = yield self.raw(client_id)
        pub.transport.pauseProducing()  # never reads its PUBACKs
        pub.transport.write(data)
        handle = pub.transport.getHandle()
        for _ in range(500):
            yield deferLater(self.reactor, 0.01, lambda: None)
            if not pub.transport.dataBuffer and not pub.transport._tempDataBuffer:
                unsent = struct.unpack("i", fcntl.ioctl(handle.fileno(), SIOCOUTQ, b"\0" * 4))
                if not unsent[0]:
                    break
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pub.transport.abortConnection()

    @inlineCallbacks
    def test_every_message_of_a_resetting_qos1_publisher_is_delivered(self) -> Any:
        """QoS 1 PUBLISHes the broker's kernel holds when the reset comes are read and routed,
        even though writing the PUBACKs fails first."""
        sub = yield self.paho("reset-sub")
        yield sub.subscribe(("reset/t", 1))
        count = 2000
        yield self.reset_after(count, 1)
        got = yield sub.collect(count, timeout=20)
        self.assertEqual([m.payload[:6] for m in got], [b"%06d" % i for i in range(count)])

    @inlineCallbacks
    def test_small_messages_past_a_reads_share_are_delivered(self) -> Any:
        """The bench's sizes: 64-byte QoS 0 and QoS 1 PUBLISHes, alternating.  A read of
        64 KiB holds hundreds of them, more than one share (READ_BUDGET), so the drain at
        the reset leaves most of them in the decoder, not in the socket: they are the
        client's too, and are handled in shares after the transport is gone."""
        sub = yield self.paho("reset-small-sub")
        yield sub.subscribe(("reset/s", 1))
        count = 5000
        pad = b"." * 58
        data = b"".join(
            encode(Publish("reset/s", b"%06d" % i + pad, i % 2, False, False,
                           (i // 2) % 65535 + 1 if i % 2 else None), 4)
            for i in range(2 * count))
        yield self.write_then_reset("resetting-small-publisher", data)
        got = yield sub.collect(2 * count, timeout=20)
        self.assertEqual(sorted(m.payload[:6] for m in got),
                         [b"%06d" % i for i in range(2 * count)])
