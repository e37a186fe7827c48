"""The bridge without a network: topic rules in Mosquitto's form, the --bridge options and
the configuration file's ``bridges:``, Mosquitto's bridge bit, and a :class:`Bridge`
between an in-memory broker (through the Gateway) and an in-memory remote connection."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.bridge import BridgeConfig, parse_topic_rule
from mqtt_twisted.bridge.bridge import Bridge
from mqtt_twisted.bridge.remote import BridgeCore
from mqtt_twisted.client import connect_client
from mqtt_twisted.client.core import ConnectRefused
from mqtt_twisted.client.service import backoff
from mqtt_twisted.codec import ConnAck, Connect, PubAck, Publish, SubAck, Subscribe, encode
from mqtt_twisted.config.load import ConfigError
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.interfaces import IMessageSink
from mqtt_twisted.tap import Options
from mqtt_twisted.testing import FakeClient, make_broker, start_broker, stop_broker
from tests.redisserver import free_port
from tests.test_client_service import FakeEndpoint
from tests.test_twistd_run import TwistdTestCase, _listen


class TopicRuleTests(SynchronousTestCase):
    """``PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`` as mosquitto.conf(5)."""

    def test_defaults(self) -> None:
        """Only a pattern: out, QoS 0, no prefixes (Mosquitto's defaults)."""
        rule = parse_topic_rule("sensors/#")
        self.assertEqual((rule.direction, rule.qos, rule.local_prefix, rule.remote_prefix),
                         ("out", 0, "", ""))

    def test_prefixes(self) -> None:
        """The local topic is LOCAL_PREFIX + PATTERN, the remote REMOTE_PREFIX + PATTERN;
        crossing replaces one prefix by the other, in the rule's direction only."""
        rule = parse_topic_rule("x/# both 1 here/ there/")
        self.assertEqual((rule.local_filter, rule.remote_filter), ("here/x/#", "there/x/#"))
        self.assertEqual(rule.to_remote("here/x/1"), "there/x/1")
        self.assertEqual(rule.to_local("there/x/1"), "here/x/1")
        self.assertIsNone(rule.to_remote("there/x/1"))
        out = parse_topic_rule("x/# out 1 here/ there/")
        self.assertIsNone(out.to_local("there/x/1"))
        inbound = parse_topic_rule("x/# in 2 here/ there/")
        self.assertIsNone(inbound.to_remote("here/x/1"))

    def test_empty_pattern(self) -> None:
        """``""`` with prefixes bridges one topic under two names."""
        rule = parse_topic_rule('"" out 1 local/temp remote/temperature')
        self.assertEqual(rule.to_remote("local/temp"), "remote/temperature")
        self.assertIsNone(rule.to_remote("local/temp/x"))

    def test_errors(self) -> None:
        """Each mistake is a ValueError saying what is wrong."""
        for line, needle in [
            ("", "empty topic rule"),
            ("a/# sideways", "direction 'sideways' must be in, out or both"),
            ("a/# in 3", "QoS '3' must be 0, 1 or 2"),
            ("a/# in x", "QoS 'x'"),
            ("a/b#", "'#' must be the whole last level"),
            ('"" out 0', "an empty pattern needs a local prefix"),
            ("a in 1 x/+ y/", "may not hold wildcards"),
            ("a in 1 x/ y/ z", "6 fields, at most 5"),
            ('a "in', "No closing quotation"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parse_topic_rule(line)
            self.assertIn(needle, str(caught.exception), line)


class OptionsTests(SynchronousTestCase):
    """The --bridge options apply to the --bridge before them."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_two_bridges(self) -> None:
        """Each --bridge gets the options after it; names and client ids default."""
        options = self.parse(
            "--bridge", "tcp:a:1883", "--bridge-topic", "s/# out 1",
            "--bridge-client-id", "edge-1", "--bridge-username", "u", "--bridge-password", "p",
            "--bridge", "tls:b:8883", "--bridge-name", "cloud", "--bridge-protocol", "5",
            "--bridge-clean", "--bridge-topic", "c/# in 2 l/ r/", "--bridge-keepalive", "20",
            "--bridge-try-private", "no")
        first, second = options["bridges"]
        self.assertEqual((first.endpoint, first.name, first.client_id, first.username,
                          first.password, first.protocol, first.clean),
                         ("tcp:a:1883", "bridge1", "edge-1", "u", "p", 4, False))
        self.assertEqual([r.describe() for r in first.topics], ["s/# out 1"])
        self.assertEqual((second.name, second.protocol, second.clean, second.keepalive,
                          second.try_private), ("cloud", 5, True, 20, False))
        self.assertTrue(second.client_id.endswith(".cloud"))
        self.assertEqual(second.local_client_id, f"local.{second.client_id}")

    def test_usage_errors(self) -> None:
        """Bad bridge options are usage errors naming the option and the mistake."""
        cases = [
            (["--bridge-topic", "a"], "--bridge-topic applies to the --bridge before it"),
            (["--bridge", "tcp:a:1"], "no --bridge-topic after it"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a/# up 1"],
             "--bridge-topic: 'a/# up 1': direction 'up'"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a", "--bridge-protocol", "4"],
             "--bridge-protocol: '4' must be 311 or 5"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a", "--bridge-name", "x",
              "--bridge", "tcp:b:1", "--bridge-topic", "a", "--bridge-name", "x"],
             "two bridges are named 'x'"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a", "--bridge-password", "p"],
             "--bridge-password without --bridge-username"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a", "--bridge-name", "a/b"],
             "--bridge-name: 'a/b'"),
            (["--bridge", "tcp:a:1", "--bridge-topic", "a", "--bridge-keepalive", "-1"],
             "--bridge-keepalive: '-1' must be 0..65535"),
        ]
        for argv, needle in cases:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(needle, str(caught.exception), argv)

    def write(self, text: str) -> str:
        directory = tempfile.mkdtemp(prefix="bridge-config-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = Path(directory) / "broker.yaml"
        path.write_text(text)
        return str(path)

    def test_config_file(self) -> None:
        """A ``bridges:`` item is the same as its --bridge options."""
        path = self.write(
            "bridges:\n"
            "  - endpoint: tcp:cloud:1883\n"
            "    name: cloud\n"
            "    protocol: 5\n"
            "    clean: true\n"
            "    try_private: false\n"
            "    topics: ['s/# out 1', 'c/# in 2 l/ r/']\n")
        from_file = self.parse("--config", path)["bridges"]
        from_argv = self.parse("--bridge", "tcp:cloud:1883", "--bridge-name", "cloud",
                               "--bridge-protocol", "5", "--bridge-clean",
                               "--bridge-try-private", "no", "--bridge-topic", "s/# out 1",
                               "--bridge-topic", "c/# in 2 l/ r/")["bridges"]
        self.assertEqual(from_file, from_argv)

    def test_command_line_replaces_file_bridges(self) -> None:
        """--bridge on the command line replaces the file's bridges, options and all."""
        path = self.write("bridges:\n  - endpoint: tcp:a:1\n    topics: ['a']\n"
                          "    username: fileuser\n")
        (bridge,) = self.parse("--config", path, "--bridge", "tcp:b:1",
                               "--bridge-topic", "b")["bridges"]
        self.assertEqual((bridge.endpoint, bridge.username), ("tcp:b:1", None))

    def test_config_file_errors(self) -> None:
        """A bridge item without topics, an unknown key and a bad rule name their line."""
        path = self.write("bridges:\n  - endpoint: tcp:a:1\n    topic: ['a']\n")
        error = str(self.assertRaises(ConfigError, self.parse, "--config", path))
        self.assertIn("broker.yaml:3: bridges[0].topic: unknown key", error)
        self.assertIn("broker.yaml:2: bridges[0]: 'topics' is missing", error)
        path = self.write("bridges:\n  - endpoint: tcp:a:1\n    topics: ['a nowhere']\n")
        error = str(self.assertRaises(usage.UsageError, self.parse, "--config", path))
        self.assertIn("direction 'nowhere'", error)


class BridgeCoreTests(SynchronousTestCase):
    """Mosquitto's bridge bit on a 3.1.1 CONNECT, and the fall-back without it."""

    def test_bit_set_then_dropped_on_refusal(self) -> None:
        """The CONNECT's protocol level is 0x84; a CONNACK 1 (unacceptable protocol
        version) makes the next CONNECT a plain 4."""
        core = BridgeCore("b", 4, try_private=True)
        core.connect()
        data = core.data_to_send()
        self.assertEqual(data[2:9], b"\x00\x04MQTT\x84")
        events = core.receive(encode(ConnAck(False, 1), 4))
        self.assertIsInstance(events[0], ConnectRefused)
        self.assertFalse(core.try_private)
        core.connect()
        self.assertEqual(core.data_to_send()[2:9], b"\x00\x04MQTT\x04")

    def test_long_connect(self) -> None:
        """A CONNECT over 127 bytes (two length bytes) gets the bit in the right place."""
        core = BridgeCore("b" * 200, 4)
        core.connect()
        data = core.data_to_send()
        self.assertEqual(data[3:10], b"\x00\x04MQTT\x84")

    def test_v5_never(self) -> None:
        """MQTT 5 bridges use no-local instead: no bit."""
        core = BridgeCore("b", 5, try_private=True)
        core.connect()
        self.assertEqual(core.data_to_send()[2:9], b"\x00\x04MQTT\x05")


class BridgeTests(SynchronousTestCase):
    """A Bridge between an in-memory broker and an in-memory remote connection."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.gateway = Gateway(self.broker)
        config = BridgeConfig("tcp:remote:1883", "up",
                              [parse_topic_rule("s/# out 1 l/ r/"),
                               parse_topic_rule("c/# in 1 l/ r/"),
                               parse_topic_rule("c/1 in 1 l/ r/"),  # overlaps the one above
                               parse_topic_rule("both/# both 1")],
                              client_id="edge", try_private=False)
        self.endpoint = FakeEndpoint()
        self.endpoint.refuse = True
        self.bridge = Bridge(self.clock, self.gateway, config,
                             retry_policy=backoff(1.0, 1.0, 1.0, jitter=lambda: 0.0),
                             endpoint=self.endpoint)
        self.bridge.startService()
        self.addCleanup(self.bridge.stopService)
        self.local = FakeClient(self.broker)
        self.local.connect("local-client")
        self.local.subscribe("l/#", "both/#", qos=1)
        self.local.received()

    def remote_up(self) -> Any:
        """Let the bridge connect; answer CONNECT and SUBSCRIBE as a broker would."""
        self.endpoint.refuse = False
        self.clock.advance(1)
        link = self.endpoint.links[-1]
        (connect,) = link.received()
        self.assertIsInstance(connect, Connect)
        link.answer(ConnAck(False, 0))
        self.early = []  # what came with the subscriptions (the queue released)
        for packet in link.received():
            if isinstance(packet, Subscribe):
                link.answer(SubAck(packet.packet_id, [1] * len(packet.subscriptions)))
            else:
                self.early.append(packet)
        return link

    def test_sink(self) -> None:
        """The bridge is its local session's IMessageSink."""
        self.assertTrue(verifyObject(IMessageSink, self.bridge))

    def test_remote_subscriptions(self) -> None:
        """The remote gets the in and both filters with their prefixes."""
        self.endpoint.refuse = False
        self.clock.advance(1)
        link = self.endpoint.links[-1]
        link.received()
        link.answer(ConnAck(False, 0))
        filters = sorted(s.topic_filter for p in link.received() for s in p.subscriptions)
        self.assertEqual(filters, ["both/#", "r/c/#", "r/c/1"])

    def test_waits_in_the_broker_while_remote_down(self) -> None:
        """QoS 1 messages published while the remote is down wait in the bridge's local
        session queue, and go out with the remote prefix, in order, once it is up."""
        for n in range(3):
            self.local.publish(f"l/s/{n}", str(n).encode(), qos=1)
        session = self.gateway.session("local.edge")
        self.assertEqual(len(session.queue), 3)
        self.assertEqual(self.bridge.sys_values()["bridges/up/queued"], "3")
        link = self.remote_up()
        out = [p for p in self.early + link.received() if isinstance(p, Publish)]
        self.assertEqual([(p.topic, p.payload, p.qos) for p in out],
                         [(f"r/s/{n}", str(n).encode(), 1) for n in range(3)])
        self.assertEqual(self.bridge.messages_out, 3)

    def test_in_flight_published_again_after_remote_loss(self) -> None:
        """A message on the wire to the remote when it goes is sent again when it is back;
        the local session is paused meanwhile."""
        link = self.remote_up()
        self.local.publish("l/s/x", b"x", qos=1)
        (_first,) = [p for p in link.received() if isinstance(p, Publish)]
        link.drop()
        self.assertTrue(self.gateway.session("local.edge").connection.paused)
        self.clock.advance(1)
        link = self.endpoint.links[-1]
        link.received()
        link.answer(ConnAck(True, 0))
        again = [p for p in link.received() if isinstance(p, Publish)]
        self.assertEqual([(p.topic, p.dup) for p in again], [("r/s/x", True)])
        link.answer(PubAck(again[0].packet_id))
        self.assertFalse(self.gateway.session("local.edge").connection.paused)

    def test_from_remote_and_no_loop(self) -> None:
        """A remote message comes in with the local prefix; one on a both-way topic is
        delivered here and not sent back to the remote."""
        link = self.remote_up()
        link.answer(Publish("r/c/1", b"in", 1, False, False, 7))
        link.answer(Publish("both/x", b"both", 1, False, False, 8))
        got = [(p.topic, p.payload) for p in self.local.received() if isinstance(p, Publish)]
        self.assertEqual(got, [("l/c/1", b"in"), ("both/x", b"both")])
        sent = link.received()
        self.assertEqual([type(p).__name__ for p in sent], ["PubAck", "PubAck"])
        self.assertEqual((self.bridge.messages_in, self.bridge.loops_stopped), (2, 1))

    def test_session_reopened_after_kick(self) -> None:
        """An admin closing the bridge's local session: it is opened again a second later
        and its subscriptions work again."""
        link = self.remote_up()
        self.assertTrue(self.gateway.closeSession("local.edge"))
        self.clock.advance(1)
        self.local.publish("l/s/again", b"a", qos=1)
        out = [p for p in link.received() if isinstance(p, Publish)]
        self.assertEqual([p.topic for p in out], ["r/s/again"])

    def test_overlapping_in_rules_deliver_once(self) -> None:
        """A remote message matching two in rules is published here once."""
        link = self.remote_up()
        link.answer(Publish("r/c/1", b"once", 1, False, False, 9))
        got = [p.topic for p in self.local.received() if isinstance(p, Publish)]
        self.assertEqual(got, ["l/c/1"])

    def test_sys_values(self) -> None:
        """$SYS/broker/bridges/NAME/...: connected, queued, messages in and out."""
        values = self.bridge.sys_values()
        self.assertEqual(values["bridges/up/connected"], "0")
        self.remote_up()
        self.assertEqual(self.bridge.sys_values()["bridges/up/connected"], "1")
        from mqtt_twisted.core.systopics import SysTopics

        self.assertIn("bridges/up/messages/in", SysTopics(self.broker).values(0.0))
        self.bridge.stopService()
        self.assertNotIn("bridges/up/messages/in", SysTopics(self.broker).values(0.0))


class TwistdUsageTests(TwistdTestCase):
    """Under twistd a bad bridge option is one line and exit status 2."""

    @defer.inlineCallbacks
    def test_one_line(self) -> Any:
        """A bad --bridge-topic, a --bridge without topics, a bad endpoint string."""
        spare = _listen(free_port())
        cases = [
            (["--bridge", "tcp:127.0.0.1:1", "--bridge-topic", "a/# sideways 1"],
             "--bridge-topic: 'a/# sideways 1': direction 'sideways' must be in, out or both"),
            (["--bridge", "tcp:127.0.0.1:1"], "no --bridge-topic after it"),
            (["--bridge", "nosuch:x", "--bridge-topic", "a"], "--bridge 'nosuch:x'"),
        ]
        procs = [self.twistd("-n", "--pidfile=", "mqttbroker", "--listen", spare, *argv)
                 for argv, _ in cases]
        results = yield defer.DeferredList([self.ended(p) for p in procs],
                                           consumeErrors=True)
        for (_, needle), proc, (_, code) in zip(cases, procs, results, strict=True):
            lines = [line for line in proc.text.splitlines() if line.strip()]
            self.assertEqual(code, 2, proc.text)
            self.assertEqual(len(lines), 2, proc.text)
            self.assertTrue(lines[0].startswith("twistd mqttbroker: error: "), proc.text)
            self.assertIn(needle, lines[0])
            self.assertNotIn("Traceback", proc.text)




class OurBrokersTests(TestCase):
    """Two of our brokers in this process, bridged over TCP."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.here, self.here_port = yield start_broker(reactor)
        self.addCleanup(stop_broker, self.here)
        self.there, self.there_port = yield start_broker(reactor)
        self.addCleanup(stop_broker, self.there)

    def bridge(self, protocol: int, rule: str) -> Bridge:
        config = BridgeConfig(f"tcp:127.0.0.1:{self.there_port}", "twin",
                              [parse_topic_rule(rule)], client_id="twin", protocol=protocol)
        bridge = Bridge(self.reactor, self.here.gateway, config,
                        retry_policy=backoff(0.05, 0.2, 2.0))
        bridge.startService()
        self.addCleanup(bridge.stopService)
        return bridge

    @defer.inlineCallbacks
    def until(self, check: Any, what: str) -> Any:
        for _ in range(200):
            if check():
                return
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @defer.inlineCallbacks
    def client(self, port: int, client_id: str, version: int = 5) -> Any:
        proto = yield connect_client(self.reactor, f"tcp:127.0.0.1:{port}", client_id,
                                     version=version)
        self.addCleanup(lambda: proto.connected and proto.abort())
        return proto

    @defer.inlineCallbacks
    def test_bridge_bit_refused_then_plain(self) -> Any:
        """Our broker refuses Mosquitto's bridge bit (CONNACK 1): the bridge connects
        again without it and messages cross."""
        bridge = self.bridge(4, "a/# out 1")
        yield self.until(lambda: bridge.remote.online, "the bridge to connect")
        self.assertFalse(bridge.remote.core.try_private)
        got: list[Any] = []
        sub = yield self.client(self.there_port, "there-sub", 4)
        yield sub.subscribe("a/#", 1, handler=got.append)
        pub = yield self.client(self.here_port, "here-pub", 4)
        yield self.until(lambda: bridge.conn is not None and not bridge.conn.paused,
                         "the local side to resume")
        yield pub.publish("a/1", b"x", 1)
        yield self.until(lambda: got, "the message on the other broker")
        self.assertEqual((got[0].topic, got[0].payload), ("a/1", b"x"))

    @defer.inlineCallbacks
    def test_v5_both_ways_no_loop(self) -> Any:
        """A both-way v5 bridge on # between two of our brokers: each message once on
        each side."""
        bridge = self.bridge(5, "# both 1")
        yield self.until(lambda: bridge.remote.online, "the bridge to connect")
        here: list[Any] = []
        there: list[Any] = []
        here_sub = yield self.client(self.here_port, "here-sub")
        yield here_sub.subscribe("t/#", 1, handler=here.append)
        there_sub = yield self.client(self.there_port, "there-sub")
        yield there_sub.subscribe("t/#", 1, handler=there.append)
        here_pub = yield self.client(self.here_port, "here-pub")
        there_pub = yield self.client(self.there_port, "there-pub")
        for pub, seen in ((here_pub, there), (there_pub, here)):
            for _ in range(100):  # probes until the bridge is subscribed on both sides
                yield pub.publish("t/probe", b"p", 0)
                yield deferLater(self.reactor, 0.05, lambda: None)
                if seen:
                    break
        yield deferLater(self.reactor, 0.3, lambda: None)
        del here[:], there[:]
        yield here_pub.publish("t/here", b"h", 1)
        yield there_pub.publish("t/there", b"t", 1)
        yield self.until(lambda: len(here) >= 2 and len(there) >= 2, "both messages")
        yield deferLater(self.reactor, 0.5, lambda: None)
        for side in (here, there):
            self.assertEqual(sorted(m.topic for m in side), ["t/here", "t/there"])


class ImportCostTests(SynchronousTestCase):
    """Every twistd start imports tap.py, bridges or not."""

    def test_tap_does_not_import_the_client(self) -> None:
        """The --bridge options come without the bridge's client (the endpoints module
        alone takes a third of a second to import)."""
        import subprocess
        import sys

        code = ("import sys, mqtt_twisted.tap; "
                "print(sorted(m for m in sys.modules if m.startswith('mqtt_twisted.client')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        self.assertEqual(out.stdout.strip(), "[]")
