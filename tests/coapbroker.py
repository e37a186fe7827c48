"""A real broker with an MQTT listener and a CoAP/UDP one for the CoAP tests, and the
CoAP peers they use: libcoap's ``coap-client-notls`` and aiocoap in subprocesses, and a
raw UDP endpoint for what no well-behaved client sends."""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.plugins.coap import coapAdapter
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore

try:
    from tests.pahoclient import TIMEOUT, PahoClient, with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import TIMEOUT, PahoClient, with_timeout  # type: ignore[no-redef]

COAP_CLIENT = shutil.which("coap-client-notls")
NO_LIBCOAP = None if COAP_CLIENT else "coap-client-notls is not installed (libcoap3-bin)"
try:
    import aiocoap  # noqa: F401

    NO_AIOCOAP = None
except ImportError:
    NO_AIOCOAP = "aiocoap is not installed"


class UDPClient(DatagramProtocol):
    """A raw CoAP endpoint: datagrams in a queue, decoded."""

    def __init__(self) -> None:
        self.received: DeferredQueue[m.CoapMessage] = DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.put(m.decode(data))


class _Collect(ProcessProtocol):
    """A subprocess's output, as it comes."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class CoapBrokerTestCase(unittest.TestCase):
    """A broker with an MQTT listener and a CoAP/UDP one on 127.0.0.1."""

    coap_keys: dict[str, str] = {}
    #: "udp", or "tcp" for CoAP over TCP (RFC 8323).
    transport = "udp"
    authenticator: Any = None
    authorizer: Any = None
    timeout = 40

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.store = self.make_store(reactor)
        self.service = BrokerService(reactor, self.store, None, self.authenticator,
                                     self.authorizer, 10.0, 0)
        self.broker = self.service.broker
        keys = "".join(f":{k}={v}" for k, v in self.coap_keys.items())
        coap = parse_listener(f"coap={self.transport}:0:interface=127.0.0.1{keys}", "mqtt",
                              {"coap": coapAdapter.options})
        coapAdapter.checkEndpoint(coap)
        coapAdapter.checkListener(coap)
        mqtt_listener = self.service.addListener(MQTTAdapter(),
                                                 parse_listener("tcp:0:interface=127.0.0.1"))
        self.coap_listener = self.service.addListener(coapAdapter, coap)
        self.service.startService()
        yield self.service.ready
        ports: dict[str, Any] = {}
        mqtt_listener._waitingForPort.addCallback(lambda p: ports.setdefault("mqtt", p))
        self.mqtt_port = ports["mqtt"].getHost().port
        if self.transport == "udp":
            port = yield self.coap_listener.whenListening()
            self.server = self.coap_listener.server
        else:
            self.coap_listener._waitingForPort.addCallback(lambda p: ports.setdefault("coap", p))
            port = ports["coap"]
            self.server = self.coap_listener.site
        self.coap_port = port.getHost().port

    def make_store(self, reactor: Any) -> Any:
        """The broker's store (a test may hand it one that waits or fails)."""
        return MemoryStore(reactor)

    @inlineCallbacks
    def tearDown(self) -> Any:
        yield self.service.stopService()

    # --- helpers ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        scheme = "coap" if self.transport == "udp" else "coap+tcp"
        return f"{scheme}://127.0.0.1:{self.coap_port}{path}"

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    @inlineCallbacks
    def wait_until(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                self.fail(f"condition not met within {timeout}s")
            yield self.sleep(0.02)
            waited += 0.02

    @inlineCallbacks
    def paho(self, client_id: str = "", **kwargs: Any) -> Any:
        client = PahoClient(self.reactor, self.mqtt_port, client_id, **kwargs)
        self.addCleanup(client.stop)
        result = yield client.connect()
        self.assertEqual(result.rc, 0)
        return client

    @inlineCallbacks
    def coap_client(self, *args: str) -> Any:
        """Run coap-client-notls to the end; fires with (stdout, stderr, exit code)."""
        out, err, code = yield with_timeout(getProcessOutputAndValue(
            COAP_CLIENT, ["-B", "10", *args], reactor=self.reactor), self.reactor, 20)
        return out, err, code

    def spawn(self, executable: str, args: list[str]) -> _Collect:
        """A subprocess left running; killed after the test if it is still there."""
        proto = _Collect()
        process = self.reactor.spawnProcess(proto, executable, [executable, *args], env=None)

        def reap() -> Any:
            if not proto.ended.called:
                process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(reap)
        return proto

    def udp(self) -> UDPClient:
        """A raw UDP endpoint talking to the CoAP listener."""
        client = UDPClient()
        port = self.reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client.transport.connect("127.0.0.1", self.coap_port)
        return client

    def next(self, client: UDPClient, timeout: float = 5) -> Deferred[m.CoapMessage]:
        return with_timeout(client.received.get(), self.reactor, timeout)

    def nothing(self, client: UDPClient, wait: float = 0.3) -> Deferred[None]:
        def check(_: Any) -> None:
            if client.received.pending:
                raise AssertionError(f"unexpected {client.received.pending[0]!r}")
        return self.sleep(wait).addCallback(check)


def request(code: int, path: str, *queries: str, payload: bytes = b"", mid: int = 1,
            token: bytes = b"t1", mtype: int = m.CON, observe: int | None = None) -> bytes:
    msg = m.CoapMessage(mtype, code, mid, token, [], payload)
    for segment in path.strip("/").split("/"):
        msg.add(opt.URI_PATH, segment)
    for q in queries:
        msg.add(opt.URI_QUERY, q)
    if observe is not None:
        msg.add(opt.OBSERVE, observe)
    return m.encode(msg)
