"""One port for several protocols (``auto=``): the first-bytes decision without I/O, then
MQTT (paho), HTTP (curl and Agent) and MQTT over WebSocket (paho) clients on one real
port, in the clear and with TLS in front, and the deadline for the first bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.detect import (
    HTTP,
    MAX_HEAD,
    MQTT,
    WEBSOCKET,
    UnknownProtocol,
    classify,
)
from mqtt_twisted.codec import Connect, encode

try:
    from tests.certs import CA, temp_dir
    from tests.httpbroker import HTTPBrokerTestCase
    from tests.pahoclient import connect_raw
    from tests.securebroker import SecurePaho
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from certs import CA, temp_dir  # type: ignore[no-redef]
    from httpbroker import HTTPBrokerTestCase  # type: ignore[no-redef]
    from pahoclient import connect_raw  # type: ignore[no-redef]
    from securebroker import SecurePaho  # type: ignore[no-redef]

UPGRADE = (b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n"
           b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")


class ClassifyTests(SynchronousTestCase):
    """classify(): the protocol from the first bytes."""

    def test_mqtt(self) -> None:
        """A CONNECT's first byte (0x10) is MQTT, whatever follows."""
        self.assertEqual(classify(encode(Connect("c", 4, True, 0))), MQTT)
        self.assertEqual(classify(b"\x10"), MQTT)

    def test_http_methods(self) -> None:
        """A method name and a space is HTTP; a prefix of one waits for more bytes."""
        self.assertEqual(classify(b"POST /publish HTTP/1.1\r\n\r\n"), HTTP)
        self.assertEqual(classify(b"DELETE /", websocket=False), HTTP)
        for prefix in (b"", b"G", b"GE", b"OPTIONS", b"DELET"):
            self.assertIsNone(classify(prefix), prefix)

    def test_websocket_upgrade(self) -> None:
        """A GET asking to upgrade to websocket is WebSocket once the head is complete."""
        self.assertEqual(classify(UPGRADE), WEBSOCKET)
        self.assertIsNone(classify(UPGRADE[:40]))
        self.assertEqual(classify(UPGRADE, websocket=False), HTTP)
        self.assertEqual(classify(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"), HTTP)
        self.assertEqual(classify(b"GET /" + b"x" * MAX_HEAD), HTTP)

    def test_unknown(self) -> None:
        """Other first bytes (another MQTT packet, TLS to a plain port, junk) are refused."""
        for data in (b"\x30\x02ab", b"\x16\x03\x01", b"get / HTTP/1.1", b"GETX", b"\x00"):
            with self.assertRaises(UnknownProtocol, msg=data):
                classify(data)


class AutoListenerTests(HTTPBrokerTestCase):
    """An auto= listener on 127.0.0.1 with a short first-bytes deadline."""

    auto = True
    http_endpoint = "tcp:0:interface=127.0.0.1:connectTimeout=0.5:maxConnections=6"
    http_keys = {"maxPayload": "64"}

    @inlineCallbacks
    def test_mqtt_http_and_websocket_on_one_port(self) -> Any:
        """paho over TCP and over WebSocket, curl and Agent share the port: each gets
        what the others publish."""
        port = self.http_port
        tcp = yield self.paho("tcp-sub", port=port)
        yield tcp.subscribe(("one/#", 1))
        ws = SecurePaho(self.reactor, port, "ws-sub", transport="websockets")
        self.addCleanup(ws.stop)
        connected = yield ws.connect()
        self.assertEqual(connected.rc, 0)
        yield ws.subscribe(("one/#", 1))
        stream = self.curl_sse("/subscribe?topic=one/%23&qos=1")
        yield stream.expect("subscribed")
        status, _, body = yield self.curl("--data-binary", "from curl", method="POST",
                                          path="/publish?topic=one/http&qos=1")
        self.assertEqual((status, json.loads(body)["subscribers"]), (200, 3))
        for client in (tcp, ws):
            message = yield client.next_message()
            self.assertEqual(message.payload, b"from curl")
        event = yield stream.expect(None)
        self.assertEqual(event.data["payload"], "from curl")
        yield ws.publish("one/ws", b"from ws", qos=1)
        message = yield tcp.next_message()
        self.assertEqual(message.payload, b"from ws")
        event = yield stream.expect(None)
        self.assertEqual(event.data["payload"], "from ws")
        answer = yield self.json("GET", "/retained?topic=one/%23", 200)
        self.assertEqual(answer, {"messages": []})

    @inlineCallbacks
    def test_http_keys_apply(self) -> None:
        """The HTTP bridge's keys given to the auto listener hold (maxPayload=64: 413)."""
        answer = yield self.json("POST", "/publish?topic=big", 413, body=b"x" * 65)
        self.assertEqual(answer["reason_code"], 0x95)

    @inlineCallbacks
    def test_first_bytes_deadline(self) -> Any:
        """A socket that sends nothing, or half a method name, is closed at the deadline;
        junk is closed at once."""
        silent = yield connect_raw(self.reactor, self.http_port)
        half = yield connect_raw(self.reactor, self.http_port)
        half.send_bytes(b"PO")
        junk = yield connect_raw(self.reactor, self.http_port)
        started = time.monotonic()
        junk.send_bytes(b"\x30\x00hello")
        yield junk.wait_closed()
        self.assertLess(time.monotonic() - started, 0.4)
        yield silent.wait_closed()
        yield half.wait_closed()
        self.assertGreaterEqual(time.monotonic() - started, 0.45)
        yield self.json("POST", "/publish?topic=still/ok", 200, body=b"fine")

    @inlineCallbacks
    def test_connection_limit(self) -> Any:
        """maxConnections counts every protocol on the port; a socket beyond is closed."""
        held = []
        for _ in range(6):
            client = yield connect_raw(self.reactor, self.http_port)
            self.addCleanup(client.abort)
            held.append(client)
        extra = yield connect_raw(self.reactor, self.http_port)
        yield extra.wait_closed()
        self.assertEqual(self.broker.stats.connections_refused, 1)
        yield held[0].abort()
        yield self.wait_until(lambda: len(self.site.connections) < 6)
        yield self.paho("after", port=self.http_port)


class AutoTLSTests(HTTPBrokerTestCase):
    """An auto=ssl: listener: the same detection behind TLS."""

    auto = True

    @inlineCallbacks
    def setUp(self) -> Any:
        ca = CA(temp_dir(self))
        server = ca.issue("localhost", server=True)
        self.ca = ca.cert_path
        self.http_endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
                              f":certKey={server.cert_path}")
        yield super().setUp()

    @inlineCallbacks
    def test_mqtts_https_and_wss_on_one_port(self) -> Any:
        """paho over TLS and over WSS, and curl over HTTPS, share one TLS port."""
        port = self.http_port
        tls = SecurePaho(self.reactor, port, "tls-sub", ca=self.ca)
        wss = SecurePaho(self.reactor, port, "wss-sub", transport="websockets", ca=self.ca)
        for client in (tls, wss):
            self.addCleanup(client.stop)
            connected = yield client.connect()
            self.assertEqual(connected.rc, 0)
            yield client.subscribe(("secure/#", 1))
        status, _, body = yield self.curl("--data-binary", "sealed", method="POST",
                                          path="/publish?topic=secure/1&qos=1")
        self.assertEqual((status, json.loads(body)["subscribers"]), (200, 2))
        for client in (tls, wss):
            message = yield client.next_message()
            self.assertEqual(message.payload, b"sealed")
        answer = yield self.json("GET", "/retained?topic=secure/%23", 200)
        self.assertEqual(answer, {"messages": []})
