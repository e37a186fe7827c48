"""MQTT over WebSocket and WSS: paho-mqtt, Autobahn's own client, raw HTTP handshakes.

Every test runs the real ``ws`` adapter (as ``--listen ws=...`` builds it) on an
ephemeral loopback port of a real broker.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.websocket import WebSocketOptions, origin_patterns
from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from mqtt_twisted.core import inspection
from mqtt_twisted.message import Message
from tests.certs import CA, temp_dir
from tests.pahoclient import TIMEOUT, with_timeout
from tests.securebroker import SecureBrokerTestCase

WS = "ws=tcp:0:interface=127.0.0.1"


class MQTTOverAutobahn(WebSocketClientProtocol):
    """Autobahn's WebSocket client speaking MQTT through our codec, frame by frame."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = StreamDecoder(4)
        self.packets: DeferredQueue[Any] = DeferredQueue()
        self.opened: Deferred[Any] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.pings = 0
        self.messages = 0  # WebSocket messages received
        self.subprotocol: str | None = None

    def onConnect(self, response: Any) -> None:
        self.subprotocol = response.protocol

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        assert isBinary, "the broker sent a text frame"
        self.messages += 1
        for packet in self.decoder.feed(payload):
            self.packets.put(packet)

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    def send_frames(self, *chunks: bytes) -> None:
        """One binary message made of one frame per chunk."""
        self.beginMessage(isBinary=True)
        for chunk in chunks:
            self.sendMessageFrame(chunk)
        self.endMessage()

    def next_packet(self) -> Deferred[Any]:
        from twisted.internet import reactor

        return with_timeout(self.packets.get(), reactor)


class RawHTTP(Protocol):
    """Sends one HTTP request and keeps what comes back until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.response += data
        if b"\r\n\r\n" in self.response:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.response)


def upgrade_request(path: str = "/mqtt", protocols: str | None = "mqtt",
                    origin: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class WebSocketTests(SecureBrokerTestCase):
    """The ws adapter against real WebSocket clients."""

    @inlineCallbacks
    def autobahn(self, port: int, protocols: list[str] | None = None, path: str = "/mqtt",
                 origin: str | None = None, opened: bool = True) -> Any:
        """A connected Autobahn MQTT client (aborted after the test)."""
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", origin=origin,
                                         protocols=protocols or ["mqtt"])
        factory.protocol = MQTTOverAutobahn
        factory.setProtocolOptions(openHandshakeTimeout=TIMEOUT, closeHandshakeTimeout=1)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        client = yield endpoint.connect(factory)
        self.addCleanup(self.abort, client)
        if opened:
            yield with_timeout(client.opened, self.reactor)
        return client

    def abort(self, client: MQTTOverAutobahn) -> Deferred[Any]:
        if client.transport is not None and not client.closed.called:
            client.transport.abortConnection()
        return client.closed

    @inlineCallbacks
    def http(self, port: int, request: bytes) -> Any:
        """Status line of the answer to a raw HTTP request."""
        proto = yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port),
                                      RawHTTP(request))
        response = yield with_timeout(proto.done, self.reactor)
        return response.split(b"\r\n", 1)[0].decode()

    @inlineCallbacks
    def test_paho_over_ws(self) -> None:
        """paho-mqtt (transport="websockets") subscribes and gets what another paho publishes."""
        (port,) = yield self.start(WS)
        sub = yield self.paho(port, "ws-sub", transport="websockets")
        self.assertEqual((yield sub.subscribe(("a/#", 1))), [1])
        pub = yield self.paho(port, "ws-pub", transport="websockets")
        yield pub.publish("a/b", b"over websocket", 1)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.qos),
                         ("a/b", b"over websocket", 1))

    @inlineCallbacks
    def test_paho_over_wss(self) -> None:
        """paho-mqtt over WSS verifies the test CA's certificate and exchanges messages, a
        WSS client reaching a TCP one."""
        directory = temp_dir(self)
        ca = CA(directory)
        server = ca.issue("broker", server=True)
        ports = yield self.start(
            f"ws=ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
            f":certKey={server.cert_path}", "tcp:0:interface=127.0.0.1")
        sub = yield self.paho(ports[0], "wss-sub", transport="websockets", ca=ca.cert_path)
        yield sub.subscribe(("secure/#", 2))
        pub = yield self.paho(ports[1], "tcp-pub")
        yield pub.publish("secure/x", b"\x00\x01binary", 2)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("secure/x", b"\x00\x01binary"))

    @inlineCallbacks
    def test_wss_client_certificate_identity(self) -> None:
        """WSS with clientCerts=required hands the certificate's CN to the authenticator."""
        from tests.test_tls import RecordingAuthenticator

        directory = temp_dir(self)
        ca = CA(directory)
        server, client = ca.issue("broker", server=True), ca.issue("browser-7")
        auth = RecordingAuthenticator("u")
        (port,) = yield self.start(
            f"ws=ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
            f":certKey={server.cert_path}:caCerts={ca.cert_path}", authenticator=auth)
        yield self.paho(port, "c", transport="websockets", ca=ca.cert_path,
                        cert=client.cert_path, key=client.key_path, username="u")
        self.assertEqual([(c.certificateIdentity, c.adapter) for c in auth.seen],
                         [("browser-7", "ws")])

    @inlineCallbacks
    def test_paho_v5_and_v31(self) -> None:
        """paho as MQTT 5 (subprotocol mqtt) and as MQTT 3.1 (legacy mqttv3.1) both connect."""
        (port,) = yield self.start(WS)
        yield self.paho(port, "v5", transport="websockets", protocol=mqtt.MQTTv5)
        yield self.paho(port, "v31", transport="websockets", protocol=mqtt.MQTTv31)

    @inlineCallbacks
    def test_packets_split_across_frames_and_messages(self) -> None:
        """A CONNECT split over three frames of one message, a SUBSCRIBE split over two
        messages, then SUBSCRIBE and PUBLISH in one frame: the broker sees one stream."""
        (port,) = yield self.start(WS)
        client = yield self.autobahn(port)
        connect = encode(Connect("frames", 4, True, 0))
        client.send_frames(connect[:1], connect[1:5], connect[5:])
        connack = yield client.next_packet()
        self.assertIsInstance(connack, ConnAck)
        self.assertEqual(connack.reason_code, 0)
        subscribe = encode(Subscribe(1, [Subscription("x/#", 0)]))
        client.sendMessage(subscribe[:3], isBinary=True)
        client.sendMessage(subscribe[3:], isBinary=True)
        self.assertIsInstance((yield client.next_packet()), SubAck)
        both = encode(Subscribe(2, [Subscription("y", 0)])) + encode(
            Publish("x/1", b"one frame", 0, False, False, None))
        client.sendMessage(both, isBinary=True)
        suback = yield client.next_packet()
        self.assertEqual((type(suback), suback.packet_id), (SubAck, 2))
        publish = yield client.next_packet()
        self.assertEqual((publish.topic, publish.payload), ("x/1", b"one frame"))

    @inlineCallbacks
    def test_a_messages_answers_come_as_one_message(self) -> None:
        """CONNECT and twenty QoS 1 PUBLISHes in one message: the CONNACK and the twenty
        PUBACKs come back in one message (adapters/_cork.py), in order."""
        (port,) = yield self.start(WS)
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("corked", 4, True, 0)) + b"".join(
            encode(Publish("c/t", b"x", 1, False, False, i)) for i in range(1, 21)),
            isBinary=True)
        packets = []
        for _ in range(21):
            packets.append((yield client.next_packet()))
        self.assertIsInstance(packets[0], ConnAck)
        self.assertEqual([p.packet_id for p in packets[1:]], list(range(1, 21)))
        self.assertEqual(client.messages, 1)

    @inlineCallbacks
    def test_first_offered_subprotocol_chosen(self) -> None:
        """Offered 'wamp.2.json, mqttv3.1, mqtt', the broker picks mqttv3.1 (the first it speaks)."""
        (port,) = yield self.start(WS)
        client = yield self.autobahn(port, ["wamp.2.json", "mqttv3.1", "mqtt"])
        self.assertEqual(client.subprotocol, "mqttv3.1")

    @inlineCallbacks
    def test_bad_subprotocol_refused(self) -> None:
        """An upgrade offering no MQTT subprotocol (or none at all) gets HTTP 400; Autobahn's
        client with only 'wamp.2.json' never opens."""
        (port,) = yield self.start(WS)
        status = yield self.http(port, upgrade_request(protocols="wamp.2.json"))
        self.assertEqual(status, "HTTP/1.1 400 MQTT over WebSocket needs the subprotocol "
                                 "'mqtt' (or 'mqttv3.1')")
        status = yield self.http(port, upgrade_request(protocols=None))
        self.assertTrue(status.startswith("HTTP/1.1 400"), status)
        client = yield self.autobahn(port, ["wamp.2.json"], opened=False)
        yield self.assertFailure(with_timeout(client.opened, self.reactor), ConnectionError)

    @inlineCallbacks
    def test_text_frame_closes(self) -> None:
        """A text frame closes the WebSocket with code 1003 [MQTT-6.0.0-1]."""
        (port,) = yield self.start(WS)
        client = yield self.autobahn(port)
        client.sendMessage(b"\x10\x00", isBinary=False)
        _, code, _ = yield with_timeout(client.closed, self.reactor)
        self.assertEqual(code, 1003)

    @inlineCallbacks
    def test_path(self) -> None:
        """The resource is at path= (default /mqtt); other paths are 404."""
        (default, custom) = yield self.start(WS, WS + ":path=/broker/ws")
        self.assertEqual((yield self.http(default, upgrade_request("/other"))).split()[1], "404")
        self.assertEqual((yield self.http(custom, upgrade_request("/mqtt"))).split()[1], "404")
        client = yield self.autobahn(custom, path="/broker/ws")
        self.assertEqual(client.subprotocol, "mqtt")

    @inlineCallbacks
    def test_plain_http_get(self) -> None:
        """A GET without Upgrade is answered 426 Upgrade Required, not a status page."""
        (port,) = yield self.start(WS)
        status = yield self.http(port, b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status.split()[1], "426")

    @inlineCallbacks
    def test_origins(self) -> None:
        """origins= lets listed browser origins in, refuses others (403), and leaves clients
        that send no Origin (devices) alone."""
        (port,) = yield self.start(WS + ":origins=app.example.com,https\\://*.example.org")
        for origin, code in (("http://app.example.com:8080", "101"),
                             ("https://x.example.org", "101"),
                             ("http://x.example.org", "403"),
                             ("https://evil.example.net", "403")):
            status = yield self.http(port, upgrade_request(origin=origin))
            self.assertEqual(status.split()[1], code, origin)
        client = yield self.autobahn(port)  # sends no Origin header
        self.assertEqual(client.subprotocol, "mqtt")

    @inlineCallbacks
    def test_max_message_size(self) -> None:
        """A message over maxMessageSize closes the WebSocket with 1009 (message too big)."""
        (port,) = yield self.start(WS + ":maxMessageSize=64")
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("big", 4, True, 0)) + b"\x00" * 100, isBinary=True)
        _, code, _ = yield with_timeout(client.closed, self.reactor)
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_max_frame_size(self) -> None:
        """A frame over maxFrameSize closes the WebSocket with 1009, though smaller frames of
        a larger message are fine."""
        (port,) = yield self.start(WS + ":maxFrameSize=16")
        client = yield self.autobahn(port)
        connect = encode(Connect("framed", 4, True, 0))
        client.send_frames(connect[:10], connect[10:])
        self.assertIsInstance((yield client.next_packet()), ConnAck)
        client.send_frames(b"\xc0\x00" * 10)  # PINGREQs: 20 bytes in one frame
        _, code, _ = yield with_timeout(client.closed, self.reactor)
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_tcp_nodelay(self) -> None:
        """The broker's end of a WebSocket has Nagle's algorithm off (TCP_NODELAY)."""
        import socket

        (port,) = yield self.start(WS)
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("nodelay", 4, True, 0)), isBinary=True)
        yield client.next_packet()
        # The broker-side socket itself: no public way reaches it.
        (conn,) = self.service.broker.connections
        sock = conn.transport._protocol.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @inlineCallbacks
    def test_outgoing_split_to_max_message_size(self) -> None:
        """With maxMessageSize, a larger PUBLISH reaches the client split over messages."""
        (port,) = yield self.start(WS + ":maxMessageSize=100")
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("split", 4, True, 0)), isBinary=True)
        yield client.next_packet()
        client.sendMessage(encode(Subscribe(1, [Subscription("big", 0)])), isBinary=True)
        yield client.next_packet()
        yield self.service.gateway.publish(Message("big", b"z" * 1000))
        publish = yield client.next_packet()
        self.assertEqual(publish.payload, b"z" * 1000)
        self.assertGreaterEqual(client.trafficStats.incomingWebSocketMessages, 11)

    @inlineCallbacks
    def test_connection_limit(self) -> None:
        """maxConnections=1: a second upgrade is refused with 503 while the first is open."""
        (port,) = yield self.start(WS + ":maxConnections=1")
        yield self.autobahn(port)
        status = yield self.http(port, upgrade_request())
        self.assertEqual(status.split()[1], "503")
        self.assertEqual(self.service.stats.connections_refused, 1)

    @inlineCallbacks
    def test_connect_deadline(self) -> None:
        """A WebSocket that sends no CONNECT within connectTimeout is closed."""
        (port,) = yield self.start(WS + ":connectTimeout=0.3")
        client = yield self.autobahn(port)
        yield with_timeout(client.closed, self.reactor)

    @inlineCallbacks
    def test_ping(self) -> None:
        """pingInterval= makes the broker ping; Autobahn's pongs keep the connection open."""
        (port,) = yield self.start(WS + ":pingInterval=0.1:pingTimeout=2")
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("pinged", 4, True, 0)), isBinary=True)
        yield client.next_packet()
        yield deferLater(self.reactor, 0.5, lambda: None)
        self.assertGreaterEqual(client.pings, 2)
        self.assertFalse(client.closed.called)

    @inlineCallbacks
    def test_back_pressure(self) -> None:
        """A WebSocket client that stops reading makes the broker pause writing to it, and
        resume once it reads again."""
        (port,) = yield self.start(WS)
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("slow", 4, True, 0)), isBinary=True)
        yield client.next_packet()
        client.sendMessage(encode(Subscribe(1, [Subscription("flood", 1)])), isBinary=True)
        yield client.next_packet()
        broker = self.service.broker
        (_,) = [c for c in inspection.connections(broker) if c.client_id == "slow"]

        def paused() -> bool:
            return inspection.connection_info(broker, "slow").paused  # type: ignore[union-attr]

        client.transport.pauseProducing()  # stop reading: the broker's socket buffer fills
        chunk = b"f" * 65536
        for _ in range(400):
            self.service.gateway.publish(Message("flood", chunk, 1))
            if paused():
                break
            yield deferLater(self.reactor, 0, lambda: None)
        self.assertTrue(paused(), "the broker never paused writing")
        client.transport.resumeProducing()
        for _ in range(500):
            if not paused():
                break
            yield deferLater(self.reactor, 0.01, lambda: None)
        self.assertFalse(paused(), "the broker never resumed writing")

    @inlineCallbacks
    def test_close_publishes_will(self) -> None:
        """A WebSocket dropped without DISCONNECT publishes the client's will (the broker
        sees a real connection loss)."""
        from mqtt_twisted.codec import Will

        (port,) = yield self.start(WS)
        watcher = yield self.paho(port, "watcher", transport="websockets")
        yield watcher.subscribe(("wills/#", 0))
        client = yield self.autobahn(port)
        client.sendMessage(encode(Connect("mortal", 4, True, 0, Will("wills/mortal", b"gone"))),
                           isBinary=True)
        yield client.next_packet()
        client.transport.abortConnection()
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload), ("wills/mortal", b"gone"))


class WebSocketOptionTests(SynchronousTestCase):
    """The ws adapter's listener keys, parsed without sockets."""

    def test_defaults(self) -> None:
        """Default path /mqtt, any origin, no size limits, no pings."""
        options = WebSocketOptions({})
        self.assertEqual((options.path, options.origins, options.max_frame, options.max_message,
                          options.ping_interval), ("/mqtt", ["*"], 0, 0, 0))

    def test_origin_patterns(self) -> None:
        """Host names match any scheme and port; a scheme without port means its default port."""
        self.assertEqual(origin_patterns("app.example.com, https://x.org, http://y:8080, *"),
                         ["*://app.example.com:*", "https://x.org:443", "http://y:8080", "*"])

    def test_bad_values(self) -> None:
        """Negative or non-numeric sizes, a path without '/' and an empty origins= are errors
        naming the key."""
        for extra, text in (({"maxFrameSize": "-1"}, "maxFrameSize"),
                            ({"pingInterval": "often"}, "pingInterval"),
                            ({"path": "mqtt"}, "path"),
                            ({"origins": ""}, "origins='' names no origin"),
                            ({"origins": " , "}, "names no origin")):
            e = self.assertRaises(ValueError, WebSocketOptions, extra)
            self.assertIn(text, str(e))
