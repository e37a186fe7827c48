"""A plain TCP MQTT listener: the connection is its transport's protocol, the port
accepts for itself; every other stream keeps the thin protocol (``adapters/_leanmqtt.py``)."""

from __future__ import annotations

import errno
import gc
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters import _leanmqtt
from mqtt_twisted.adapters._leanmqtt import MQTTServer
from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.adapters.mqtt import MQTTAdapter, MQTTStreamFactory, MQTTStreamProtocol
from mqtt_twisted.codec import ConnAck, Connect, Disconnect, Publish, encode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.errors import PacketTooLarge
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing.fake_service import FakeBrokerService
from tests.pahoclient import BrokerTestCase, connect_raw


class LeanConnectionTests(BrokerTestCase):
    settings = BrokerSettings()

    @inlineCallbacks
    def test_the_connection_is_the_transports_protocol_and_producer(self) -> Any:
        """No protocol object between a plain TCP transport and its connection: the
        connection is the transport's protocol and push producer, writes to it, and
        keeps its peer as the transport, whose host and port slots make the text when
        asked (no address tuple kept)."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean-1")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean-1"]
        server = conn.transport
        self.assertIsInstance(server, MQTTServer)
        self.assertIs(server.protocol, conn)
        self.assertIs(server.producer, conn)
        self.assertIs(server.limit, self.service.test_factory.limit)
        self.assertIs(conn._peer, server)
        self.assertEqual(server.client, ("127.0.0.1", server.peer_port))
        self.assertEqual(conn.peer, f"127.0.0.1:{server.peer_port}")
        self.assertEqual(server.getPeer().port, server.peer_port)
        self.assertEqual(vars(server), {})
        shells = [o for o in gc.get_objects() if isinstance(o, MQTTStreamProtocol)
                  and o.factory is self.service.test_factory]
        self.assertEqual(shells, [])
        self.assertEqual(self.service.test_factory.active, 1)
        yield client.abort()
        yield self.wait_until(lambda: self.service.test_factory.active == 0)
        self.assertEqual(server.fileno(), -1)
        self.assertIs(conn.transport, _leanmqtt.GONE)  # no cycle left behind
        self.assertEqual(conn.peer, f"127.0.0.1:{server.peer_port}")  # (for late log lines)

    @inlineCallbacks
    def test_flow_control_pauses_and_resumes_reading(self) -> Any:
        """pauseReading and resumeReading, what the connection calls on its transport
        when a subscriber it feeds is full, stop and start reading the socket."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean-2")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean-2"]
        conn.throttle()
        self.assertNotIn(conn.transport, self.reactor.getReaders())
        conn.unthrottle()
        self.assertIn(conn.transport, self.reactor.getReaders())
        yield client.abort()


    @inlineCallbacks
    def test_disconnect_closes_without_a_write_event(self) -> Any:
        """After a client's DISCONNECT, with nothing to send, the transport is closed
        once the turn is over: it never registers for a write event, and the client
        sees an orderly close."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean-3")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean-3"]
        server = conn.transport
        registered = []
        add_writer = self.reactor.addWriter
        self.patch(self.reactor, "addWriter",
                   lambda w: (registered.append(w), add_writer(w))[1])
        client.send(Disconnect())
        yield client.wait_closed()
        yield self.wait_until(lambda: server.fileno() == -1)
        self.assertNotIn(server, registered)
        self.assertTrue(client.close_reason.check(ConnectionDone))
        self.assertEqual(self.service.test_factory.active, 0)

    @inlineCallbacks
    def test_closing_with_bytes_waiting_sends_them_first(self) -> Any:
        """A close the broker decides (a protocol error: a second CONNECT) writes
        what is waiting, then half-closes; the client reads all of it."""
        client = yield connect_raw(self.reactor, self.port, version=5)
        yield client.connect("lean-4")
        client.send(Connect("lean-4", 5, True, 0))
        packet = yield client.next_packet()
        self.assertIsInstance(packet, Disconnect)
        self.assertEqual(packet.reason_code, 0x82)  # protocol error
        yield client.abort()

    @inlineCallbacks
    def test_a_connection_closed_by_the_broker_is_not_drained_when_let_go(self) -> Any:
        """What a peer still sends after the broker closed its connection is dropped,
        so the read before the reset (``drain``) has nothing to read it for.  It read
        up to 4,096 x 64 KiB in one turn: 8 sockets streaming zeros after a refused
        CONNECT stalled a bystander 60-118 ms when their close grace ended (CI,
        tests/test_limits_e2e.py::test_huge_packets_announced_before_connect)."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean-5")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean-5"]
        server = conn.transport
        conn.violation(PacketTooLarge("refused"))  # closed on our side: half-closed
        self.assertEqual(conn.state, CLOSED)
        client.transport.getHandle().send(bytes(1 << 15))  # (loopback: in at once)
        waiting = _leanmqtt.pending_bytes(server)
        self.assertGreater(waiting, 0)
        _leanmqtt.drain(server)
        self.assertEqual(_leanmqtt.pending_bytes(server), waiting)
        yield client.abort()

    @inlineCallbacks
    def test_a_live_connection_is_drained_when_let_go(self) -> Any:
        """The other side of the rule above: a connection still open on our side has
        what its peer sent before it left read and handled."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("lean-6")
        [conn] = [c for c in self.broker.connections if c.client_id == "lean-6"]
        server = conn.transport
        client.transport.getHandle().send(encode(Publish("lean/6", b"x", 0), 4))
        self.assertGreater(_leanmqtt.pending_bytes(server), 0)
        received = self.broker.stats.messages_received
        _leanmqtt.drain(server)
        self.assertEqual(_leanmqtt.pending_bytes(server), 0)
        self.assertEqual(self.broker.stats.messages_received, received + 1)
        yield client.abort()


class ProxyProtocolTests(unittest.TestCase):
    """A ``haproxy:`` listener keeps the thin protocol: its transport is the PROXY
    wrapper (whose peer is the header's address: ``tests/test_proxy_header.py``)."""

    @inlineCallbacks
    def test_proxy_listener_serves_mqtt_through_the_thin_protocol(self) -> Any:
        from twisted.internet import reactor

        service = BrokerService(reactor, MemoryStore(reactor), None, None, None, 10.0, 0)
        listener = service.addListener(MQTTAdapter(), parse_listener(
            "haproxy:tcp:0:interface=127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        yield service.ready
        port = yield listener.whenListening()
        self.assertNotIsInstance(port.factory, MQTTStreamFactory)  # (the PROXY wrapper)
        sock = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(sock.close)
        sock.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 1883\r\n"
                     + encode(Connect("proxied", 4, True, 0), 4))
        sock.setblocking(False)
        data = b""
        for _ in range(500):
            try:
                data += sock.recv(64)
            except BlockingIOError:
                pass
            if len(data) >= 4:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(data[:4], encode(ConnAck(False, 0), 4))
        [conn] = list(service.broker.connections)
        self.assertIsInstance(conn.transport, MQTTStreamProtocol)
        self.assertEqual(conn.client_id, "proxied")


class _Listening:
    """A listening socket whose accepts fail as told (``errors``), then say EAGAIN."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def setsockopt(self, *args: Any) -> None:
        pass

    def _accept(self) -> Any:
        self.calls.append("_accept")
        if self.errors:
            raise OSError(self.errors.pop(0), "told to")
        raise BlockingIOError(errno.EAGAIN, "none")

    def accept(self) -> Any:
        self.calls.append("accept")
        raise BlockingIOError(errno.EAGAIN, "none")


class LeanAcceptTests(SynchronousTestCase):
    def port(self, sock: Any, broker: Any = None) -> Any:
        from twisted.internet.task import Clock

        broker = broker if broker is not None else BrokerService(
            Clock(), MemoryStore(Clock())).gateway
        factory = MQTTStreamFactory(broker, parse_listener("tcp:0"))
        port = tcp.Port(0, factory, reactor=Clock())
        port.socket = sock
        return port, factory

    def test_out_of_descriptors_goes_to_twisteds_accept(self) -> None:
        """EMFILE (or any error but EAGAIN and EPERM) hands the event to Twisted's own
        accept, which recovers through its reserved descriptor; EPERM is skipped."""
        sock = _Listening(errno.EPERM, errno.EMFILE)
        port, factory = self.port(sock)
        self.assertTrue(_leanmqtt.serve(port, factory))
        port.numberAccepts = 5
        port.doRead()
        self.assertEqual(sock.calls, ["_accept", "_accept", "accept"])

    def test_a_fake_gateway_keeps_the_thin_protocol(self) -> None:
        """A gateway that does not say its connections can be protocols (a plugin
        author's FakeBrokerService) leaves the port to Twisted's accept."""
        port, factory = self.port(_Listening(), FakeBrokerService())
        self.assertFalse(_leanmqtt.serve(port, factory))
        self.assertIs(type(port), tcp.Port)


class PeerAddressTests(SynchronousTestCase):
    def test_the_address_is_two_slots_made_into_twisteds_tuple_when_asked(self) -> None:
        """The lean transport keeps its peer as a shared host string and a port (no
        tuple), and gives Twisted's ``client``, ``getPeer`` and the peer text from them,
        IPv6 flow info and scope id included."""
        v4 = object.__new__(MQTTServer)
        v4.client = ("127.0.0.7", 40001)
        other = object.__new__(MQTTServer)
        other.client = ("".join(["127.0.0.", "7"]), 40002)
        self.assertIs(other.peer_host, v4.peer_host)  # one string per host
        self.assertEqual((v4.client, v4.peer_text()), (("127.0.0.7", 40001), "127.0.0.7:40001"))
        self.assertEqual(v4.getPeer().port, 40001)
        v6 = object.__new__(MQTTServer)
        v6.client = ("::1", 40003, 0, 2)
        self.assertEqual((v6.client, v6.peer_text()), (("::1", 40003, 0, 2), "::1:40003"))
        self.assertEqual((v6.getPeer().host, v6.getPeer().scopeID), ("::1", 2))
