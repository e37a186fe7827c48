"""CoAP connection mode (EMQX's ``/mqtt/connection``): a password-file user connects
once with libcoap and publishes with the token; a topic the ACL refuses gets 4.03; an
unknown, deleted or expired token 4.01; ``connectionRequired=yes`` refuses requests
without one; the connection holds the session open, and its end closes it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.auth.acl import AclAuthorizer
from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.coap import message as m

try:
    from tests.coapbroker import NO_LIBCOAP, CoapBrokerTestCase, request
    from tests.test_coap_reliability import ALICE, _now
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import NO_LIBCOAP, CoapBrokerTestCase, request  # type: ignore[no-redef]
    from test_coap_reliability import ALICE, _now  # type: ignore[no-redef]

ALICE_Q = ("clientid=c1", "username=alice", "password=secret1")


class ConnectionBase(CoapBrokerTestCase):
    """alice in a password file, the ACL giving her alice/#; heartbeats of 0.3 s."""

    coap_keys = {"heartbeat": "0.3"}

    def setUp(self) -> Any:
        acl = self.mktemp()
        with open(acl, "w") as f:
            f.write("user alice\ntopic readwrite alice/#\n")
        self.authenticator = PasswordFileAuthenticator(
            parse_passwd(ALICE + "\n", "passwd"), run=lambda f, *a: _now(f, *a))
        self.authorizer = AclAuthorizer.from_file(acl)
        return super().setUp()

    @inlineCallbacks
    def ask(self, client: Any, data: bytes) -> Any:
        client.transport.write(data)
        answer = yield self.next(client)
        return m.code_text(answer.code), answer.payload

    @inlineCallbacks
    def connect(self, client: Any, mid: int = 1) -> Any:
        code, token = yield self.ask(client, request(m.POST, "/mqtt/connection", *ALICE_Q,
                                                     mid=mid))
        self.assertEqual(code, "2.01", token)
        return token.decode()


class ConnectionModeTests(ConnectionBase):
    @inlineCallbacks
    def test_token_publish_refusals_and_delete(self) -> Any:
        client = self.udp()
        bad = yield self.ask(client, request(m.POST, "/mqtt/connection", "clientid=c1",
                                             "username=alice", "password=wrong", mid=1))
        self.assertEqual(bad[0], "4.01")
        token = yield self.connect(client, mid=2)
        self.assertIn("c1", self.broker.sessions)  # connected: the session is open
        sub = yield self.paho("sub", username="alice", password="secret1")
        yield sub.subscribe(("alice/#", 1))
        tok = f"token={token}"
        cases = [
            (request(m.POST, "/ps/alice/t", "clientid=c1", tok, "qos=1", payload=b"hi",
                     mid=3), "2.04"),
            (request(m.POST, "/ps/bob/t", "clientid=c1", tok, payload=b"x", mid=4), "4.03"),
            (request(m.POST, "/ps/alice/t", "clientid=c1", "token=nope", mid=5), "4.01"),
            (request(m.POST, "/ps/alice/t", "clientid=c1", "token=\u00e9", mid=11), "4.01"),
            (request(m.POST, "/ps/alice/t", "clientid=c2", tok, mid=6), "4.01"),
            (request(m.PUT, "/mqtt/connection", "clientid=c1", tok, mid=7), "2.04"),
            (request(m.GET, "/mqtt/connection", "clientid=c1", tok, mid=8), "4.05"),
            (request(m.DELETE, "/mqtt/connection", "clientid=c1", tok, mid=9), "2.02"),
            (request(m.POST, "/ps/alice/t", "clientid=c1", tok, mid=10), "4.01"),
        ]
        for data, code in cases:
            answer = yield self.ask(client, data)
            self.assertEqual(answer[0], code, (m.decode(data), answer))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("alice/t", b"hi"))
        yield sub.no_message(0.2)
        yield self.wait_until(lambda: "c1" not in self.broker.sessions)

    @inlineCallbacks
    def test_expiry_and_heartbeat(self) -> Any:
        """Heartbeats keep the connection; two silent heartbeats (0.6 s) expire it, the
        session closes with it, and its observation ends."""
        client = self.udp()
        token = yield self.connect(client)
        tok = f"token={token}"
        code, _ = yield self.ask(client, request(m.GET, "/ps/alice/o", "clientid=c1", tok,
                                                 mid=2, observe=0))
        self.assertEqual(code, "2.05")
        for mid in (3, 4, 5):
            yield self.sleep(0.3)
            code, _ = yield self.ask(client, request(m.PUT, "/mqtt/connection",
                                                     "clientid=c1", tok, mid=mid))
            self.assertEqual(code, "2.04")
        self.assertIn("c1", self.broker.sessions)
        yield self.wait_until(lambda: "c1" not in self.broker.sessions, timeout=3)
        end = yield self.next(client)  # the observation ends with the session
        self.assertEqual(m.code_text(end.code), "5.03")
        code, _ = yield self.ask(client, request(m.PUT, "/mqtt/connection", "clientid=c1",
                                                 tok, mid=6))
        self.assertEqual(code, "4.01")


class ConnectionRequiredTests(CoapBrokerTestCase):
    coap_keys = {"connectionRequired": "yes"}

    @inlineCallbacks
    def test_requests_without_token_refused(self) -> Any:
        client = self.udp()
        client.transport.write(request(m.POST, "/ps/a", payload=b"x"))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.01")
        self.assertIn(b"/mqtt/connection", answer.payload)
        client.transport.write(request(m.POST, "/mqtt/connection", "clientid=k", mid=2))
        answer = yield self.next(client)
        token = answer.payload.decode()
        client.transport.write(request(m.POST, "/ps/a", "clientid=k", f"token={token}",
                                       payload=b"x", mid=3))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.04")


class LibcoapConnectionTests(ConnectionBase):
    skip = NO_LIBCOAP

    @inlineCallbacks
    def test_libcoap_connects_and_publishes(self) -> Any:
        sub = yield self.paho("sub", username="alice", password="secret1")
        yield sub.subscribe(("alice/#", 1))
        out, err, code = yield self.coap_client(
            "-m", "post", self.url("/mqtt/connection?clientid=lc&username=alice"
                                   "&password=secret1"))
        self.assertEqual(code, 0, err)
        token = out.decode().strip()
        self.assertEqual(len(token), 24, out)
        _, err, code = yield self.coap_client(
            "-m", "post", "-e", "via token",
            self.url(f"/ps/alice/lc?clientid=lc&token={token}&qos=1"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"via token")
        self.assertEqual(self.broker.sessions["lc"].identity, "alice")
