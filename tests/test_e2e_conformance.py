"""The protocol defects outside testing found, checked over real sockets.

Raw clients, paho and ``mosquitto_pub`` against a broker on 127.0.0.1: the delayed
will on a clean reconnect, ``$SYS`` spoofing, server-only packets (also with the
Redis store, where the packets after the bad one used to vanish silently), the
receive maximum, and the drain of a socket before its connection is let go.
"""

from __future__ import annotations

import shutil
import socket
import struct
from typing import Any

from twisted.internet import utils
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.mqtt import _read_before_reset
from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
    encode,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.store.redis import RedisStore
from mqtt_twisted.tap import Options
from mqtt_twisted.testing import stop_broker
from tests.pahoclient import BrokerTestCase, connect_raw
from tests.pahov5 import PahoV5Client
from tests.redisserver import RedisServer, temp_dir

MOSQUITTO_PUB = shutil.which("mosquitto_pub")


class DelayedWillTests(BrokerTestCase):
    """[MQTT-3.1.3-9] over TCP: the reconnect that used to go unanswered."""

    @inlineCallbacks
    def test_clean_reconnect_within_will_delay(self) -> Any:
        """A v5 client with session expiry 30 and will delay 3 drops its socket and
        reconnects with Clean Start 1 a moment later: CONNACK (session present 0) at once,
        and the will reaches a paho subscriber."""
        watcher = yield self.paho("watcher")
        yield watcher.subscribe(("wills/#", 1))
        first = yield connect_raw(self.reactor, self.port, 5)
        first.send(Connect("delayed", 5, False, 0,
                           Will("wills/delayed", b"gone", 1, False, {P.WILL_DELAY_INTERVAL: 3}),
                           properties={P.SESSION_EXPIRY_INTERVAL: 30}))
        yield first.expect(ConnAck)
        yield first.abort()
        yield self.sleep(0.2)
        second = yield connect_raw(self.reactor, self.port, 5)
        self.addCleanup(second.abort)
        second.send(Connect("delayed", 5, True, 0))
        connack = yield second.expect(ConnAck, timeout=2)
        self.assertEqual((connack.reason_code, connack.session_present), (0, False))
        will = yield watcher.next_message(timeout=2)
        self.assertEqual((will.topic, will.payload), ("wills/delayed", b"gone"))


class ReservedTopicTests(BrokerTestCase):
    """Clients cannot spoof the broker's statistics."""

    settings = BrokerSettings()

    @inlineCallbacks
    def test_mosquitto_pub_cannot_retain_into_sys(self) -> Any:
        """``mosquitto_pub -r`` to a $SYS topic is dropped: a later subscriber finds no
        retained spoof, and the broker keeps serving."""
        if MOSQUITTO_PUB is None:
            self.fail("mosquitto_pub is missing (scripts/test installs mosquitto-clients)")
        _, err, code = yield utils.getProcessOutputAndValue(MOSQUITTO_PUB, [
            "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-r",
            "-t", "$SYS/broker/clients/connected", "-m", "999999"])
        self.assertEqual(code, 0, err)
        watcher = yield self.paho("watcher")
        yield watcher.subscribe(("$SYS/broker/clients/connected", 0))
        yield watcher.no_message(0.3)
        self.assertEqual(self.broker.stats.messages_received, 0)

    @inlineCallbacks
    def test_paho_v5_gets_not_authorized(self) -> Any:
        """A paho MQTT 5 QoS 1 PUBLISH to $SYS gets PUBACK 0x87."""
        client = PahoV5Client(self.reactor, self.port, "v5-spoofer")
        self.addCleanup(client.stop)
        yield client.connect()
        info = yield client.publish("$SYS/broker/uptime", b"0", qos=1)
        self.assertEqual(info, RC.NOT_AUTHORIZED)


class ServerOnlyPacketTests(BrokerTestCase):
    """A client that sends CONNACK (or SUBACK, UNSUBACK, PINGRESP) is disconnected."""

    @inlineCallbacks
    def check(self, version: int) -> Any:
        watcher = yield self.paho("watcher")
        yield watcher.subscribe(("t/#", 1))
        client = yield connect_raw(self.reactor, self.port, version)
        self.addCleanup(client.abort)
        client.send(Connect("bad", version, True, 0))
        yield client.expect(ConnAck)
        client.send_bytes(encode(Publish("t/before", b"", 1, False, False, 1), version)
                          + encode(ConnAck(False, 0), version)
                          + encode(Publish("t/after", b"", 1, False, False, 2), version))
        yield client.expect(PubAck)
        if version == 5:
            disconnect = yield client.expect(Disconnect)
            self.assertEqual(disconnect.reason_code, RC.PROTOCOL_ERROR)
        yield client.wait_closed()
        got = yield watcher.next_message()
        self.assertEqual(got.topic, "t/before")
        yield watcher.no_message(0.3)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_v5(self) -> Any:
        return self.check(5)

    def test_v311(self) -> Any:
        return self.check(4)


class ServerOnlyPacketRedisTests(ServerOnlyPacketTests):
    """The same with the Redis store, whose writes answer later: the packets after the
    bad one are refused with it, not dropped without a word."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.redis = RedisServer(reactor, temp_dir(self))
        yield self.redis.start()
        self.addCleanup(self.redis.stop)
        yield super().setUp()
        # Trial runs cleanups before tearDown: stop the broker while Redis still runs.
        self.addCleanup(stop_broker, self.service)

    def tearDown(self) -> None:
        pass  # (stopped in a cleanup, above)

    def make_store(self) -> Any:
        from twisted.internet import reactor

        return RedisStore.fromURL(reactor, self.redis.url())

    @inlineCallbacks
    def check(self, version: int) -> Any:
        # A persistent subscriber makes every QoS 1 message a store write.
        sub = yield connect_raw(self.reactor, self.port, 4)
        self.addCleanup(sub.abort)
        sub.send(Connect("persistent-sub", 4, False, 0))
        yield sub.expect(ConnAck)
        sub.send(Subscribe(1, [Subscription("t/#", 1)]))
        yield sub.expect(SubAck)
        client = yield connect_raw(self.reactor, self.port, version)
        self.addCleanup(client.abort)
        client.send(Connect("bad", version, True, 0))
        yield client.expect(ConnAck)
        client.send_bytes(encode(Publish("t/before", b"", 1, False, False, 1), version)
                          + encode(PingResp(), version)
                          + encode(Publish("t/after", b"", 1, False, False, 2), version))
        if version == 5:
            disconnect = yield client.expect(Disconnect)
            self.assertEqual(disconnect.reason_code, RC.PROTOCOL_ERROR)
        yield client.wait_closed()
        got = yield sub.expect(Publish)
        self.assertEqual(got.topic, "t/before")
        sub.send(PubAck(got.packet_id))
        sub.send(PingReq())
        yield sub.expect(PingResp)  # nothing else came before the ping's answer
        self.assertEqual(self.flushLoggedErrors(), [])


class ReceiveMaximumOptionTests(SynchronousTestCase):
    """``--receive-maximum`` (the Paho suite's test_flow_control2 needs a small one)."""

    def test_option_reaches_the_broker(self) -> None:
        from mqtt_twisted.tap import broker_settings

        options = Options()
        options.parseOptions(["--receive-maximum", "10"])
        self.assertEqual(broker_settings(options).receive_maximum, 10)

    def test_out_of_range(self) -> None:
        from twisted.python import usage

        for value in ("0", "65536", "-1"):
            options = Options()
            self.assertRaises(usage.UsageError, options.parseOptions,
                              ["--receive-maximum", value])


class ReceiveMaximumTests(BrokerTestCase):
    """The advertised receive maximum, enforced on a paho-style QoS 2 flood."""

    settings = BrokerSettings(receive_maximum=10)

    @inlineCallbacks
    def test_flood_beyond_receive_maximum_gets_0x93(self) -> Any:
        client = yield connect_raw(self.reactor, self.port, 5)
        self.addCleanup(client.abort)
        client.send(Connect("flood", 5, True, 0))
        connack = yield client.expect(ConnAck)
        self.assertEqual(connack.properties[P.RECEIVE_MAXIMUM], 10)
        client.send_bytes(b"".join(encode(Publish("t", b"", 2, False, False, pid), 5)
                                   for pid in range(1, 12)))  # never PUBREL
        seen = []
        while True:
            packet = yield client.next_packet()
            seen.append(type(packet).__name__)
            if isinstance(packet, Disconnect):
                break
        self.assertEqual(seen, ["PubRec"] * 10 + ["Disconnect"])
        self.assertEqual(packet.reason_code, RC.RECEIVE_MAXIMUM_EXCEEDED)
        yield client.wait_closed()


class _FakeTCPTransport:
    """What ``_read_before_reset`` needs of a Twisted TCP transport, on a real socket:
    ``doRead`` reads as Twisted's does and counts its calls."""

    bufferSize = 65536

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self.reads = 0
        self.received = bytearray()
        self.lost: list[Any] = []

    def doRead(self) -> Any:
        self.reads += 1
        try:
            data = self.socket.recv(self.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return "lost"
        if not data:
            return "done"
        self.received += data
        return None

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)


class ReadBeforeResetTests(SynchronousTestCase):
    """The drain that keeps a resetting publisher's last PUBLISHes reads only what the
    kernel holds: a silent socket used to cost 4,096 failing ``recv`` calls."""

    def pair(self) -> tuple[socket.socket, socket.socket]:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        server.setblocking(False)
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        return client, server

    def test_silent_socket_is_not_read(self) -> None:
        _, server = self.pair()
        transport = _FakeTCPTransport(server)
        _read_before_reset(transport)
        transport.connectionLost("deadline")
        self.assertEqual(transport.reads, 0)
        self.assertEqual(transport.lost, ["deadline"])

    def test_everything_sent_before_a_reset_is_read(self) -> None:
        """What a publisher sent before resetting is read, in as few reads as it takes."""
        client, server = self.pair()
        sent = b"x" * 100_000
        client.sendall(sent)
        # Until our kernel holds all of it: a blocking peek that waits for every byte.
        server.settimeout(5)
        self.assertEqual(len(server.recv(len(sent), socket.MSG_PEEK | socket.MSG_WAITALL)),
                         len(sent))
        server.setblocking(False)
        server.send(b"unread")  # what makes the client's close a reset
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        transport = _FakeTCPTransport(server)
        _read_before_reset(transport)
        transport.connectionLost("reset")
        self.assertEqual(bytes(transport.received), sent)
        self.assertLessEqual(transport.reads, len(sent) // transport.bufferSize + 3)
        self.assertEqual(transport.lost, ["reset"])


class LingeringCloseTests(BrokerTestCase):
    """A connection the broker closes after a DISCONNECT with a reason reads and drops what
    the client still sends until the client closes: closing with unread bytes would make
    the kernel reset the connection, and a reset destroys the DISCONNECT the client has
    not read yet (the Paho suite's test_flow_control2 failed on that)."""

    settings = BrokerSettings(receive_maximum=2)

    @inlineCallbacks
    def test_disconnect_survives_packets_the_client_sends_after_it(self) -> Any:
        client = yield connect_raw(self.reactor, self.port, 5)
        self.addCleanup(client.abort)
        client.send(Connect("late-writer", 5, True, 0))
        yield client.expect(ConnAck)
        client.transport.pauseProducing()  # read nothing until the end
        client.send_bytes(b"".join(encode(Publish("t", b"", 2, False, False, pid), 5)
                                   for pid in (1, 2, 3)))
        yield self.sleep(0.3)  # the broker has answered and closed by now
        for _ in range(3):  # what a client's loop still writes (paho's PUBRELs)
            client.send_bytes(encode(PingReq(), 5))
            yield self.sleep(0.1)
        client.transport.resumeProducing()
        seen = []
        while True:
            packet = yield client.next_packet()
            seen.append(packet)
            if isinstance(packet, Disconnect):
                break
        self.assertEqual([type(p).__name__ for p in seen], ["PubRec", "PubRec", "Disconnect"])
        self.assertEqual(seen[-1].reason_code, RC.RECEIVE_MAXIMUM_EXCEEDED)
        yield client.wait_closed()
        # A FIN, not a reset: the broker read and dropped the late bytes (with a reset,
        # a client's next write fails with EPIPE before it has read the DISCONNECT).
        self.assertTrue(client.close_reason.check(ConnectionDone), client.close_reason)
