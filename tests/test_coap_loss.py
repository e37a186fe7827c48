"""CoAP over UDP through a lossy link: a UDP proxy between a real client (libcoap's
``coap-client-notls``) and the broker drops or duplicates chosen datagrams, and the
reliability layer makes up for it: a lost response is answered again when the client
resends its CON (and the message is published once), a lost ACK to a CON
notification makes the broker resend it (and the observer gets the message once), a
CON the network duplicates publishes once."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol

from mqtt_twisted.coap import message as m

try:
    from tests.coapbroker import NO_AIOCOAP, NO_LIBCOAP, CoapBrokerTestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import (  # type: ignore[no-redef]
        NO_AIOCOAP,
        NO_LIBCOAP,
        CoapBrokerTestCase,
    )

#: Which way a datagram goes through the proxy.
UP, DOWN = "client->broker", "broker->client"
Rule = Callable[[m.CoapMessage], bool]


class _Side(DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self.received = received

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received(data, addr)


class LossyProxy:
    """Forwards datagrams between one client and the broker, except that the first
    datagram matching a ``drop`` rule is dropped and the first matching a ``double``
    rule is sent twice; ``log`` records (direction, message, fate) for the asserts."""

    def __init__(self, reactor: Any, broker_port: int) -> None:
        self.broker = ("127.0.0.1", broker_port)
        self.client: Any = None
        self.rules: list[tuple[str, str, Rule]] = []
        self.log: list[tuple[str, m.CoapMessage, str]] = []
        self.front = _Side(self.from_client)
        self.back = _Side(self.from_broker)
        self.front_port = reactor.listenUDP(0, self.front, interface="127.0.0.1")
        self.back_port = reactor.listenUDP(0, self.back, interface="127.0.0.1")
        self.port = self.front_port.getHost().port

    def drop(self, direction: str, rule: Rule) -> None:
        self.rules.append(("drop", direction, rule))

    def double(self, direction: str, rule: Rule) -> None:
        self.rules.append(("double", direction, rule))

    def fate(self, direction: str, data: bytes) -> tuple[m.CoapMessage, str]:
        msg = m.decode(data)
        for rule in self.rules:
            action, way, matches = rule
            if way == direction and matches(msg):
                self.rules.remove(rule)
                return msg, action
        return msg, "sent"

    def from_client(self, data: bytes, addr: Any) -> None:
        self.client = addr
        msg, fate = self.fate(UP, data)
        self.log.append((UP, msg, fate))
        for _ in range({"drop": 0, "sent": 1, "double": 2}[fate]):
            self.back.transport.write(data, self.broker)

    def from_broker(self, data: bytes, addr: Any) -> None:
        msg, fate = self.fate(DOWN, data)
        self.log.append((DOWN, msg, fate))
        for _ in range({"drop": 0, "sent": 1, "double": 2}[fate]):
            self.front.transport.write(data, self.client)

    def seen(self, direction: str, rule: Rule) -> list[tuple[m.CoapMessage, str]]:
        return [(msg, fate) for way, msg, fate in self.log if way == direction and rule(msg)]

    def stop(self) -> Any:
        self.front_port.stopListening()
        return self.back_port.stopListening()


def is_response(msg: m.CoapMessage) -> bool:
    return msg.type == m.ACK and msg.code != m.EMPTY


def is_empty_ack(msg: m.CoapMessage) -> bool:
    return msg.type == m.ACK and msg.code == m.EMPTY


def is_post(msg: m.CoapMessage) -> bool:
    return msg.type == m.CON and msg.code == m.POST


def is_con_notification(msg: m.CoapMessage) -> bool:
    return msg.type == m.CON and msg.code == m.CONTENT


class LossyTestCase(CoapBrokerTestCase):
    """The broker, and a :class:`LossyProxy` in front of its CoAP listener."""

    def setUp(self) -> Any:
        d = super().setUp()

        def proxy(_: Any) -> None:
            self.proxy = LossyProxy(self.reactor, self.coap_port)
            self.addCleanup(self.proxy.stop)

        return d.addCallback(proxy)

    def via_proxy(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.proxy.port}{path}"


class LossyLinkTests(LossyTestCase):
    skip = NO_LIBCOAP

    @inlineCallbacks
    def test_lost_response_is_sent_again_and_published_once(self) -> Any:
        """The 2.04 to libcoap's CON POST is lost: libcoap resends the CON after its
        ACK_TIMEOUT, the broker recognises the message id and sends the same 2.04 again
        without publishing a second time."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("loss/#", 1))
        self.proxy.drop(DOWN, is_response)
        _, err, code = yield self.coap_client(
            "-m", "post", "-e", "once", self.via_proxy("/ps/loss/up?qos=1"))
        self.assertEqual(code, 0, err)
        posts = self.proxy.seen(UP, is_post)
        self.assertEqual(len(posts), 2, posts)  # the original and libcoap's resend
        self.assertEqual(posts[0][0].mid, posts[1][0].mid)
        answers = self.proxy.seen(DOWN, is_response)
        self.assertEqual([(m.code_text(a.code), fate) for a, fate in answers],
                         [("2.04", "drop"), ("2.04", "sent")])
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("loss/up", b"once"))
        yield sub.no_message(0.5)

    @inlineCallbacks
    def test_duplicated_con_publishes_once(self) -> Any:
        """The network delivers libcoap's CON POST twice: one publish, the same answer
        to both copies."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("loss/#", 1))
        self.proxy.double(UP, is_post)
        _, err, code = yield self.coap_client(
            "-m", "post", "-e", "twice?", self.via_proxy("/ps/loss/dup?qos=1"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"twice?")
        yield sub.no_message(0.5)
        yield self.wait_until(lambda: len(self.proxy.seen(DOWN, is_response)) == 2)
        first, second = (msg for msg, _ in self.proxy.seen(DOWN, is_response))
        self.assertEqual(m.encode(first), m.encode(second))


class LossyNotificationTests(LossyTestCase):
    """aiocoap as the observer: it answers a resent CON notification with its ACK again
    (RFC 7252 §4.5).  (libcoap 4.3.1's coap-client, tried first, did not acknowledge
    the duplicate in our tries, so the broker resends until MAX_RETRANSMIT and drops it.)"""

    skip = NO_AIOCOAP

    OBSERVER = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, GET

        async def main(uri):
            ctx = await Context.create_client_context()
            req = ctx.request(Message(code=GET, uri=uri, observe=0))
            await req.response
            print("REGISTERED", flush=True)
            async for note in req.observation:
                print("NOTE", note.payload.decode(), flush=True)
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_lost_ack_to_a_notification_is_resent(self) -> Any:
        """The observer's ACK to a CON notification (QoS 1) is lost: the broker resends
        the notification with the same message id, aiocoap acknowledges it again, and
        gets the message once; the observation stays."""
        self.server.retransmitter.ack_timeout = 0.3  # resend sooner than 2-3 s
        self.proxy.drop(UP, is_empty_ack)
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.OBSERVER)
        observer = self.spawn(sys.executable, [
            script, self.via_proxy("/ps/loss/n?clientid=o1&qos=1")])
        yield self.wait_until(lambda: b"REGISTERED" in observer.out, 20)
        pub = yield self.paho("pub")
        yield pub.publish("loss/n", b"resent", 1)
        yield self.wait_until(lambda: len(self.proxy.seen(UP, is_empty_ack)) >= 2)
        notes = self.proxy.seen(DOWN, is_con_notification)
        self.assertEqual(len(notes), 2, notes)
        self.assertEqual(notes[0][0].mid, notes[1][0].mid)
        self.assertEqual([msg.payload for msg, _ in notes], [b"resent", b"resent"])
        acks = self.proxy.seen(UP, is_empty_ack)
        self.assertEqual([(a.mid, fate) for a, fate in acks],
                         [(notes[0][0].mid, "drop"), (notes[0][0].mid, "sent")])
        yield self.wait_until(lambda: len(self.server.retransmitter) == 0)
        yield pub.publish("loss/n", b"next", 1)
        yield self.wait_until(lambda: b"NOTE next" in observer.out)
        self.assertEqual(observer.out.decode().splitlines(),
                         ["REGISTERED", "NOTE resent", "NOTE next"])
        self.assertEqual(self.server.requests.clients["o1"].observations["loss/n"].filter,
                         "loss/n")
