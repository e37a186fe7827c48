"""The examples of docs/plugins.md run: the gateway's line adapter and the wrapping router.

``docs/examples/line_adapter.py`` and ``docs/examples/forwarding_router.py`` are the
code the page shows; they are loaded from their files here (``docs`` is not a
package) and driven on ``StringTransport`` against the fake service, a real
``Gateway`` and a sans-IO broker with ``FakeClient``s, so the page cannot drift
from what works.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.codec.packets import PubAck, Publish, SubAck
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.router import LocalRouter
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.interfaces import IBrokerService, IMessageSink, IRouter, IStreamAdapter
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker
from mqtt_twisted.testing.fake_service import FakeBrokerService

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` as ``doc_examples_<name>``."""
    qualified = f"doc_examples_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


line_adapter = load("line_adapter")
forwarding_router = load("forwarding_router")


class LineClient:
    """One line-protocol connection on a StringTransport, from its own port."""

    def __init__(self, gateway: Any, port: int) -> None:
        self.protocol = line_adapter.LineFactory(gateway).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port))
        self.protocol.makeConnection(self.transport)
        self.clientId = f"line-10.0.0.1:{port}"

    def say(self, *lines: str) -> list[str]:
        """Send lines; return the lines written back since the last call."""
        for line in lines:
            self.protocol.dataReceived(line.encode() + b"\n")
        return self.read()

    def read(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return out.splitlines()


class LineAdapterOnFakeTests(SynchronousTestCase):
    """The line adapter against FakeBrokerService: what it asks of the gateway."""

    def setUp(self) -> None:
        self.service = FakeBrokerService()
        self.sub = LineClient(self.service, 1001)
        self.pub = LineClient(self.service, 1002)

    def test_interfaces(self) -> None:
        """The adapter is an IStreamAdapter, its protocol an IMessageSink, the fake an
        IBrokerService."""
        self.assertTrue(verifyObject(IStreamAdapter, line_adapter.lineAdapter))
        self.assertTrue(verifyObject(IMessageSink, self.sub.protocol))
        self.assertTrue(verifyObject(IBrokerService, self.service))

    def test_sub_opens_a_session_and_pub_reaches_it(self) -> None:
        """The first SUB opens the session, later SUBs reuse it; PUB is delivered to it."""
        self.assertEqual(self.sub.say("SUB a/#", "SUB b"), ["SUBACK 0", "SUBACK 0"])
        self.assertEqual(self.service.subscribed(self.sub.clientId), {"a/#": 0, "b": 0})
        self.assertEqual(self.pub.say("PUB a/b hello there"), ["OK 1"])
        self.assertEqual(self.sub.read(), ["MSG a/b hello there"])
        [published] = self.service.published
        self.assertEqual((published.message.topic, published.clientId),
                         ("a/b", self.pub.clientId))
        self.assertNotIn(self.pub.clientId, self.service.sessions)  # PUB opens none

    def test_refusals(self) -> None:
        """$SYS, wildcard topics and unknown verbs are answered with ERROR, and the
        connection goes on."""
        answers = self.pub.say("PUB $SYS/x 1", "PUB a/+ 1", "HELLO", "PUB a 1")
        self.assertEqual(len(answers), 4)
        self.assertTrue(answers[0].startswith("ERROR not authorized"), answers[0])
        self.assertTrue(answers[1].startswith("ERROR topic name holds a wildcard"), answers[1])
        self.assertTrue(answers[2].startswith("ERROR unknown command"), answers[2])
        self.assertEqual(answers[3], "OK 0")

    def test_gateway_failure_is_an_error_line(self) -> None:
        """A failed openSession becomes an ERROR line; the next SUB tries again."""
        self.service.fail("openSession", RuntimeError("store down"))
        self.assertEqual(self.sub.say("SUB a", "SUB a"), ["ERROR store down", "SUBACK 0"])

    def test_connection_lost_closes_the_session(self) -> None:
        """A connection that opened a session closes it when it goes; one that only
        published has nothing to close."""
        self.sub.say("SUB a")
        self.sub.protocol.connectionLost(None)
        self.pub.protocol.connectionLost(None)
        self.assertEqual(self.service.closed, [(self.sub.clientId, False)])

    def test_connection_lost_while_opening(self) -> None:
        """A connection lost while its session opens (a slow store) closes the session
        once it is open, after the SUB under way."""
        opening: Deferred[None] = Deferred()
        open_now = self.service.openSession
        self.service.openSession = (  # type: ignore[method-assign]
            lambda *args: opening.addCallback(lambda _: open_now(*args)))
        self.assertEqual(self.sub.say("SUB a"), [])
        self.sub.protocol.connectionLost(None)
        self.assertEqual(self.service.closed, [])
        opening.callback(None)
        self.assertEqual(self.service.subscribed(self.sub.clientId), {"a": 0})
        self.assertEqual(self.service.closed, [(self.sub.clientId, False)])


class LineAdapterOnGatewayTests(SynchronousTestCase):
    """The line adapter against a real Gateway: MQTT and line clients meet."""

    def gateway(self, settings: BrokerSettings | None = None) -> Gateway:
        broker, _ = make_broker(settings)
        return Gateway(broker)

    def test_line_and_mqtt_clients_meet(self) -> None:
        """An MQTT publish reaches a line subscriber; a line publish reaches an MQTT one."""
        gateway = self.gateway()
        line = LineClient(gateway, 1001)
        self.assertEqual(line.say("SUB from-mqtt/#"), ["SUBACK 0"])
        mqtt = FakeClient(gateway.broker)
        mqtt.connect("mqtt")
        mqtt.subscribe("from-line", qos=1)
        mqtt.publish("from-mqtt/x", b"hi", qos=1)
        self.assertEqual(line.read(), ["MSG from-mqtt/x hi"])
        self.assertEqual(line.say("PUB from-line hello"), ["OK 1"])
        [packet] = mqtt.received()
        self.assertIsInstance(packet, Publish)
        self.assertEqual((packet.topic, packet.payload), ("from-line", b"hello"))

    def test_same_refusal_as_mqtt(self) -> None:
        """With wildcards off, SUB gets the reason code an MQTT SUBSCRIBE gets."""
        gateway = self.gateway(BrokerSettings(wildcard_subscriptions=False))
        code = int(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
        self.assertEqual(LineClient(gateway, 1001).say("SUB a/#"), [f"SUBACK {code}"])
        mqtt = FakeClient(gateway.broker, version=5)
        mqtt.connect("mqtt")
        [ack] = mqtt.subscribe("a/#")
        self.assertIsInstance(ack, SubAck)
        self.assertEqual(ack.reason_codes, [code])

    def test_broker_ends_the_session(self) -> None:
        """closeSession (any adapter's, the HTTP bridge's DELETE /session) closes the
        line connection through sessionClosed."""
        gateway = self.gateway()
        line = LineClient(gateway, 1001)
        line.say("SUB a")
        self.assertTrue(gateway.closeSession(line.clientId))
        self.assertTrue(line.transport.disconnecting)
        self.assertIsNone(gateway.session(line.clientId))


class ForwardingRouterTests(SynchronousTestCase):
    """The wrapping router on a sans-IO broker with FakeClients."""

    def setUp(self) -> None:
        self.broker, _ = make_broker()
        self.forwarded: list[Message] = []
        self.router = forwarding_router.install(self.broker, self.forwarded.append)

    def test_installed_around_the_local_router(self) -> None:
        """It provides IRouter and wraps the LocalRouter whose index the broker's views show."""
        self.assertTrue(verifyObject(IRouter, self.router))
        self.assertIs(self.broker.router, self.router)
        self.assertIsInstance(self.router.local, LocalRouter)
        self.assertIs(self.broker.tree, self.router.local.tree)

    def test_local_messages_forwarded_peer_messages_not(self) -> None:
        """A client's publish is forwarded once and delivered; a peer's is delivered only."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        sub.subscribe("a/#")
        self.assertEqual(self.router.count(), 1)
        pub = FakeClient(self.broker)
        pub.connect("pub")
        pub.publish("a/1", b"local")
        self.assertEqual([m.payload for m in self.forwarded], [b"local"])
        self.assertEqual(self.broker.route(Message("a/2", b"remote"), "node-2"), 1)
        self.assertEqual([m.payload for m in self.forwarded], [b"local"])
        self.assertEqual((self.router.forwarded, self.router.from_peers), (1, 1))
        self.assertEqual([(p.topic, p.payload) for p in sub.received()],
                         [("a/1", b"local"), ("a/2", b"remote")])

    def test_sys_stays_local(self) -> None:
        """The node's own $SYS messages are not forwarded."""
        self.broker.route(Message("$SYS/broker/uptime", b"1", 0, True))
        self.assertEqual(self.forwarded, [])

    def test_shared_hand_over_goes_through(self) -> None:
        """hand_over (not in IRouter) reaches the local router: a share group member's
        unacknowledged message goes to another member when it leaves."""
        members = {}
        for name in ("m1", "m2"):
            members[name] = FakeClient(self.broker)
            members[name].connect(name)
            members[name].subscribe("$share/g/t", qos=1)
        pub = FakeClient(self.broker)
        pub.connect("pub")
        [ack] = pub.publish("t", b"x", qos=1)
        self.assertIsInstance(ack, PubAck)
        got = [name for name, client in members.items() if client.received()]
        self.assertEqual(len(got), 1)
        [other] = set(members) - set(got)
        members[got[0]].drop()
        [packet] = members[other].received()
        self.assertEqual((packet.topic, packet.payload), ("t", b"x"))


class PageShowsTheFilesTests(SynchronousTestCase):
    """The code docs/plugins.md shows is the code these tests run."""

    def test_blocks_are_pieces_of_the_files(self) -> None:
        """Each python block of docs/plugins.md whose first line names a docs/examples/
        file is, after that line, a verbatim piece of the file."""
        text = (ROOT / "docs" / "plugins.md").read_text()
        blocks = re.findall(r"^```python\n# (docs/examples/\w+\.py)[^\n]*\n(.*?)^```",
                            text, re.S | re.M)
        self.assertEqual(sorted({name for name, _ in blocks}),
                         ["docs/examples/forwarding_router.py", "docs/examples/line_adapter.py"])
        for name, body in blocks:
            self.assertIn(body, (ROOT / name).read_text(), f"docs/plugins.md shows {name}")
