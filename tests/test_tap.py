"""``twistd mqttbroker``: options, the service tree makeService builds, and the real process.

Option and makeService tests are synchronous (``MemoryReactorClock``); the last
class starts ``twistd -n mqttbroker`` and talks to it with Mosquitto's clients.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mqtt_twisted import __version__
from mqtt_twisted.codec import Connect, Disconnect, StreamDecoder, encode
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import StartError
from mqtt_twisted.plugins.builtin import AnonymousAuthPlugin, MemoryStorePlugin
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.tap import Options, makeService
from tests.securebroker import ChildProcess

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def listeners(*argv: str) -> list[tuple[str, str, int, float]]:
    return [(s.adapter, s.endpoint, s.maxConnections, s.connectTimeout)
            for s in parse(*argv)["listeners"]]


class ListenOptionTests(SynchronousTestCase):
    """--listen [ADAPTER=]ENDPOINT parsing and validation."""

    def test_default_listener(self) -> None:
        """Without --listen the broker serves MQTT on tcp:1883, with the default connection
        limit (10,000) and connection rate (100 a second per source address)."""
        self.assertEqual(listeners(), [("mqtt", "tcp:1883", 10_000, 10.0)])
        self.assertEqual(parse()["listeners"][0].maxConnectionRate, 100.0)

    def test_connection_rate_option_and_key(self) -> None:
        """--max-connection-rate is every listener's default; maxConnectionRate= one's own."""
        found = parse("--max-connection-rate", "7", "--listen", "tcp:1",
                      "--listen", "tcp:2:maxConnectionRate=0")["listeners"]
        self.assertEqual([s.maxConnectionRate for s in found], [7.0, 0.0])
        with self.assertRaises(usage.UsageError):
            parse("--max-connection-rate", "-1")

    def test_listen_repeats(self) -> None:
        """--listen (and -l) repeat, giving one listener each, in order."""
        self.assertEqual(
            [(a, e) for a, e, _, _ in listeners("--listen", "tcp:1884", "-l",
                                                "mqtt=tcp:1885:interface=127.0.0.1",
                                                "--listen", "unix:/tmp/mqtt.sock")],
            [("mqtt", "tcp:1884"), ("mqtt", "tcp:1885:interface=127.0.0.1"),
             ("mqtt", "unix:/tmp/mqtt.sock")],
        )

    def test_listener_keys_stripped(self) -> None:
        """maxConnections and connectTimeout are parsed and removed from the endpoint."""
        self.assertEqual(listeners("--listen", "tcp:1883:maxConnections=5:connectTimeout=3"),
                         [("mqtt", "tcp:1883", 5, 3.0)])

    def test_listener_keys_between_endpoint_arguments(self) -> None:
        """Listener keys may sit between Twisted's own endpoint arguments."""
        self.assertEqual(
            listeners("--listen", "tcp:1883:maxConnections=7:interface=127.0.0.1"),
            [("mqtt", "tcp:1883:interface=127.0.0.1", 7, 10.0)],
        )

    def test_global_limits_are_listener_defaults(self) -> None:
        """--max-connections/--connect-timeout apply where a listener sets no key of its own."""
        self.assertEqual(
            listeners("--max-connections", "9", "--connect-timeout", "4",
                      "--listen", "tcp:1883", "--listen", "tcp:1884:maxConnections=2"),
            [("mqtt", "tcp:1883", 9, 4.0), ("mqtt", "tcp:1884", 2, 4.0)],
        )

    def assertUsageError(self, *argv: str) -> str:
        e = self.assertRaises(usage.UsageError, parse, *argv)
        return str(e)

    def test_unknown_adapter(self) -> None:
        """An adapter no plugin provides is a usage error naming it and the known ones."""
        message = self.assertUsageError("--listen", "nosuch=tcp:8080")
        self.assertIn("unknown adapter 'nosuch'", message)
        self.assertRegex(message, r"\(known: [^)]*\bmqtt\b")

    def test_port_not_a_number(self) -> None:
        """tcp:notaport is a usage error quoting the endpoint, not a traceback."""
        self.assertIn("bad endpoint 'tcp:notaport'",
                      self.assertUsageError("--listen", "tcp:notaport"))

    def test_missing_tls_key(self) -> None:
        """ssl: with a missing private key file is a usage error naming the file."""
        message = self.assertUsageError("--listen", "ssl:8883:privateKey=/nonexistent")
        self.assertIn("bad endpoint", message)
        self.assertIn("/nonexistent", message)

    def test_unknown_endpoint_type(self) -> None:
        """An endpoint type Twisted does not know is a usage error."""
        self.assertIn("foo", self.assertUsageError("--listen", "foo:1883"))

    def test_empty_endpoint_refused(self) -> None:
        """An adapter name with nothing after '=' is a usage error, not every interface's 1883."""
        message = self.assertUsageError("--listen", "mqtt=")
        self.assertIn("no endpoint", message)
        self.assertIn("mqtt=tcp:1883", message)

    def test_empty_endpoint_without_default(self) -> None:
        """With no endpoint and no adapter default, the listener is a usage error."""
        from mqtt_twisted.adapters.listener import parse_listener

        with self.assertRaises(ValueError) as caught:
            parse_listener("mqtt=", "mqtt", {"mqtt": []})
        self.assertIn("no endpoint", str(caught.exception))

    def test_bad_listener_key_value(self) -> None:
        """A listener key that is not a number is a usage error."""
        self.assertIn("maxConnections",
                      self.assertUsageError("--listen", "tcp:1883:maxConnections=lots"))

    def test_negative_listener_key(self) -> None:
        """Negative listener limits are refused."""
        self.assertIn("negative", self.assertUsageError("--listen", "tcp:1883:connectTimeout=-1"))

    def test_escaped_colons_kept(self) -> None:
        """Backslash-escaped colons (IPv6 interfaces) stay in the endpoint for Twisted."""
        self.assertEqual(listeners("--listen", r"tcp:1883:interface=\:\:1")[0][1],
                         r"tcp:1883:interface=\:\:1")


class OtherOptionTests(SynchronousTestCase):
    """--store, --auth, limits, --list-plugins and --version."""

    def test_defaults_choose_memory_and_anonymous(self) -> None:
        """By default the memory store and anonymous auth plugins are chosen."""
        options = parse()
        self.assertIsInstance(options["store-plugin"][0], MemoryStorePlugin)
        ((plugin, argument, value),) = options["auth-plugins"]
        self.assertIsInstance(plugin, AnonymousAuthPlugin)
        self.assertEqual((argument, value), ("", "anonymous"))

    def test_store_argument_split(self) -> None:
        """--store NAME:ARGS passes ARGS to the plugin."""
        self.assertEqual(parse("--store", "memory:anything")["store-plugin"][1], "anything")

    def test_unknown_store(self) -> None:
        """An unknown --store is a usage error listing the known stores."""
        e = self.assertRaises(usage.UsageError, parse, "--store", "nosuch://x")
        self.assertIn("--store 'nosuch://x': unknown store 'nosuch'", str(e))
        self.assertIn("memory", str(e))

    def test_unknown_auth(self) -> None:
        """An unknown --auth is a usage error listing the known backends."""
        e = self.assertRaises(usage.UsageError, parse, "--auth", "ldap:x")
        self.assertIn("--auth 'ldap:x': unknown auth 'ldap'", str(e))
        self.assertIn("anonymous", str(e))

    def test_negative_limits_refused(self) -> None:
        """Negative sizes and an in-flight window outside 1..65535 are usage errors."""
        for argv in (["--max-queued", "-1"], ["--max-connections", "-2"],
                     ["--max-inflight", "0"], ["--max-inflight", "70000"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_not_a_number(self) -> None:
        """A non-numeric value of a numeric option is a usage error naming option and value."""
        for argv, message in (
                (["--max-queued", "many"], "--max-queued: 'many' is not an integer"),
                (["--sys-interval", "abc"], "--sys-interval: 'abc' is not a number"),
                (["--connect-timeout", "nan"], "--connect-timeout: 'nan' is not a finite number")):
            self.assertEqual(str(self.assertRaises(usage.UsageError, parse, *argv)), message)

    def test_values_that_cannot_work(self) -> None:
        """Sizes, expiries and timeouts that cannot work are refused, naming option and value."""
        for argv, message in (
                (["--connect-timeout", "-5"], "--connect-timeout: '-5' must not be negative"),
                (["--max-packet-size", "0"], "--max-packet-size: '0' must be 20..268435460"),
                (["--max-keepalive", "70000"], "--max-keepalive: '70000' must be 0..65535"),
                (["--persistent-session-expiry", "-1"],
                 "--persistent-session-expiry: '-1' must not be negative"),
                (["--max-session-expiry", "-1"],
                 "--max-session-expiry: '-1' must be 0..4294967295"),
                (["--topic-aliases", "some"], "--topic-aliases: 'some' must be off, first or lru")):
            self.assertEqual(str(self.assertRaises(usage.UsageError, parse, *argv)), message)

    def test_list_plugins(self) -> None:
        """--list-plugins prints every adapter, store and auth backend, then exits 0."""
        out = io.StringIO()
        with redirect_stdout(out):
            e = self.assertRaises(SystemExit, parse, "--list-plugins")
        self.assertEqual(e.code, 0)
        text = out.getvalue()
        for word in ("Adapters:", "Stores:", "Auth:", "mqtt", "memory", "anonymous"):
            self.assertIn(word, text)

    def test_version(self) -> None:
        """--version prints the package version and exits 0."""
        out = io.StringIO()
        with redirect_stdout(out):
            e = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(e.code, 0)
        self.assertIn(__version__, out.getvalue())

    def test_bad_plugin_argument_exits_with_message(self) -> None:
        """A plugin refusing its argument ends makeService with a message, not a traceback."""
        options = parse()

        def refuse(reactor: Any, argument: str) -> Any:
            raise ValueError("no such users file")

        plugin = AnonymousAuthPlugin()
        plugin.makeAuthenticator = refuse  # type: ignore[method-assign]
        options["auth-plugins"] = [(plugin, "x", "anonymous:x")]
        err = io.StringIO()
        with redirect_stderr(err):
            e = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(e.code, 2)
        self.assertEqual(err.getvalue().splitlines(), [
            "twistd mqttbroker: error: --auth 'anonymous:x': no such users file",
            "Try 'twistd mqttbroker --help' for more information."])


class _RecordingPort:
    """A listening port that records stopListening."""

    def __init__(self, port: Any) -> None:
        self._port = port
        self.stopped = False

    def stopListening(self) -> Any:
        self.stopped = True
        return defer.succeed(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


class _Reactor(MemoryReactorClock):
    """MemoryReactorClock whose ports say whether they were closed."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_RecordingPort] = []

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        port = _RecordingPort(super().listenTCP(*args, **kwargs))
        self.ports.append(port)
        return port

    def listenUNIX(self, *args: Any, **kwargs: Any) -> Any:
        port = _RecordingPort(super().listenUNIX(*args, **kwargs))
        self.ports.append(port)
        return port


class MakeServiceTests(SynchronousTestCase):
    """makeService on a memory reactor: what listens where, and a clean stop."""

    def build(self, *argv: str) -> tuple[BrokerService, _Reactor]:
        reactor = _Reactor()
        service = makeService(parse(*argv), reactor)
        self.assertIsInstance(service, BrokerService)
        return service, reactor  # type: ignore[return-value]

    def stop(self, service: BrokerService, reactor: _Reactor) -> None:
        done: list[Any] = []
        service.stopService().addBoth(done.append)
        reactor.advance(10)  # past the shutdown grace period, whatever is still connected
        self.assertEqual(done, [None])

    def test_nothing_listens_before_start(self) -> None:
        """makeService only builds: no port is opened until the service starts."""
        service, reactor = self.build("--listen", "tcp:1884")
        self.assertEqual(reactor.tcpServers, [])
        self.assertFalse(service.running)

    def test_start_listens_on_each_listener(self) -> None:
        """startService calls listenTCP/listenUNIX with each listener's port and interface."""
        service, reactor = self.build("--listen", "tcp:1884:interface=127.0.0.1",
                                      "--listen", "tcp:1885", "--listen", "unix:/tmp/m.sock")
        service.startService()
        self.assertTrue(service.ready.called)
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(1884, "127.0.0.1"), (1885, "")])
        self.assertEqual([entry[0] for entry in reactor.unixServers], ["/tmp/m.sock"])
        self.stop(service, reactor)

    def test_default_listens_on_1883(self) -> None:
        """With no --listen the started service listens on TCP port 1883, all interfaces."""
        service, reactor = self.build()
        service.startService()
        self.assertEqual([(p, i) for p, _, _, i in reactor.tcpServers], [(1883, "")])
        self.stop(service, reactor)

    def test_options_reach_the_broker(self) -> None:
        """Broker limits from the command line end up in the broker's settings."""
        service, _ = self.build("--max-inflight", "7", "--max-queued", "50",
                                "--max-packet-size", "4096", "--queue-qos0")
        settings = service.broker.settings
        self.assertEqual((settings.max_inflight, settings.max_queued, settings.max_packet_size,
                          settings.queue_qos0_offline), (7, 50, 4096, True))

    def test_limits_reach_the_broker(self) -> None:
        """The hostile-client limits (docs/limits.md) from the command line end up in the
        broker's settings; without them the defaults hold."""
        service, _ = self.build("--connect-packet-size", "1000", "--max-user-properties", "3",
                                "--max-user-property-bytes", "300", "--max-topic-levels", "9",
                                "--max-topic-length", "99", "--max-subscriptions", "5",
                                "--max-retained", "6", "--max-retained-bytes", "7000",
                                "--max-queued-bytes", "8000", "--max-client-rate", "50",
                                "--max-client-bytes-rate", "4096.5",
                                "--max-retained-per-client", "9",
                                "--max-retained-bytes-per-client", "9000")
        s = service.broker.settings
        self.assertEqual((s.max_retained_per_client, s.max_retained_bytes_per_client),
                         (9, 9000))
        self.assertEqual((s.connect_packet_size, s.max_user_properties,
                          s.max_user_property_bytes, s.max_topic_levels, s.max_topic_length,
                          s.max_subscriptions, s.max_retained_messages, s.max_retained_bytes,
                          s.max_queued_bytes, s.max_client_rate, s.max_client_bytes_rate),
                         (1000, 3, 300, 9, 99, 5, 6, 7000, 8000, 50, 4096.5))
        defaults, _ = self.build()
        self.assertEqual(defaults.broker.settings, BrokerSettings())
        self.assertIsInstance(service.store, MemoryStore)

    def test_stop_closes_ports(self) -> None:
        """stopService closes every listening port and stops the listener services."""
        service, reactor = self.build("--listen", "tcp:1884", "--listen", "tcp:1885")
        service.startService()
        self.assertEqual([p.stopped for p in reactor.ports], [False, False])
        self.stop(service, reactor)
        self.assertEqual([p.stopped for p in reactor.ports], [True, True])
        self.assertFalse(service.running)
        self.assertEqual(list(service), [])

    def test_port_in_use_stops_the_reactor(self) -> None:
        """A listener that cannot listen fails ``ready`` and stops the reactor once it runs."""
        reactor = _Reactor()

        def in_use(port: int, *args: Any, **kwargs: Any) -> Any:
            raise error.CannotListenError("", port, OSError("Address already in use"))

        reactor.listenTCP = in_use  # type: ignore[method-assign]
        service = makeService(parse("--listen", "tcp:1884"), reactor)
        service.startService()
        failure = self.failureResultOf(service.ready, StartError)
        self.assertIsInstance(failure.value.__cause__, error.CannotListenError)
        self.assertEqual(failure.value.what, "listener mqtt=tcp:1884")
        self.assertFalse(reactor.hasStopped)
        reactor.run()
        self.assertTrue(reactor.hasStopped)

    def test_listener_connection_limit(self) -> None:
        """A listener's maxConnections refuses further sockets, and counts them."""
        service, reactor = self.build("--listen", "tcp:1884:maxConnections=2")
        service.startService()
        factory = reactor.tcpServers[0][1]
        self.assertEqual(factory.listener.maxConnections, 2)
        built = [factory.buildProtocol(None) for _ in range(3)]
        self.assertIsNotNone(built[0])
        self.assertIsNotNone(built[1])
        self.assertIsNone(built[2])
        self.assertEqual(service.stats.connections_refused, 1)
        self.stop(service, reactor)

    def test_stop_disconnects_v5_clients(self) -> None:
        """On shutdown a connected MQTT 5 client gets DISCONNECT 0x8B and its socket closes."""
        service, reactor = self.build("--listen", "tcp:1884")
        service.startService()
        factory = reactor.tcpServers[0][1]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(encode(Connect("shutdown-test", 5, True, 0)))
        decoder = StreamDecoder(5)
        self.assertEqual(decoder.feed(transport.value())[0].reason_code, 0)  # CONNACK
        transport.clear()
        done: list[Any] = []
        service.stopService().addBoth(done.append)
        (packet,) = decoder.feed(transport.value())
        self.assertIsInstance(packet, Disconnect)
        self.assertEqual(packet.reason_code, ReasonCode.SERVER_SHUTTING_DOWN)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(error.ConnectionDone()))
        reactor.advance(10)
        self.assertEqual(done, [None])


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: install Debian's mosquitto-clients "
                             "(scripts/test does)")
    return path


class TwistdProcessTests(TestCase):
    """The real ``twistd -n mqttbroker`` serving Mosquitto's command-line clients."""

    timeout = 90

    def spawn(self, args: list[str], **kwargs: Any) -> ChildProcess:
        from twisted.internet import reactor

        proc = ChildProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        transport = reactor.spawnProcess(proc, args[0], args, env=env, **kwargs)

        def kill() -> Any:
            if not proc.finished:
                transport.signalProcess("KILL")
            return proc.ended

        self.addCleanup(kill)
        return proc

    def within(self, d: defer.Deferred[Any], seconds: float, what: str) -> defer.Deferred[Any]:
        from twisted.internet import reactor

        def timed_out(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")

        return d.addTimeout(seconds, reactor).addErrback(timed_out)

    @defer.inlineCallbacks
    def wait_for_port(self, port: int, broker: ChildProcess) -> Any:
        """Poll until the broker accepts TCP connections (bounded attempts, no sleep)."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
        for _ in range(200):
            if broker.finished:
                raise AssertionError(f"twistd exited early:\n{broker.text}")
            try:
                proto = yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            except error.ConnectError:
                yield task.deferLater(reactor, 0.05, lambda: None)
                continue
            proto.transport.loseConnection()
            return
        raise AssertionError(f"twistd did not listen on {port}:\n{broker.text}")

    @defer.inlineCallbacks
    def client(self, name: str, *args: str) -> Any:
        """Run one mosquitto_pub/sub to completion; fires with its output, asserting exit 0."""
        proc = self.spawn([_tool(name), *args])
        code = yield self.within(proc.ended, 30, f"{name} {' '.join(args)}")
        self.assertEqual(code, 0, f"{name} {args} exited {code}:\n{proc.text}")
        return proc.text

    @defer.inlineCallbacks
    def test_mosquitto_clients_and_sigterm(self) -> None:
        """mosquitto_sub gets QoS 1, v5 QoS 2 and retained messages; SIGTERM stops cleanly."""
        port = _free_port()
        cwd = tempfile.mkdtemp(prefix="mqtt-twisted-twistd-")  # mktemp() is in the checkout
        self.addCleanup(shutil.rmtree, cwd, ignore_errors=True)
        broker = self.spawn([*_twistd_command(), "-n", "--pidfile=", "mqttbroker",
                             "--listen", f"tcp:{port}:interface=127.0.0.1"], path=cwd)
        yield self.wait_for_port(port, broker)
        host = ["-h", "127.0.0.1", "-p", str(port)]

        # Line-buffered, so that its debug line about the SUBACK arrives when it happens.
        sub = self.spawn([_tool("stdbuf"), "-oL", _tool("mosquitto_sub"), *host, "-t", "t/#", "-q", "1", "-v", "-d",
                          "-C", "2", "-W", "30", "-i", "tap-test-sub"])
        yield self.within(sub.seen("received SUBACK"), 20, "mosquitto_sub's SUBACK")
        yield self.client("mosquitto_pub", *host, "-t", "t/one", "-m", "first", "-q", "1")
        yield self.client("mosquitto_pub", *host, "-V", "mqttv5", "-t", "t/two", "-m", "second",
                          "-q", "2")
        code = yield self.within(sub.ended, 30, "mosquitto_sub to get two messages")
        self.assertEqual(code, 0, sub.text)
        lines = sub.text.splitlines()
        self.assertIn("t/one first", lines)
        self.assertIn("t/two second", lines)

        yield self.client("mosquitto_pub", *host, "-t", "t/kept", "-m", "retained", "-q", "1",
                          "-r")
        later = yield self.client("mosquitto_sub", *host, "-t", "t/#", "-v", "-C", "1",
                                  "-W", "20", "-i", "tap-test-late")
        self.assertEqual(later.splitlines(), ["t/kept retained"])

        broker.transport.signalProcess("TERM")  # type: ignore[union-attr]
        yield self.within(broker.ended, 10, "twistd to exit after SIGTERM")
        # After a clean shutdown twistd ends itself with the signal it got (exit status 143
        # in a shell), as Unix programs should; any other ending is a failure.
        self.assertEqual(broker.signal, signal.SIGTERM, broker.text)
        self.assertIn("Received SIGTERM, shutting down.", broker.text)
        self.assertIn("Server Shut Down.", broker.text)
        self.assertNotIn("Traceback", broker.text)
        self.assertNotIn("Unhandled", broker.text)
