"""The lean path of QoS 0 POSTs (``coap/lean.py``, ``adapters/_coaplean.py``): its plans
agree with the general decoding on any datagram, and over a real listener it keeps the
general path's answers (duplicates, refusals, slow authorizers) and RFC 7967
No-Response."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest
from zope.interface import implementer

from mqtt_twisted.coap import mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.lean import PlanCache, plan_of
from mqtt_twisted.interfaces import IAuthorizer

try:
    from tests.coapbroker import NO_LIBCOAP, CoapBrokerTestCase, request
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import NO_LIBCOAP, CoapBrokerTestCase, request  # type: ignore[no-redef]

OPEN = SimpleNamespace(maximum_qos=2, retain_available=True)


def post(*queries: str, payload: bytes = b"x", mtype: int = m.NON, mid: int = 7,
         token: bytes = b"tk", extra: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    msg = m.decode(request(m.POST, "/ps/a/b", *queries, payload=payload, mid=mid,
                           token=token, mtype=mtype))
    msg.options += list(extra)
    return m.encode(msg)


class PlanTests(unittest.SynchronousTestCase):
    def test_same_options_one_plan(self) -> None:
        cache = PlanCache()
        first = cache.lookup(post(payload=b"one", mid=1), OPEN, 1024)
        second = cache.lookup(post(payload=b"two\xff", mid=2, token=b"other"), OPEN, 1024)
        assert first is not None and second is not None
        self.assertIs(first[0], second[0])
        self.assertEqual((second[1], second[2]), (5, b"two\xff"))
        self.assertEqual((first[0].ps.topic, first[0].ps.qos), ("a/b", 0))

    def test_what_the_general_path_keeps(self) -> None:
        cache = PlanCache()
        for data in (post("qos=1"), post(extra=((opt.BLOCK1, b"\x08"),)),
                     request(m.POST, "/mqtt/connection", "clientid=c", mtype=m.NON),
                     request(m.GET, "/ps/a"), post("bogus=1"), post(extra=((9, b"?"),)),
                     post("token=abc", "clientid=c"), post(payload=b"x" * 65),
                     post(extra=((opt.CONTENT_FORMAT, b"\x00\xff"),)),
                     post(payload=b"") + b"\xff"):
            self.assertIsNone(cache.lookup(data, OPEN, 64), data)

    def test_settings_apply_per_request(self) -> None:
        cache = PlanCache()
        data = post("retain=true")
        self.assertIsNotNone(cache.lookup(data, OPEN, 1024))
        self.assertIsNone(cache.lookup(data, SimpleNamespace(maximum_qos=2,
                                                             retain_available=False), 1024))

    def test_no_response(self) -> None:
        self.assertFalse(mapping.no_response(None, m.CHANGED))
        self.assertTrue(mapping.no_response(b"\x02", m.CHANGED))
        self.assertFalse(mapping.no_response(b"\x02", m.FORBIDDEN))
        self.assertTrue(mapping.no_response(b"\x1a", m.INTERNAL_SERVER_ERROR))
        plan = plan_of(post(extra=((opt.NO_RESPONSE, b"\x1a"),))[6:-2])
        assert plan is not None
        self.assertTrue(plan.quiet)

    @settings(max_examples=300, deadline=None)
    @given(levels=st.lists(st.text(min_size=1, max_size=5).filter(
               lambda t: "/" not in t and "+" not in t and "#" not in t and "\x00" not in t),
               min_size=1, max_size=3),
           queries=st.lists(st.sampled_from(["qos=0", "retain=true", "expiry=5",
                                             "clientid=dev", "qos=", "retain=no"]),
                            max_size=3, unique=True),
           content=st.none() | st.integers(0, 70000), payload=st.binary(max_size=20),
           token=st.binary(max_size=8), mtype=st.sampled_from([m.CON, m.NON]))
    def test_agrees_with_the_general_decoding(self, levels: list[str], queries: list[str],
                                              content: int | None, payload: bytes,
                                              token: bytes, mtype: int) -> None:
        """Whenever a plan is used, it is what decoding and parsing the datagram gives."""
        msg = m.CoapMessage(mtype, m.POST, 9, token, [], payload)
        for part in ["ps", *levels]:
            msg.add(opt.URI_PATH, part)
        for q in queries:
            msg.add(opt.URI_QUERY, q)
        if content is not None:
            msg.add(opt.CONTENT_FORMAT, content)
        data = m.encode(msg)
        found = PlanCache().lookup(data, OPEN, 1024)
        if found is None:
            return
        plan, tkl, body = found
        decoded = m.decode(data)
        ps = mapping.parse_request(decoded, OPEN)
        self.assertEqual((plan.ps, tkl, body), (ps, len(token), decoded.payload))
        self.assertEqual(plan.properties,
                         mapping.publish_message(ps, decoded).properties or {})


@implementer(IAuthorizer)
class LateAuthorizer:
    """Answers a reactor turn later; refuses ``no/...``."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    def mayPublish(self, identity: Any, clientId: str, topic: str) -> Any:
        return deferLater(self.reactor, 0.01, lambda: not topic.startswith("no/"))

    def maySubscribe(self, identity: Any, clientId: str, topicFilter: str) -> bool:
        return True


@implementer(IAuthorizer)
class NowAuthorizer(LateAuthorizer):
    def mayPublish(self, identity: Any, clientId: str, topic: str) -> Any:
        return not topic.startswith("no/")


class LeanUDPTests(CoapBrokerTestCase):
    """NON and CON POSTs at QoS 0 over a real listener, to a paho subscriber."""

    authorizer = NowAuthorizer()

    @inlineCallbacks
    def test_duplicate_non_publishes_once(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("dup/#", 0))
        client = self.udp()
        data = request(m.POST, "/ps/dup/x", payload=b"once", mid=0x4243, mtype=m.NON)
        client.transport.write(data)
        first = yield self.next(client)
        client.transport.write(data)
        second = yield self.next(client)
        self.assertEqual(first, second)  # the same answer, id and all
        self.assertEqual((first.type, m.code_text(first.code), first.token),
                         (m.NON, "2.04", b"t1"))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("dup/x", b"once"))
        yield sub.no_message(0.3)

    @inlineCallbacks
    def test_con_is_piggybacked_and_refusal_answered(self) -> Any:
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/ok/x", payload=b"1", mid=11, token=b"ab"))
        answer = yield self.next(client)
        self.assertEqual((answer.type, m.code_text(answer.code), answer.mid, answer.token),
                         (m.ACK, "2.04", 11, b"ab"))
        client.transport.write(request(m.POST, "/ps/no/x", payload=b"1", mid=12))
        answer = yield self.next(client)
        self.assertEqual((answer.type, m.code_text(answer.code), answer.mid),
                         (m.ACK, "4.03", 12))

    @inlineCallbacks
    def test_no_response(self) -> Any:
        """NON with No-Response 2: published, unanswered; a refusal (4.03) still comes
        unless 8 is set too; a CON gets the empty ACK its retransmission needs."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("quiet/#", 0))
        client = self.udp()
        quiet = ((opt.NO_RESPONSE, b"\x02"),)
        client.transport.write(post(extra=quiet, mid=21))  # to a/b: nobody there
        client.transport.write(m.encode(m.CoapMessage(
            m.NON, m.POST, 22, b"q", [(opt.URI_PATH, b"ps"), (opt.URI_PATH, b"quiet"),
                                      (opt.NO_RESPONSE, b"\x02")], b"hush")))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("quiet", b"hush"))
        yield self.nothing(client)
        refused = m.CoapMessage(m.NON, m.POST, 23, b"r", [
            (opt.URI_PATH, b"ps"), (opt.URI_PATH, b"no"), (opt.URI_PATH, b"x"),
            (opt.NO_RESPONSE, b"\x02")], b"x")
        client.transport.write(m.encode(refused))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.03")
        refused.mid, refused.options[-1] = 24, (opt.NO_RESPONSE, b"\x0a")
        client.transport.write(m.encode(refused))
        yield self.nothing(client)
        con = m.CoapMessage(m.CON, m.POST, 25, b"c", [
            (opt.URI_PATH, b"ps"), (opt.URI_PATH, b"quiet"), (opt.NO_RESPONSE, b"\x1a")], b"y")
        client.transport.write(m.encode(con))
        answer = yield self.next(client)
        self.assertEqual((answer.type, answer.code, answer.mid, answer.token),
                         (m.ACK, m.EMPTY, 25, b""))


class LateAuthorizerTests(LeanUDPTests):
    """The same with an authorizer whose answers come later: the general path's
    callbacks take over and answer alike."""

    authorizer = LateAuthorizer()


class LibcoapNoResponseTests(CoapBrokerTestCase):
    """libcoap's client with No-Response 2 (``-O 258,0x02``), as docs/coap.md shows it."""

    skip = NO_LIBCOAP

    @inlineCallbacks
    def test_quiet_non_post_reaches_paho(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("sensors/#", 0))
        # (-B 1: libcoap waits that long for the answer it asked not to get.)
        _, err, code = yield self.coap_client("-B", "1", "-N", "-m", "post", "-O",
                                              "258,0x02", "-e", "21.5",
                                              self.url("/ps/sensors/t"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("sensors/t", b"21.5"))


class OpenBrokerLeanTests(CoapBrokerTestCase):
    """No authenticator and no authorizer: the lean path publishes through
    ``Gateway.publish_plain`` without asking anyone, and still answers what the
    general path answers for a topic over the limits, the broker's own, or retained."""

    def setUp(self) -> Any:
        d = super().setUp()

        def spy(_: Any) -> None:
            gateway = self.server.requests.service
            self.checked: list[str] = []
            self.runs: list[int] = []
            publish_plain = gateway.publish_plain

            def counted(topic: str, payloads: list[bytes], *args: Any) -> Any:
                self.checked.append(topic)
                self.runs.append(len(payloads))
                return publish_plain(topic, payloads, *args)

            gateway.publish_plain = counted

        return d.addCallback(spy)

    test_duplicate_non_publishes_once = LeanUDPTests.test_duplicate_non_publishes_once

    @inlineCallbacks
    def test_plain_publish_is_checked_once_then_at_once(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("a/#", 0))
        client = self.udp()
        for mid in (1, 2):  # the second from the plan the first made
            client.transport.write(post(mid=mid, payload=b"p%d" % mid))
            answer = yield self.next(client)
            self.assertEqual((answer.type, m.code_text(answer.code)), (m.NON, "2.04"))
            message = yield sub.next_message()
            self.assertEqual((message.topic, message.payload), ("a/b", b"p%d" % mid))
        self.assertEqual(self.checked, ["a/b", "a/b"])

    @inlineCallbacks
    def test_a_read_keeps_its_order(self) -> Any:
        """Datagrams read together: the plain ones in runs, written when the topic
        changes, another request (a QoS 1 POST, the general path) comes, or the read
        ends; the subscriber gets them all in the order they were sent."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("a/#", 1))
        client = self.udp()
        sent = []
        mid = 100

        def send(path: str, payload: bytes, *queries: str) -> None:
            nonlocal mid
            mid += 1
            mtype = m.CON if queries else m.NON
            client.transport.write(request(m.POST, path, *queries, payload=payload, mid=mid,
                                           mtype=mtype))
            sent.append((path[4:], payload))

        for i in range(5):
            send("/ps/a/b", b"p%d" % i)
        send("/ps/a/b", b"q", "qos=1")
        for i in range(5, 8):
            send("/ps/a/b", b"p%d" % i)
        send("/ps/a/c", b"c")
        send("/ps/a/b", b"p8")
        got = []
        for _ in sent:
            message = yield sub.next_message()
            got.append((message.topic, message.payload))
        self.assertEqual(got, sent)
        self.assertEqual(sum(self.runs), len(sent) - 1)
        self.assertGreater(max(self.runs), 1)  # (one read: recvmmsg took them together)

    @inlineCallbacks
    def test_a_datagram_longer_than_the_listener_reads(self) -> Any:
        """Not published cut short and answered 2.04: 4.13 with Size1, the payload that
        would have fit with these options (a CON's on its ACK, a NON's on a NON; the
        same answer again for a duplicate), and the subscriber gets nothing."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("a/#", 0))
        client = self.udp()
        big = request(m.POST, "/ps/a/big", payload=b"x" * 20000, mid=41, mtype=m.CON)
        limit = self.server.transport.maxPacketSize
        for _ in range(2):
            client.transport.write(big)
            answer = yield self.next(client)
            self.assertEqual((answer.type, m.code_text(answer.code), answer.mid),
                             (m.ACK, "4.13", 41))
            self.assertEqual(answer.uint(opt.SIZE1), limit - (big.index(b"\xff") + 1))
        client.transport.write(request(m.POST, "/ps/a/big", payload=b"y" * 9000, mid=42,
                                       mtype=m.NON))
        answer = yield self.next(client)
        self.assertEqual((answer.type, m.code_text(answer.code)), (m.NON, "4.13"))
        fits = request(m.POST, "/ps/a/big", payload=b"z" * 8000, mid=43, mtype=m.CON)
        client.transport.write(fits)
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.04")
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"z" * 8000)
        yield sub.no_message(0.3)
        self.assertEqual(self.checked, ["a/big"])
        self.assertEqual(self.broker.stats.datagrams_dropped, {"too_long": 3, "unsent": 0})
        from mqtt_twisted.core.metrics import broker_families

        family = {f.name: f for f in broker_families(self.broker, 0.0)}[
            "mqtt_datagrams_dropped"]
        self.assertEqual(dict(family.samples), {("too_long",): 3, ("unsent",): 0})

    @inlineCallbacks
    def test_limits_changed_live_apply_to_a_known_plan(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("a/#", 0))
        client = self.udp()
        client.transport.write(post(mid=1))
        yield self.next(client)
        yield sub.next_message()
        self.broker.settings.max_topic_levels = 1  # as a reload sets it
        client.transport.write(post(mid=2))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code)[0], "4")
        self.broker.settings.max_topic_levels = 2
        self.broker.settings.max_topic_length = 2
        client.transport.write(post(mid=3))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code)[0], "4")
        yield sub.no_message(0.3)
        self.assertEqual(self.checked, ["a/b"])

    @inlineCallbacks
    def test_broker_topics_refused(self) -> Any:
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/$SYS/x", payload=b"1", mid=5,
                                       mtype=m.NON))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.03")
        self.assertEqual(self.checked, [])

    @inlineCallbacks
    def test_retained_takes_the_general_path(self) -> Any:
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/kept/x", "retain=true", payload=b"r",
                                       mid=6, mtype=m.CON))
        answer = yield self.next(client)
        self.assertEqual((answer.type, m.code_text(answer.code)), (m.ACK, "2.04"))
        sub = yield self.paho("late")
        yield sub.subscribe(("kept/#", 0))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.retain),
                         ("kept/x", b"r", True))
        self.assertEqual(self.checked, [])
