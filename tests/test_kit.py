"""The adapter kit (issue 12, item 4): one connection limit, one origin, endpoint checks by
the adapter (datagram adapters on ``udp:``), typed listener keys, ``buildFactory`` for
``auto=``.

Most tests are synchronous; the datagram listener is tested on the real reactor
(in-process, through ``Options`` and ``makeService``) and in a ``twistd`` child process
that finds the test-only drop-in adapter in ``tests/dropin``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from OpenSSL import crypto
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides, implementer

from mqtt_twisted import tap
from mqtt_twisted.adapters.detect import DetectAdapter
from mqtt_twisted.adapters.http import HTTPAdapter
from mqtt_twisted.adapters.kit import (
    ConnectionLimit,
    DatagramListener,
    Origin,
    check_listener,
    origin_of,
    parse_udp,
    peer_text,
)
from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.adapters.options import (
    AdapterOption,
    choice,
    declare,
    integer,
    keys_help,
    normalize,
    number,
    option_values,
    yes_no,
)
from mqtt_twisted.adapters.websocket import WebSocketAdapter
from mqtt_twisted.interfaces import IAdapter
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from tests.certs import CA, temp_dir
from tests.test_plugins import run, twistd_command

ROOT = Path(__file__).resolve().parent.parent
DROPIN = Path(__file__).resolve().parent / "dropin"
UDP_PLUGIN = DROPIN / "mqtt_twisted" / "plugins" / "udp_echo.py"


def udp_plugin_module() -> Any:
    """The test-only datagram adapter module, imported from its file."""
    spec = importlib.util.spec_from_file_location("udp_echo_dropin", UDP_PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@implementer(IAdapter)
class LegacyAdapter:
    """A third-party adapter of before typed keys: ``options`` maps key to help text."""

    name = "legacy-test"
    description = "an adapter with plain-text options"
    defaultEndpoint = "tcp:7008"
    options = {"colour": "the colour of the thing"}

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> Any:
        raise NotImplementedError


def with_adapters(case: SynchronousTestCase, *extra: Any) -> None:
    """Make ``--listen`` (and ``--help``) see ``extra`` adapters beside the installed ones."""
    def patched(interface: Any) -> dict[str, Any]:
        found = plugins_by_name(interface)
        if interface is IAdapter:
            found.update({adapter.name: adapter for adapter in extra})
        return found

    case.patch(tap, "plugins_by_name", patched)


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class TypedOptionTests(SynchronousTestCase):
    """AdapterOption: one declaration gives the parsing, the default and the help."""

    def test_converters(self) -> None:
        """Each converter returns the typed value or says what is wrong, after key='text'."""
        cases = [(integer(), "12", 12), (number(), "1.5", 1.5), (yes_no, "on", True),
                 (yes_no, "no", False), (choice("a", "b"), "b", "b"), (str, "x", "x")]
        for convert, text, value in cases:
            self.assertEqual(AdapterOption("k", convert).parse(text), value)
        for convert, text, message in (
                (integer(), "1.5", "k='1.5' is not an integer"),
                (integer(), "-1", "k='-1' must not be negative"),
                (integer(1, 9), "10", "k='10' must be 1..9"),
                (number(), "nan", "k='nan' is not a finite number"),
                (number(), "soon", "k='soon' is not a number"),
                (yes_no, "perhaps", "k='perhaps' expected yes or no"),
                (choice("a", "b"), "c", "k='c' expected a or b")):
            e = self.assertRaises(ValueError, AdapterOption("k", convert).parse, text)
            self.assertEqual(str(e), message)

    def test_values_and_defaults(self) -> None:
        """option_values converts the keys given and fills in the defaults of the others."""
        options = declare(AdapterOption("size", integer(), 10), AdapterOption("name", str))
        self.assertEqual(option_values(options, {"size": "3"}), {"size": 3, "name": None})
        self.assertEqual(option_values(options, {"other": "x"}), {"size": 10, "name": None})

    def test_plain_dict_options_still_work(self) -> None:
        """A {key: help} dict (older plugins) gives string keys without a default."""
        self.assertEqual(normalize({"colour": "help"}),
                         {"colour": AdapterOption("colour", str, None, "help")})
        self.assertEqual(option_values({"colour": "help"}, {"colour": "red"}), {"colour": "red"})
        self.assertEqual(normalize(None), {})

    def test_declarations_iterate_as_key_names(self) -> None:
        """An adapter's declared options still iterate as key names (as the dicts did)."""
        self.assertIn("maxFrameSize", list(WebSocketAdapter.options))
        self.assertIsInstance(WebSocketAdapter.options["maxFrameSize"], AdapterOption)

    def test_bad_listener_key_is_one_usage_error(self) -> None:
        """--listen checks each adapter key with its converter: one line naming it."""
        for value, message in (
                ("ws=tcp:8080:maxFrameSize=big", "--listen 'ws=tcp:8080:maxFrameSize=big': "
                                                 "maxFrameSize='big' is not an integer"),
                ("http=tcp:8081:replay=-3", "--listen 'http=tcp:8081:replay=-3': "
                                            "replay='-3' must not be negative"),
                ("tcp:1883:maxConnections=1.5", "--listen 'tcp:1883:maxConnections=1.5': "
                                                "maxConnections='1.5' is not an integer")):
            e = self.assertRaises(usage.UsageError, parse, "--listen", value)
            self.assertEqual(str(e), message)

    def test_legacy_adapter_keys(self) -> None:
        """A plain-dict adapter's keys are taken out of the endpoint as strings."""
        with_adapters(self, LegacyAdapter())
        (settings,) = parse("--listen", "legacy-test=tcp:7008:colour=red")["listeners"]
        self.assertEqual((settings.endpoint, settings.extra), ("tcp:7008", {"colour": "red"}))

    def test_help_lists_listener_keys(self) -> None:
        """--help lists the common keys, each adapter's keys with metavar and default, the
        keys adapters share once, and a plain-dict adapter's keys."""
        with_adapters(self, LegacyAdapter())
        text = tap.Options().getUsage(100)
        section = text[text.index("Listener keys, "):]
        self.assertIn("every adapter:", section)
        self.assertIn("maxConnections=N", section)
        self.assertIn("auto, coap, http, metrics, mqtt, ws:", section)  # TLS keys: once, not six times
        self.assertEqual(section.count("tlsMinimum="), 1)
        self.assertIn("maxFrameSize=BYTES", section)
        self.assertRegex(section, r"maxPayload=BYTES +largest request body.*\(default 1048576\)")
        self.assertIn("legacy-test:", section)
        self.assertRegex(section, r"colour=VALUE +the colour of the thing")

    def test_help_wraps_to_width(self) -> None:
        """No help line is wider than asked (beyond a long key that has a line of its own)."""
        text = keys_help(plugins_by_name(IAdapter), {}, 60)
        for line in text.splitlines()[1:]:
            self.assertTrue(len(line) <= 60 or "=" in line.split()[0], line)


class ConnectionLimitTests(SynchronousTestCase):
    """One ConnectionLimit, used by every adapter, each refusing in its protocol's way."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BrokerService(self.clock, MemoryStore(self.clock))

    def settings(self, adapter: str, limit: int = 1) -> ListenerSettings:
        return ListenerSettings(adapter, "tcp:0", limit, 10.0)

    def test_counts_refuses_and_logs(self) -> None:
        """admit counts up to maxConnections; beyond, one log line names the listener and
        the broker's connections_refused grows; release frees a place."""
        limit = ConnectionLimit(self.service, self.settings("mqtt", 2))
        with capturedLogs() as events:
            self.assertEqual([limit.admit("a"), limit.admit("b"), limit.admit(
                IPv4Address("TCP", "10.0.0.9", 4242))], [True, True, False])
        self.assertEqual((limit.active, limit.refused, self.service.stats.connections_refused),
                         (2, 1, 1))
        (event,) = events
        self.assertEqual(event["log_format"],
                         "Refusing {what} from {peer}: {limit} connections held on {listener}")
        self.assertEqual((event["peer"], event["limit"], event["listener"]),
                         ("10.0.0.9:4242", 2, "mqtt=tcp:0"))
        limit.release()
        self.assertTrue(limit.admit("c"))

    def test_no_limit(self) -> None:
        """maxConnections=0 admits any number."""
        limit = ConnectionLimit(self.service, self.settings("mqtt", 0))
        self.assertTrue(all(limit.admit("x") for _ in range(1000)))

    def _refused_logged(self, build: Any, adapter: str) -> None:
        with capturedLogs() as events:
            self.assertIsNone(build())
        self.assertEqual([e["listener"] for e in events], [f"{adapter}=tcp:0"])

    def test_mqtt_closes_the_socket(self) -> None:
        """MQTT: a socket beyond the limit gets no protocol (Twisted closes it)."""
        factory = MQTTAdapter().buildFactory(self.clock, self.service, self.settings("mqtt"))
        self.assertIsInstance(factory.limit, ConnectionLimit)
        self.assertIsNotNone(factory.buildProtocol(None))
        self._refused_logged(lambda: factory.buildProtocol(None), "mqtt")
        self.assertEqual(self.service.stats.connections_refused, 1)

    def test_http_closes_the_socket_and_frees_its_place(self) -> None:
        """HTTP: beyond the limit no channel; a closed connection frees its place."""
        site = HTTPAdapter().buildFactory(self.clock, self.service, self.settings("http"))
        self.assertIsInstance(site.limit, ConnectionLimit)
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        self._refused_logged(lambda: site.buildProtocol(None), "http")
        channel.connectionLost(None)
        self.assertIsNotNone(site.buildProtocol(None))
        self.assertEqual(self.service.stats.connections_refused, 1)

    def test_websocket_answers_503(self) -> None:
        """WebSocket: at the limit the upgrade is answered 503 before the handshake."""
        from twisted.web.test.requesthelper import DummyRequest

        site = WebSocketAdapter().buildFactory(self.clock, self.service, self.settings("ws"))
        limit = site.ws_factory.limit
        self.assertIsInstance(limit, ConnectionLimit)
        self.assertTrue(limit.admit("first"))
        request = DummyRequest([b"mqtt"])
        with capturedLogs() as events:
            body = site.root.children[b"mqtt"].render(request)
        self.assertEqual((request.responseCode, body), (503, b"connection limit reached\n"))
        self.assertEqual([e["listener"] for e in events], ["ws=tcp:0"])
        self.assertEqual(self.service.stats.connections_refused, 1)

    def test_auto_counts_every_protocol(self) -> None:
        """auto=: one limit for the port, whatever protocol each socket turns out to speak."""
        factory = DetectAdapter(lambda: plugins_by_name(IAdapter)).buildFactory(
            self.clock, self.service, self.settings("auto"))
        self.assertIsInstance(factory.limit, ConnectionLimit)
        first = factory.buildProtocol(None)
        transport = StringTransport()
        transport.socket = object()  # (a socket: counted while connected)
        transport.connected = True
        first.makeConnection(transport)
        self._refused_logged(lambda: factory.buildProtocol(None), "auto")
        first.connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(None))
        self.assertEqual(factory.limit.active, 1)
        self.assertEqual(self.service.stats.connections_refused, 1)


def _tls_transport(cert_pem_path: str, peer: Any) -> StringTransport:
    """A StringTransport that says it is TLS, with a client certificate."""
    with open(cert_pem_path, "rb") as f:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    transport = StringTransport(peerAddress=peer)
    directlyProvides(transport, ISSLTransport)
    transport.getPeerCertificate = lambda: cert  # type: ignore[attr-defined]
    return transport


class OriginTests(SynchronousTestCase):
    """origin_of: peer text, certificate identity (certIdentity=), identity as user name."""

    def test_plain(self) -> None:
        """A plain socket: host:port, no identity; the adapter from the listener."""
        listener = ListenerSettings("ws", "tcp:0")
        origin = origin_of(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555)),
                           listener)
        self.assertEqual(origin, Origin("10.1.2.3:5555", None, "ws", listener))
        self.assertEqual(origin.username("alice"), "alice")
        self.assertEqual(peer_text(IPv4Address("TCP", "::1", 1)), "::1:1")

    def test_certificate_identity(self) -> None:
        """Behind TLS: the certificate's field named by certIdentity= (CN by default); with
        identityAsUsername it replaces the user name."""
        ca = CA(temp_dir(self))
        client = ca.issue("device-7", emails=("d7@example.com",))
        peer = IPv4Address("TCP", "127.0.0.1", 1)
        listener = ListenerSettings("mqtt", "ssl:0")
        origin = origin_of(_tls_transport(client.cert_path, peer), listener, "http")
        self.assertEqual((origin.certificateIdentity, origin.adapter), ("device-7", "http"))
        self.assertEqual(origin.username("alice"), "alice")
        listener = ListenerSettings("mqtt", "ssl:0", extra={"certIdentity": "san-email"},
                                    identityAsUsername=True)
        origin = origin_of(_tls_transport(client.cert_path, peer), listener)
        self.assertEqual(origin.username("alice"), "d7@example.com")


class EndpointCheckTests(SynchronousTestCase):
    """Each adapter says which endpoints it takes: stream ones by default, udp: for a
    datagram adapter, or its own checkEndpoint."""

    def test_stream_adapter_refuses_udp(self) -> None:
        """A stream adapter refuses udp: as before (Twisted has no udp: stream endpoint)."""
        e = self.assertRaises(usage.UsageError, parse, "--listen", "mqtt=udp:5683")
        self.assertIn("bad endpoint 'udp:5683'", str(e))

    def test_datagram_adapter_takes_udp(self) -> None:
        """A datagram adapter's udp: listener parses; a stream endpoint for it does not."""
        adapter = udp_plugin_module().udpEchoAdapter
        with_adapters(self, adapter)
        (settings,) = parse("--listen", "udp-echo-test=udp:5683:interface=127.0.0.1:prefix=>")[
            "listeners"]
        self.assertEqual((settings.endpoint, settings.extra),
                         ("udp:5683:interface=127.0.0.1", {"prefix": ">"}))
        for value, text in (("udp-echo-test=tcp:5683", "takes udp:PORT"),
                            ("udp-echo-test=udp:lots", "0..65535"),
                            ("udp-echo-test=udp:1:backlog=5", "unknown udp: key 'backlog'")):
            e = self.assertRaises(usage.UsageError, parse, "--listen", value)
            self.assertIn(text, str(e))

    def test_parse_udp(self) -> None:
        """udp:PORT, udp:port=PORT and interface=."""
        self.assertEqual(parse_udp("udp:0"), (0, ""))
        self.assertEqual(parse_udp("udp:port=5683:interface=\\:\\:1"), (5683, "::1"))

    def test_parse_udp_unescaped_ipv6(self) -> None:
        """An IPv6 interface with its colons unescaped is an error that says so, not
        port 1 on every interface (the pieces after ``interface=`` taken as ports)."""
        for bad in ("udp:0:interface=::1", "udp:5683:5684", "udp:port=1:2"):
            e = self.assertRaises(ValueError, parse_udp, bad)
            self.assertIn("port", str(e))
        e = self.assertRaises(ValueError, parse_udp, "udp:0:interface=::1")
        self.assertIn("\\:", str(e))

    def test_own_check_endpoint(self) -> None:
        """An adapter's checkEndpoint replaces the default check; checkListener follows it."""
        calls: list[str] = []

        class Own:
            def checkEndpoint(self, settings: Any) -> None:
                calls.append("endpoint " + settings.endpoint)

            def checkListener(self, settings: Any) -> None:
                calls.append("listener")

        check_listener(Own(), ListenerSettings("own", "serial:/dev/ttyUSB0"))
        self.assertEqual(calls, ["endpoint serial:/dev/ttyUSB0", "listener"])


class AutoFactoryTests(SynchronousTestCase):
    """auto= asks adapters for factories (buildFactory); it unwraps no listener."""

    def test_factories_from_build_factory(self) -> None:
        """Each protocol's factory is what its adapter's buildFactory returns, built with
        that adapter's own keys and no connection limit; buildListener is not called."""
        built: list[tuple[str, Any]] = []

        class Stream:
            def __init__(self, name: str) -> None:
                self.name, self.options = name, {"own": "a key"}

            def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> str:
                built.append((self.name, settings))
                return f"{self.name} factory"

            def buildListener(self, *args: Any) -> Any:
                raise AssertionError("auto= must not build listeners")

        adapters = {"mqtt": Stream("mqtt"), "http": Stream("http")}
        settings = ListenerSettings("auto", "tcp:0", 5, 3.0, {"own": "x", "other": "y"})
        factories = DetectAdapter(lambda: adapters).factories(None, None, "tcp:0", settings)
        self.assertEqual(factories, {"mqtt": "mqtt factory", "http": "http factory"})
        self.assertEqual([(n, s.adapter, s.maxConnections, s.connectTimeout, s.extra)
                          for n, s in built],
                         [("mqtt", "mqtt", 0, 3.0, {"own": "x"}),
                          ("http", "http", 0, 3.0, {"own": "x"})])

    def test_adapter_without_build_factory_left_out(self) -> None:
        """A ws adapter without buildFactory is left out, with a warning."""

        class NoFactory:
            options: dict[str, str] = {}

        adapters = {**plugins_by_name(IAdapter), "ws": NoFactory()}
        clock = Clock()
        with capturedLogs() as events:
            factories = DetectAdapter(lambda: adapters).factories(
                clock, BrokerService(clock, MemoryStore(clock)), "tcp:0",
                ListenerSettings("auto", "tcp:0"))
        self.assertEqual(sorted(factories), ["http", "mqtt"])
        self.assertIn("no buildFactory", events[0]["log_format"])


class _Answers(DatagramProtocol):
    def __init__(self) -> None:
        self.answer: defer.Deferred[bytes] = defer.Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.answer.called:
            self.answer.callback(data)


class DatagramListenerTests(TestCase):
    """A datagram adapter listens on udp:0 through Options, makeService and BrokerService."""

    @defer.inlineCallbacks
    def test_udp_listener_through_make_service(self) -> Any:
        """--listen udp-echo-test=udp:0 parses, makeService builds it, the broker starts
        it, it answers a datagram, and it stops with the broker."""
        from twisted.internet import reactor

        adapter = udp_plugin_module().udpEchoAdapter
        with_adapters(self, adapter)
        options = parse("--sys-interval", "0",
                        "--listen", "udp-echo-test=udp:0:interface=127.0.0.1:prefix=re>")
        service = tap.makeService(options, reactor)
        service.startService()
        yield service.ready
        (listener,) = [s for s in service if isinstance(s, DatagramListener)]
        self.assertEqual(listener.name, "udp-echo-test=udp:0:interface=127.0.0.1:prefix=re>")
        port = yield listener.whenListening()
        client = _Answers()
        client_port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(client_port.stopListening)
        client.transport.write(b"hello", ("127.0.0.1", port.getHost().port))
        answer = yield client.answer.addTimeout(5, reactor)
        self.assertEqual(answer, b"re>hello")
        yield service.stopService()
        self.assertIsNone(listener.port)
        self.assertFalse(port.connected)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdDatagramTests(SynchronousTestCase):
    """``twistd mqttbroker`` serves a drop-in datagram adapter's udp: listener."""

    def env(self) -> dict[str, str]:
        path = [str(DROPIN), str(ROOT)]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    def test_twistd_listens_on_udp(self) -> None:
        """twistd -n mqttbroker --listen udp-echo-test=udp:PORT answers datagrams, and a
        stream adapter on udp: is still a one-line usage error."""
        listed = run([*twistd_command(), "-n", "mqttbroker", "--list-plugins"],
                     env=self.env(), cwd=tempfile.gettempdir())
        self.assertIn("udp-echo-test", listed.stdout, listed.stderr)
        refused = run([*twistd_command(), "-n", "mqttbroker", "--listen", "udp:5683"],
                      env=self.env(), cwd=tempfile.gettempdir())
        self.assertEqual(refused.returncode, 2, refused.stderr)
        self.assertIn("--listen 'udp:5683': bad endpoint 'udp:5683'", refused.stderr)
        port = _free_udp_port()
        proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--sys-interval", "0",
             "--listen", f"udp-echo-test=udp:{port}:interface=127.0.0.1",
             "--listen", "tcp:0:interface=127.0.0.1"],
            env=self.env(), cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            answer, deadline = None, time.monotonic() + 30
            while answer is None and time.monotonic() < deadline and proc.poll() is None:
                s.sendto(b"ping", ("127.0.0.1", port))
                try:
                    answer = s.recv(100)
                except (TimeoutError, ConnectionRefusedError):
                    pass
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        self.assertEqual(answer, b"ping", output)
        self.assertIn(f"Listening: udp-echo-test=udp:{port}:interface=127.0.0.1", output)
        # twistd re-raises the signal it stopped on, so that its parent sees it.
        self.assertIn(proc.returncode, (0, -signal.SIGTERM), output)
