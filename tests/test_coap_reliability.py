"""CoAP over UDP: what the reliability layer and the gateway's checks do with real
sockets: separate responses when an answer is slow, CON notifications resent and an
observer that never acknowledges them dropped, and a password file with an ACL
refusing (4.01, 4.03) as it refuses MQTT clients."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.task import deferLater
from zope.interface import implementer

from mqtt_twisted.auth.acl import AclAuthorizer
from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import IAuthenticator
from mqtt_twisted.store.memory import MemoryStore

try:
    from tests.coapbroker import CoapBrokerTestCase, request
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import CoapBrokerTestCase, request  # type: ignore[no-redef]

#: mosquitto_passwd 2.0.11's $7$ line for alice, password "secret1" (tests/test_auth_passwd).
ALICE = ("alice:$7$101$4VfHc0LXprOQpLwK$IfTcalXlkSF73vSPqn/pLMxghkkxOk7NEa5oXJmf/qkbZJu73R"
         "EP0iWWq1w5RPtLGxw2a3K4NA+294pPRXZahw==")


@implementer(IAuthenticator)
class SlowAuthenticator:
    """Answers after 1.3 s: longer than the adapter waits before a separate response."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    def authenticate(self, credentials: Any) -> Any:
        return deferLater(self.reactor, 1.3, lambda: credentials.username)


class SeparateResponseTests(CoapBrokerTestCase):
    authenticator = SlowAuthenticator()

    @inlineCallbacks
    def test_slow_answer_is_separate(self) -> Any:
        """An empty ACK comes first (within 1 s), then the answer as a CON with the
        request's token, resent until acknowledged; a duplicate meanwhile gets the
        empty ACK again."""
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/slow", payload=b"x", mid=77, token=b"S"))
        ack = yield self.next(client, 1.2)
        self.assertEqual((ack.type, ack.code, ack.mid), (m.ACK, m.EMPTY, 77))
        client.transport.write(request(m.POST, "/ps/slow", payload=b"x", mid=77, token=b"S"))
        again = yield self.next(client, 0.5)
        self.assertEqual(again, ack)
        answer = yield self.next(client, 3)
        self.assertEqual((answer.type, m.code_text(answer.code), answer.token),
                         (m.CON, "2.04", b"S"))
        self.assertEqual(len(self.server.retransmitter), 1)
        client.transport.write(m.encode(m.CoapMessage(m.ACK, m.EMPTY, answer.mid)))
        yield self.wait_until(lambda: len(self.server.retransmitter) == 0)


class UnacknowledgedTests(CoapBrokerTestCase):
    @inlineCallbacks
    def test_observer_dropped_after_max_retransmit(self) -> Any:
        """A QoS 1 notification is a CON resent MAX_RETRANSMIT times (timeouts scaled
        down here); unanswered, the observation and its session end."""
        self.server.retransmitter.ack_timeout = 0.05
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/q", "clientid=mute", "qos=1", token=b"Q",
                                       observe=0))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.05")
        pub = yield self.paho("pub")
        yield pub.publish("q", b"hello", 1)
        copies = []
        for _ in range(5):
            copies.append((yield self.next(client, 3)))
        self.assertEqual({(c.type, c.mid, c.payload) for c in copies},
                         {(m.CON, copies[0].mid, b"hello")})
        yield self.wait_until(lambda: "mute" not in self.broker.sessions)
        yield self.nothing(client, 0.5)

    @inlineCallbacks
    def test_acknowledged_notification_is_not_resent(self) -> Any:
        self.server.retransmitter.ack_timeout = 0.1
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/q", "clientid=ok", "qos=2", token=b"Q",
                                       observe=0))
        yield self.next(client)
        pub = yield self.paho("pub")
        yield pub.publish("q", b"once", 2)
        note = yield self.next(client)
        client.transport.write(m.encode(m.CoapMessage(m.ACK, m.EMPTY, note.mid)))
        yield self.nothing(client, 0.6)
        self.assertIn("ok", self.broker.sessions)


class DailyConfirmableTests(CoapBrokerTestCase):
    @inlineCallbacks
    def test_qos0_observer_gets_a_con_once_a_day(self) -> Any:
        from mqtt_twisted.adapters._coapobserve import CON_EVERY

        client = self.udp()
        client.transport.write(request(m.GET, "/ps/d", "clientid=daily", token=b"D",
                                       observe=0))
        yield self.next(client)
        pub = yield self.paho("pub")
        yield pub.publish("d", b"1", 0)
        note = yield self.next(client)
        self.assertEqual(note.type, m.NON)
        self.server.requests.clients["daily"].observations["d"].last_con -= CON_EVERY
        yield pub.publish("d", b"2", 0)
        note = yield self.next(client)
        self.assertEqual((note.type, note.payload), (m.CON, b"2"))
        client.transport.write(m.encode(m.CoapMessage(m.ACK, m.EMPTY, note.mid)))
        yield pub.publish("d", b"3", 0)
        note = yield self.next(client)
        self.assertEqual(note.type, m.NON)


class PasswordFileTests(CoapBrokerTestCase):
    """alice (password file) may use alice/#; the ACL denies everything else."""

    def setUp(self) -> Any:
        acl = self.mktemp()
        with open(acl, "w") as f:
            f.write("user alice\ntopic readwrite alice/#\n")
        self.authenticator = PasswordFileAuthenticator(
            parse_passwd(ALICE + "\n", "passwd"), run=lambda f, *a: _now(f, *a))
        self.authorizer = AclAuthorizer.from_file(acl)
        return super().setUp()

    @inlineCallbacks
    def test_refusals(self) -> Any:
        client = self.udp()
        alice = ("username=alice", "password=secret1")
        cases = [
            (request(m.POST, "/ps/alice/t", *alice, payload=b"x", mid=1), "2.04"),
            (request(m.POST, "/ps/alice/t", "username=alice", "password=nope", mid=2), "4.01"),
            # no user name: refused as the MQTT CONNECT is (0x87), so 4.03, as HTTP's 403
            (request(m.POST, "/ps/alice/t", mid=3), "4.03"),
            (request(m.POST, "/ps/bob/t", *alice, payload=b"x", mid=4), "4.03"),
            (request(m.GET, "/ps/bob/t", *alice, mid=5), "4.03"),
            (request(m.GET, "/ps/bob/t", *alice, "clientid=a1", mid=6, observe=0), "4.03"),
            (request(m.GET, "/ps/alice/#", *alice, "clientid=a1", mid=7, observe=0), "2.05"),
        ]
        for data, code in cases:
            client.transport.write(data)
            answer = yield self.next(client)
            self.assertEqual(m.code_text(answer.code), code, (m.decode(data), answer.payload))
        self.assertEqual(list(self.broker.sessions["a1"].subscriptions), ["alice/#"])
        self.assertEqual(self.broker.sessions["a1"].identity, "alice")


def _now(f: Any, *args: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)



class RateLimitTests(CoapBrokerTestCase):
    coap_keys = {"maxRequestRate": "3"}

    @inlineCallbacks
    def test_flood_is_answered_429(self) -> Any:
        """Past maxRequestRate an address's CONs get 4.29 with Max-Age (not served), as
        many a second as the rate, then nothing; its NONs nothing; a paho subscriber
        sees only the requests served; a refused CON resent later is served."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("flood", 0))
        client = self.udp()
        for mid in range(9):
            client.transport.write(request(m.POST, "/ps/flood", payload=b"%d" % mid, mid=mid,
                                           token=b"%d" % mid))
        codes = []
        for _ in range(6):
            answer = yield self.next(client)
            codes.append((answer.mid, answer.token, m.code_text(answer.code),
                          answer.uint(opt.MAX_AGE)))
        self.assertEqual(sorted(codes), [
            (0, b"0", "2.04", None), (1, b"1", "2.04", None), (2, b"2", "2.04", None),
            (3, b"3", "4.29", 1), (4, b"4", "4.29", 1), (5, b"5", "4.29", 1)])
        client.transport.write(request(m.POST, "/ps/flood", mid=9, mtype=m.NON))
        yield self.nothing(client)  # the three past the refusals, and the NON: nothing
        got = yield sub.collect(3)
        self.assertEqual([g.payload for g in got], [b"0", b"1", b"2"])
        yield sub.no_message(0.3)
        yield self.sleep(0.7)  # the bucket fills again
        client.transport.write(request(m.POST, "/ps/flood", payload=b"3", mid=3, token=b"3"))
        answer = yield self.next(client)
        self.assertEqual((answer.mid, m.code_text(answer.code)), (3, "2.04"))
        got = yield sub.next_message()
        self.assertEqual(got.payload, b"3")

    def test_reads_are_bounded_per_turn(self) -> None:
        """The listener reads at most DATAGRAM_BYTES_PER_TURN per reactor turn."""
        from mqtt_twisted.adapters.kit import DATAGRAM_BYTES_PER_TURN

        self.assertEqual(self.coap_listener.port.maxThroughput, DATAGRAM_BYTES_PER_TURN)


@implementer(IAuthenticator)
class NamesAreIdentities:
    """Any user whose password is its own name."""

    def authenticate(self, credentials: Any) -> Any:
        from twisted.internet.defer import fail, succeed

        from mqtt_twisted.errors import AuthenticationError

        if credentials.username and credentials.password == credentials.username.encode():
            return succeed(credentials.username)
        return fail(AuthenticationError("bad user name or password"))


class OwnerTests(CoapBrokerTestCase):
    authenticator = NamesAreIdentities()

    @inlineCallbacks
    def test_only_the_owner_ends_observations(self) -> Any:
        client = self.udp()
        alice = ("clientid=a1", "username=alice", "password=alice")
        bob = ("clientid=a1", "username=bob", "password=bob")
        steps = [(request(m.GET, "/ps/x", *alice, mid=1, observe=0), "2.05"),
                 (request(m.DELETE, "/ps/x", *bob, mid=2), "4.03"),
                 (request(m.GET, "/ps/x", *bob, mid=3, observe=1), "4.03"),
                 (request(m.DELETE, "/ps/x", *alice, mid=4), "2.02")]
        for data, code in steps:
            client.transport.write(data)
            answer = yield self.next(client)
            self.assertEqual(m.code_text(answer.code), code, answer.payload)


class TakeoverTests(CoapBrokerTestCase):
    @inlineCallbacks
    def test_observer_told_when_its_session_is_taken_over(self) -> Any:
        """An MQTT client connecting with the observer's client id takes the session
        over; the observer gets a 5.03 on its token, without Observe."""
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/t", "clientid=shared", token=b"T",
                                       observe=0))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.05")
        yield self.paho("shared")
        end = yield self.next(client)
        self.assertEqual((m.code_text(end.code), end.token, end.option(opt.OBSERVE)),
                         ("5.03", b"T", None))
        self.assertEqual(self.server.requests.clients, {})


class _HeldStore(MemoryStore):
    """Retained writes wait for the test: ``pending`` fires them; ``failing`` fails them."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.pending: list[Deferred[None]] = []
        self.failing = False

    def setRetained(self, message: Any) -> Any:
        if self.failing:
            return fail(StorageError("the store is down"))
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: MemoryStore.setRetained(self, message))


class StoredFirstTests(CoapBrokerTestCase):
    def make_store(self, reactor: Any) -> Any:
        return _HeldStore(reactor)

    @inlineCallbacks
    def test_qos1_answered_once_stored(self) -> Any:
        """A retained QoS 1 POST is answered 2.04 only once the store wrote the message
        (a QoS 0 one at once); a store that fails it gets 5.03 with a diagnostic."""
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/kept", "qos=1", "retain=true",
                                       payload=b"v", mid=1))
        yield self.wait_until(lambda: len(self.store.pending) == 1)
        yield self.nothing(client, 0.3)
        self.store.pending.pop().callback(None)
        answer = yield self.next(client)
        self.assertEqual((answer.mid, m.code_text(answer.code)), (1, "2.04"))
        client.transport.write(request(m.POST, "/ps/kept", "retain=true", payload=b"w",
                                       mid=2))
        answer = yield self.next(client)  # QoS 0: at once, the write still waiting
        self.assertEqual((answer.mid, m.code_text(answer.code)), (2, "2.04"))
        self.assertEqual(len(self.store.pending), 1)
        self.store.pending.pop().callback(None)
        self.store.failing = True
        client.transport.write(request(m.POST, "/ps/kept", "qos=1", "retain=true",
                                       payload=b"x", mid=3))
        answer = yield self.next(client)
        self.assertEqual((answer.mid, m.code_text(answer.code)), (3, "5.03"))
        self.assertIn(b"store", answer.payload)
