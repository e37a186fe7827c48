"""The bridge end to end: our broker as a real ``twistd mqttbroker --bridge ...`` process,
bridged to a real Mosquitto 2.0.11 process, with our client library on both sides."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from mqtt_twisted.client import MQTTClientProtocol, connect_client
from mqtt_twisted.client.service import MQTTClientService, backoff
from tests.certs import CA
from tests.redisserver import free_port
from tests.securebroker import spawn, within
from tests.test_twistd_run import TwistdTestCase, _listen

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT = 15.0


class BridgeTestCase(TwistdTestCase):
    """Mosquitto on ``remote_port``; our broker on ``port`` bridged to it as bridge "up"
    with ``rules``."""

    timeout = 90
    rules: list[str] = []
    protocol = "311"
    mosquitto_persistence = False

    @inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        if not os.access(MOSQUITTO, os.X_OK):
            raise SkipTest("mosquitto is not installed (scripts/test installs it)")
        self.dir = self.directory()
        self.remote_port, self.port = free_port(), free_port()
        yield self.start_mosquitto()
        rules = [arg for rule in self.rules for arg in ("--bridge-topic", rule)]
        self.broker = self.twistd(
            "-n", "--pidfile=", "mqttbroker", "--listen", _listen(self.port),
            "--sys-interval", "1", "--bridge", self.remote_endpoint(),
            "--bridge-name", "up", "--bridge-protocol", self.protocol, *rules, cwd=self.dir)
        yield self.wait_for_port(self.port, self.broker)
        yield within(self.broker.seen("Bridge up connected"), self.reactor, WAIT,
                     f"the bridge to connect:\n{self.broker.text}")

    def remote_endpoint(self) -> str:
        """The --bridge endpoint string."""
        return f"tcp:127.0.0.1:{self.remote_port}"

    def remote_listener(self) -> str:
        """Mosquitto's listener lines for ``remote_port``."""
        return f"listener {self.remote_port} 127.0.0.1\n"

    @inlineCallbacks
    def start_mosquitto(self) -> Any:
        conf = self.dir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        store = (f"persistence true\npersistence_location {self.dir}/\n"
                 if self.mosquitto_persistence else "persistence false\n")
        conf.write_text(f"{user}{self.remote_listener()}"
                        f"allow_anonymous true\nlog_type all\n{store}")
        self.mosquitto = spawn(self, self.reactor, [MOSQUITTO, "-c", str(conf)],
                               env=dict(os.environ), path=str(self.dir))
        yield self.wait_for_port(self.remote_port, self.mosquitto)

    @inlineCallbacks
    def client(self, port: int, client_id: str, version: int = 4, **options: Any) -> Any:
        proto = yield connect_client(self.reactor, f"tcp:127.0.0.1:{port}", client_id,
                                     version=version, **options).addTimeout(
                                         WAIT, self.reactor)
        self.addCleanup(self._close, proto)
        return proto

    def _close(self, proto: MQTTClientProtocol) -> Deferred[None]:
        if proto.connected:
            proto.transport.abortConnection()
        return proto.whenClosed()

    @inlineCallbacks
    def crossing(self, publisher: Any, topic: str, seen: list[Any] | None = None,
                 arrived: Any = None, expect: str | None = None) -> Any:
        """Publish ``topic`` every 0.2 s until a message on it is in ``seen`` (or
        ``arrived()``): the bridge is subscribed on both sides."""
        for _ in range(int(WAIT / 0.2)):
            yield publisher.publish(topic, b"probe", 0)
            yield deferLater(self.reactor, 0.2, lambda: None)
            if arrived() if arrived else any(m.topic == (expect or topic) for m in seen or ()):
                return
        self.fail(f"{topic} never crossed the bridge:\n{self.broker.text}\n"
                  f"mosquitto:\n{self.mosquitto.text}")

    @inlineCallbacks
    def until(self, check: Any, what: str) -> Any:
        for _ in range(int(WAIT / 0.05)):
            if check():
                return
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what() if callable(what) else what}")


class BothWaysTests(BridgeTestCase):
    """A both-way bridge on ``#`` over MQTT 3.1.1 (Mosquitto's bridge bit)."""

    rules = ["# both 2"]

    @inlineCallbacks
    def test_every_qos_both_ways_no_loop(self) -> Any:
        """QoS 0, 1 and 2 cross both ways at their QoS; each message arrives once on each
        side (no loop), and $SYS/broker/bridges/up/... counts them."""
        here: list[Any] = []
        there: list[Any] = []
        local_sub = yield self.client(self.port, "local-sub")
        yield local_sub.subscribe([("t/#", 2), ("probe/#", 0)], handler=here.append)
        remote_sub = yield self.client(self.remote_port, "remote-sub")
        yield remote_sub.subscribe([("t/#", 2), ("probe/#", 0)], handler=there.append)
        local_pub = yield self.client(self.port, "local-pub")
        remote_pub = yield self.client(self.remote_port, "remote-pub")
        yield self.crossing(local_pub, "probe/out", there)
        yield self.crossing(remote_pub, "probe/in", here)
        del here[:], there[:]
        for qos in range(3):
            yield local_pub.publish(f"t/out/{qos}", b"o%d" % qos, qos)
            yield remote_pub.publish(f"t/in/{qos}", b"i%d" % qos, qos)
        yield self.until(lambda: len(here) >= 6 and len(there) >= 6, "6 messages each side")
        yield deferLater(self.reactor, 1.5, lambda: None)  # room for a loop to show
        for side in (here, there):
            got = sorted((m.topic, m.payload, m.publish.qos) for m in side)
            self.assertEqual(got, sorted([(f"t/out/{q}", b"o%d" % q, q) for q in range(3)]
                                         + [(f"t/in/{q}", b"i%d" % q, q) for q in range(3)]))
        sys: dict[str, bytes] = {}
        watcher = yield self.client(self.port, "sys-watch")
        yield watcher.subscribe("$SYS/broker/bridges/up/#", 0,
                                handler=lambda m: sys.__setitem__(m.topic, m.payload))
        yield self.until(lambda: int(sys.get("$SYS/broker/bridges/up/messages/in", 0)) >= 4,
                         f"$SYS values, have {sys}")
        self.assertEqual(sys["$SYS/broker/bridges/up/connected"], b"1")
        self.assertGreaterEqual(int(sys["$SYS/broker/bridges/up/messages/out"]), 4)
        self.assertIn("$SYS/broker/bridges/up/queued", sys)
        self.assertIn("New bridge connected", self.mosquitto.text)


class RemoteRestartTests(BridgeTestCase):
    """The remote Mosquitto stopped and started again mid-stream."""

    rules = ["stream/# out 1"]
    mosquitto_persistence = True

    @inlineCallbacks
    def test_no_qos1_message_lost(self) -> Any:
        """200 QoS 1 messages published here at a steady pace while Mosquitto is stopped
        (SIGTERM) after the 60th and started again: every one reaches a persistent
        subscriber on Mosquitto; the bridge logs the loss and the reconnection."""
        received: set[bytes] = set()
        subscriber = MQTTClientService(
            self.reactor, f"tcp:127.0.0.1:{self.remote_port}", "remote-stream-sub",
            clean_start=False, retry_policy=backoff(0.2, 1.0, 2.0),
            on_message=lambda m: received.add(m.payload))
        subscriber.startService()
        self.addCleanup(subscriber.stopService)
        yield subscriber.subscribe("stream/#", 1).addTimeout(WAIT, self.reactor)
        publisher = yield self.client(self.port, "stream-pub")
        yield self.crossing(publisher, "stream/probe", arrived=lambda: b"probe" in received)
        acked = []
        for n in range(200):
            acked.append(publisher.publish(f"stream/{n}", b"%d" % n, 1))
            if n == 60:
                self.mosquitto.transport.signalProcess("TERM")
                yield within(self.mosquitto.ended, self.reactor, WAIT, "mosquitto to stop")
                yield within(self.broker.seen("Bridge up lost"), self.reactor, WAIT,
                             "the bridge to log the loss")
            if n == 100:
                yield self.start_mosquitto()
            yield deferLater(self.reactor, 0.01, lambda: None)
        for d in acked:
            yield d.addTimeout(WAIT, self.reactor)
        wanted = {b"%d" % n for n in range(200)}
        yield self.until(lambda: wanted <= received,
                         f"all 200 on Mosquitto; missing {sorted(wanted - received)[:20]}")
        self.assertGreaterEqual(self.broker.text.count("Bridge up connected"), 2)


class PrefixTests(BridgeTestCase):
    """MQTT 5 towards the remote (no-local subscriptions), topics with prefixes."""

    protocol = "5"
    rules = ["x/# out 1 l/ r/", "y/# in 2 l/ r/", "z/# both 1 lz/ rz/"]

    @inlineCallbacks
    def test_prefixes_and_no_loop(self) -> Any:
        """l/x/... goes out as r/x/...; r/y/... comes in as l/y/...; a both-way rule with
        prefixes delivers each message once on each side."""
        here: list[Any] = []
        there: list[Any] = []
        local_sub = yield self.client(self.port, "p-local-sub", 5)
        yield local_sub.subscribe([("l/#", 2), ("lz/#", 2), ("x/#", 2)], handler=here.append)
        remote_sub = yield self.client(self.remote_port, "p-remote-sub", 5)
        yield remote_sub.subscribe([("r/#", 2), ("rz/#", 2), ("y/#", 2)],
                                   handler=there.append)
        local_pub = yield self.client(self.port, "p-local-pub", 5)
        remote_pub = yield self.client(self.remote_port, "p-remote-pub", 5)
        yield self.crossing(local_pub, "l/x/probe", there, expect="r/x/probe")
        yield self.crossing(remote_pub, "r/y/probe", here, expect="l/y/probe")
        del here[:], there[:]
        yield local_pub.publish("l/x/1", b"out", 1)
        yield remote_pub.publish("r/y/1", b"in", 2)
        yield local_pub.publish("lz/z/a", b"zl", 1)
        yield remote_pub.publish("rz/z/b", b"zr", 1)
        yield local_pub.publish("l/y/2", b"not-out", 1)  # an in rule: stays here
        yield self.until(lambda: len(here) >= 5 and len(there) >= 4,
                         lambda: f"the messages: {[m.topic for m in here]} {[m.topic for m in there]}")
        yield deferLater(self.reactor, 1.5, lambda: None)
        self.assertEqual(sorted((m.topic, m.payload) for m in there),
                         [("r/x/1", b"out"), ("r/y/1", b"in"), ("rz/z/a", b"zl"),
                          ("rz/z/b", b"zr")])
        self.assertEqual(sorted((m.topic, m.payload) for m in here),
                         [("l/x/1", b"out"), ("l/y/1", b"in"), ("l/y/2", b"not-out"),
                          ("lz/z/a", b"zl"), ("lz/z/b", b"zr")])


class TLSTests(BridgeTestCase):
    """The bridge over ``tls:`` to a Mosquitto that requires a client certificate."""

    rules = ["secure/# both 1"]

    def setUp(self) -> Any:
        self.certs = tempfile.mkdtemp(prefix="bridge-tls-")
        self.addCleanup(shutil.rmtree, self.certs, True)
        self.ca = CA(self.certs)
        self.server_cert = self.ca.issue("server", server=True)
        self.client_cert = self.ca.issue("bridge-client")
        self.trust = os.path.join(self.certs, "trust")
        os.mkdir(self.trust)
        shutil.copy(self.ca.cert_path, self.trust)
        return super().setUp()

    def remote_endpoint(self) -> str:
        return (f"tls:127.0.0.1:{self.remote_port}:trustRoots={self.trust}:"
                f"certificate={self.client_cert.cert_path}:"
                f"privateKey={self.client_cert.key_path}")

    def remote_listener(self) -> str:
        return (f"listener {self.remote_port} 127.0.0.1\ncafile {self.ca.cert_path}\n"
                f"certfile {self.server_cert.cert_path}\n"
                f"keyfile {self.server_cert.key_path}\nrequire_certificate true\n")

    @inlineCallbacks
    def test_both_ways_over_tls(self) -> Any:
        """QoS 1 both ways through a TLS bridge with a client certificate."""
        here: list[Any] = []
        there: list[Any] = []
        local = yield self.client(self.port, "tls-local")
        yield local.subscribe("secure/#", 1, handler=here.append)
        remote = yield connect_client(
            self.reactor, self.remote_endpoint(), "tls-remote").addTimeout(WAIT, self.reactor)
        self.addCleanup(self._close, remote)
        yield remote.subscribe("secure/#", 1, handler=there.append)
        yield self.crossing(local, "secure/probe-out", there)
        yield self.crossing(remote, "secure/probe-in", here)
        del here[:], there[:]
        yield local.publish("secure/out", b"o", 1)
        yield remote.publish("secure/in", b"i", 1)
        yield self.until(lambda: len(here) >= 2 and len(there) >= 2, "both messages")
        for side in (here, there):
            self.assertEqual(sorted(m.topic for m in side), ["secure/in", "secure/out"])
