"""The sans-IO CoAP layers above the codec: UDP reliability (mqtt_twisted.coap.exchange)
on a Clock, and the /ps/ request mapping (mqtt_twisted.coap.mapping)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.coap import exchange as ex
from mqtt_twisted.coap import mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.message import Message

PEER = ("127.0.0.1", 5683)


class RetransmitterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[tuple[bytes, object]] = []
        self.failed: list[int] = []

    def make(self, rand: float = 0.0) -> ex.Retransmitter:
        return ex.Retransmitter(self.clock, lambda d, p: self.sent.append((d, p)),
                                rand=lambda: rand)

    def test_back_off_then_give_up(self) -> None:
        """Sent at 0, resent at 2, 6, 14, 30 s (doubling), given up at 62 s."""
        r = self.make(0.0)
        r.send_con(PEER, 7, b"x", on_fail=lambda: self.failed.append(7))
        times = []
        for _ in range(70):
            before = len(self.sent)
            self.clock.advance(1)
            if len(self.sent) > before:
                times.append(self.clock.seconds())
        self.assertEqual(times, [2, 6, 14, 30])
        self.assertEqual(len(self.sent), 1 + ex.MAX_RETRANSMIT)
        self.assertEqual(self.failed, [7])
        self.assertEqual(len(r), 0)

    def test_random_factor_bounds_the_first_timeout(self) -> None:
        r = self.make(0.999)
        r.send_con(PEER, 1, b"x")
        self.clock.advance(2.99)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.sent), 2)

    def test_ack_stops_resending(self) -> None:
        acked = []
        r = self.make()
        r.send_con(PEER, 9, b"x", on_ack=lambda: acked.append(1),
                   on_fail=lambda: self.failed.append(9))
        self.assertTrue(r.acknowledged(PEER, 9))
        self.assertFalse(r.acknowledged(PEER, 9))
        self.assertFalse(r.acknowledged(("10.0.0.1", 1), 9))
        self.clock.advance(100)
        self.assertEqual((len(self.sent), acked, self.failed), (1, [1], []))

    def test_cancel_and_stop(self) -> None:
        r = self.make()
        r.send_con(PEER, 1, b"a")
        r.send_con(PEER, 2, b"b")
        self.assertTrue(r.cancel(PEER, 1))
        r.stop()
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DeduplicatorTests(SynchronousTestCase):
    def test_duplicate_gets_the_same_answer(self) -> None:
        clock = Clock()
        d = ex.Deduplicator(clock)
        self.assertIsNone(d.check(PEER, 1))
        self.assertEqual(d.check(PEER, 1), ex.IN_PROGRESS)
        d.answered(PEER, 1, b"response")
        self.assertEqual(d.check(PEER, 1), b"response")
        self.assertIsNone(d.check(("127.0.0.1", 5684), 1))  # another endpoint
        clock.advance(ex.EXCHANGE_LIFETIME + 1)
        self.assertIsNone(d.check(PEER, 1))  # forgotten after EXCHANGE_LIFETIME

    def test_bounded(self) -> None:
        d = ex.Deduplicator(Clock(), limit=3)
        for mid in range(5):
            d.check(PEER, mid)
        self.assertEqual(len(d), 3)
        self.assertIsNone(d.check(PEER, 0))  # the oldest went first

    def test_answered_keeps_its_place(self) -> None:
        """An answer (or a second remember) does not make a request newer: the oldest
        still goes first, by count and by time, and nothing is remembered twice."""
        clock = Clock()
        d = ex.Deduplicator(clock, lifetime=10, limit=3)
        for mid in range(3):
            d.check(PEER, mid)
            clock.advance(1)
        d.answered(PEER, 0, b"a0")
        d.remember((PEER, 1), clock.seconds(), b"a1")
        self.assertEqual(list(d.order), [(PEER, 0), (PEER, 1), (PEER, 2)])
        d.check(PEER, 3)  # over the limit: 0 goes, answered or not
        self.assertEqual(sorted(mid for _, mid in d.seen), [1, 2, 3])
        self.assertEqual(d.check(PEER, 1), b"a1")
        clock.advance(8)  # 1 was first seen 10 s ago, 2 at 9 s
        self.assertIsNone(d.check(PEER, 1))
        self.assertEqual(d.check(PEER, 2), ex.IN_PROGRESS)
        self.assertEqual(len(d.order), len(d.seen))

    def test_constants(self) -> None:
        self.assertEqual(ex.MAX_TRANSMIT_SPAN, 45)
        self.assertEqual(ex.EXCHANGE_LIFETIME, 247)

    def test_message_ids_wrap(self) -> None:
        ids = ex.MessageIds(0xFFFF)
        self.assertEqual([ids(), ids()], [0xFFFF, 0])


SETTINGS = SimpleNamespace(maximum_qos=2, retain_available=True)


def request(code: int, path: str, *queries: str, payload: bytes = b"",
            observe: int | None = None, mtype: int = m.CON) -> m.CoapMessage:
    msg = m.CoapMessage(mtype, code, 42, b"tk", [], payload)
    for segment in path.split("/"):
        msg.add(opt.URI_PATH, segment)
    for q in queries:
        msg.add(opt.URI_QUERY, q)
    if observe is not None:
        msg.add(opt.OBSERVE, observe)
    return msg


class MappingTests(SynchronousTestCase):
    def parse(self, msg: m.CoapMessage) -> mapping.PsRequest:
        mapping.check_options(msg)
        return mapping.parse_request(msg, SETTINGS)

    def refused(self, msg: m.CoapMessage, code: int) -> str:
        e = self.assertRaises(mapping.CoapError, self.parse, msg)
        self.assertEqual(m.code_text(e.code), m.code_text(code), e.text)
        return e.text

    def test_publish(self) -> None:
        ps = self.parse(request(m.POST, "ps/a/b", "qos=1", "retain=true", "expiry=60",
                                "clientid=dev1", "username=u", "password=p"))
        self.assertEqual((ps.action, ps.topic, ps.qos, ps.retain, ps.expiry, ps.client_id,
                          ps.username, ps.password),
                         (mapping.PUBLISH, "a/b", 1, True, 60, "dev1", "u", b"p"))
        self.assertEqual(self.parse(request(m.PUT, "ps/a")).action, mapping.PUBLISH)

    def test_get_forms(self) -> None:
        self.assertEqual(self.parse(request(m.GET, "ps/a/#")).action, mapping.READ)
        self.assertEqual(self.parse(request(m.GET, "ps/a/+", observe=0)).action,
                         mapping.OBSERVE)
        self.assertEqual(self.parse(request(m.GET, "ps/a", observe=1)).action, mapping.FORGET)
        self.assertEqual(self.parse(request(m.DELETE, "ps/a")).action, mapping.DELETE)

    def test_refusals(self) -> None:
        self.refused(request(m.POST, "ps/a/#"), m.BAD_REQUEST)  # wildcard in a topic name
        self.refused(request(m.GET, "ps/a/#/b"), m.BAD_REQUEST)
        self.refused(request(m.POST, "ps"), m.BAD_REQUEST)
        self.refused(request(m.POST, "other/a"), m.NOT_FOUND)
        self.refused(request(m.FETCH, "ps/a"),
                     m.METHOD_NOT_ALLOWED)
        self.assertIn("qos", self.refused(request(m.POST, "ps/a", "qos=3"), m.BAD_REQUEST))
        self.refused(request(m.POST, "ps/a", "retain=maybe"), m.BAD_REQUEST)
        self.refused(request(m.POST, "ps/a", "expiry=-1"), m.BAD_REQUEST)
        self.refused(request(m.POST, "ps/a", "qos=1", "qos=2"), m.BAD_REQUEST)
        self.refused(request(m.POST, "ps/a", "colour=red"), m.BAD_REQUEST)
        self.refused(request(m.POST, "ps/a", "clientid="), m.BAD_REQUEST)
        self.refused(request(m.GET, "ps/$share/g/a"), m.BAD_REQUEST)

    def test_bad_options(self) -> None:
        msg = request(m.POST, "ps/a")
        msg.add(9, b"")  # unknown, critical
        self.assertIn("option 9", self.refused(msg, m.BAD_OPTION))
        msg = request(m.POST, "ps/a")
        msg.add(opt.BLOCK1, b"\x0f")  # SZX 7 is reserved
        self.assertIn("Block1", self.refused(msg, m.BAD_OPTION))
        msg = request(m.POST, "ps/a")
        msg.add(10, b"")  # unknown, elective: ignored
        self.assertEqual(self.parse(msg).topic, "a")

    def test_qos_capped_and_retain_off(self) -> None:
        ps = mapping.parse_request(request(m.POST, "ps/a", "qos=2"),
                                   SimpleNamespace(maximum_qos=1, retain_available=True))
        self.assertEqual(ps.qos, 1)
        e = self.assertRaises(mapping.CoapError, mapping.parse_request,
                              request(m.POST, "ps/a", "retain=1"),
                              SimpleNamespace(maximum_qos=2, retain_available=False))
        self.assertEqual(e.code, m.BAD_REQUEST)

    def test_messages_and_content_format(self) -> None:
        msg = request(m.POST, "ps/a", "expiry=9", payload=b"{}")
        msg.add(opt.CONTENT_FORMAT, 50)
        message = mapping.publish_message(self.parse(msg), msg)
        self.assertEqual((message.topic, message.payload), ("a", b"{}"))
        self.assertEqual(message.properties, {PropertyId.MESSAGE_EXPIRY_INTERVAL: 9,
                                              PropertyId.CONTENT_TYPE: "application/json"})
        self.assertEqual(mapping.notification_options(message),
                         [(opt.CONTENT_FORMAT, b"\x32")])
        self.assertEqual(mapping.notification_options(Message("a", b"")), [])

    def test_replies(self) -> None:
        con = request(m.GET, "ps/a")
        self.assertEqual(mapping.reply(con, m.CONTENT, b"x"),
                         m.CoapMessage(m.ACK, m.CONTENT, 42, b"tk", [], b"x"))
        non = request(m.GET, "ps/a", mtype=m.NON)
        self.assertEqual(mapping.reply(non, m.NOT_FOUND, mid=7),
                         m.CoapMessage(m.NON, m.NOT_FOUND, 7, b"tk", [], b""))


class RateLimiterTests(SynchronousTestCase):
    def test_bucket(self) -> None:
        clock = Clock()
        limiter = ex.RateLimiter(clock, rate=10, burst=3)
        self.assertEqual([limiter.allow(PEER) for _ in range(4)], [True, True, True, False])
        self.assertTrue(limiter.allow(("127.0.0.1", 9)))  # another sender has its own
        clock.advance(0.1)
        self.assertEqual([limiter.allow(PEER) for _ in range(2)], [True, False])
        clock.advance(10)
        self.assertEqual(sum(limiter.allow(PEER) for _ in range(10)), 3)  # burst caps it

    def test_off_and_bounded(self) -> None:
        self.assertTrue(all(ex.RateLimiter(Clock(), 0).allow(PEER) for _ in range(1000)))
        limiter = ex.RateLimiter(Clock(), 1, limit=2)
        for port in range(5):
            limiter.allow(("h", port))
        self.assertEqual(len(limiter.buckets), 2)
