"""End-to-end MQTT 5.0: enhanced authentication with SCRAM-SHA-256, and ``$SYS`` topics
(issue 4).

paho does not drive AUTH exchanges, so the SCRAM client here is a raw Twisted
client over a real TCP socket (our codec for the packets, ``scramp.ScramClient``
for RFC 7677); paho clients check that the authenticated client's messages
flow.  ``start_broker`` does not run the ``$SYS`` loop (``BrokerService`` starts
a ``LoopingCall`` of ``SysTopics(broker).tick`` in ``startService``), so the
tests call ``tick`` themselves.
"""

from __future__ import annotations

from scramp import ScramClient, ScramException
from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.auth.scram import METHOD, ScramAuthenticator
from mqtt_twisted.codec import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.systopics import SysTopics, resident_memory

try:
    from tests.pahov5 import V5TestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahov5 import V5TestCase  # type: ignore[no-redef]

USERS = {"alice": "secret", "bob": "hunter2"}
SCRAM = ScramAuthenticator(USERS, iterations=4096)


def auth_packet(code: int, data: bytes, method: str = METHOD) -> Auth:
    return Auth(code, {P.AUTHENTICATION_METHOD: method, P.AUTHENTICATION_DATA: data})


class ScramTests(V5TestCase):
    """SCRAM-SHA-256 through CONNECT/AUTH/CONNACK and re-authentication [MQTT-4.12]."""

    authenticator = SCRAM
    authorizer = SCRAM

    @inlineCallbacks
    def scram_connect(self, user: str, password: str, client_id: str) -> object:
        """Run the exchange on a raw client; return (client, scram client, final packet)."""
        raw = yield self.raw5()
        scram = ScramClient([METHOD], user, password)
        raw.send(Connect(client_id, 5, True, 0, properties={
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: scram.get_client_first().encode()}))
        challenge = yield raw.expect(Auth)
        self.assertEqual(challenge.reason_code, RC.CONTINUE_AUTHENTICATION)
        self.assertEqual(challenge.properties[P.AUTHENTICATION_METHOD], METHOD)  # [MQTT-4.12.0-5]
        scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(auth_packet(RC.CONTINUE_AUTHENTICATION, scram.get_client_final().encode()))
        final = yield raw.next_packet()
        return raw, scram, final

    @inlineCallbacks
    def test_scram_connect_and_server_signature(self):
        """SCRAM over CONNECT/AUTH/CONNACK succeeds; the client verifies the server signature."""
        watcher = yield self.paho5("scram-watch", username="bob", password="hunter2")
        yield watcher.subscribe(("scram/#", 1))
        raw, scram, connack = yield self.scram_connect("alice", "secret", "scram-alice")
        self.assertIsInstance(connack, ConnAck)
        self.assertEqual(connack.reason_code, 0)
        self.assertEqual(connack.properties[P.AUTHENTICATION_METHOD], METHOD)
        scram.set_server_final(connack.properties[P.AUTHENTICATION_DATA].decode())  # verifies
        self.assertEqual(self.session("scram-alice").identity, "alice")
        raw.send(Publish("scram/t", b"authenticated", 1, False, False, 1))
        ack = yield raw.expect(PubAck)
        self.assertEqual(ack.reason_code, 0)
        message = yield watcher.next_message()
        self.assertEqual(message.payload, b"authenticated")

    @inlineCallbacks
    def test_forged_server_signature_detected(self):
        """One exchange's server signature does not verify in another: the server proves itself."""
        _, scram_a, _ = yield self.scram_connect("alice", "secret", "sig-a")
        _, scram_b, connack_b = yield self.scram_connect("alice", "secret", "sig-b")
        server_final_b = connack_b.properties[P.AUTHENTICATION_DATA].decode()
        with self.assertRaises(ScramException):
            scram_a.set_server_final(server_final_b)
        scram_b.set_server_final(server_final_b)

    @inlineCallbacks
    def test_reauthentication(self):
        """AUTH 0x19 re-authenticates a connected client, ending in AUTH 0x00 [MQTT-4.12.1-1]."""
        raw, _, connack = yield self.scram_connect("alice", "secret", "re-alice")
        self.assertEqual(connack.reason_code, 0)
        scram = ScramClient([METHOD], "alice", "secret")
        raw.send(auth_packet(RC.RE_AUTHENTICATE, scram.get_client_first().encode()))
        challenge = yield raw.expect(Auth)
        self.assertEqual(challenge.reason_code, RC.CONTINUE_AUTHENTICATION)
        scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(auth_packet(RC.CONTINUE_AUTHENTICATION, scram.get_client_final().encode()))
        done = yield raw.expect(Auth)
        self.assertEqual(done.reason_code, RC.SUCCESS)
        self.assertEqual(done.properties[P.AUTHENTICATION_METHOD], METHOD)
        scram.set_server_final(done.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(PingReq())
        yield raw.expect(PingResp)

    @inlineCallbacks
    def test_failed_reauthentication_disconnects(self):
        """A failed re-authentication ends with DISCONNECT 0x87 [MQTT-4.12.1-2]."""
        raw, _, connack = yield self.scram_connect("alice", "secret", "re-bad")
        self.assertEqual(connack.reason_code, 0)
        scram = ScramClient([METHOD], "alice", "not the password")
        raw.send(auth_packet(RC.RE_AUTHENTICATE, scram.get_client_first().encode()))
        challenge = yield raw.expect(Auth)
        scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(auth_packet(RC.CONTINUE_AUTHENTICATION, scram.get_client_final().encode()))
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.NOT_AUTHORIZED)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_bad_password_0x86(self):
        """A wrong SCRAM proof gets CONNACK 0x86 and the close [MQTT-4.12.0-4]."""
        raw, _, connack = yield self.scram_connect("alice", "guess", "bad-pw")
        self.assertIsInstance(connack, ConnAck)
        self.assertEqual(connack.reason_code, RC.BAD_USER_NAME_OR_PASSWORD)
        yield raw.wait_closed()
        self.assertNotIn("bad-pw", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_unknown_user_refused(self):
        """An unknown user is refused with CONNACK 0x86 at the first step."""
        raw = yield self.raw5()
        scram = ScramClient([METHOD], "mallory", "x")
        raw.send(Connect("mallory", 5, True, 0, properties={
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: scram.get_client_first().encode()}))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, RC.BAD_USER_NAME_OR_PASSWORD)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_unknown_method_0x8c(self):
        """An unknown authentication method gets CONNACK 0x8C and the close [MQTT-4.12.0-1]."""
        raw = yield self.raw5()
        raw.send(Connect("gss", 5, True, 0, properties={P.AUTHENTICATION_METHOD: "GSSAPI"}))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, RC.BAD_AUTHENTICATION_METHOD)
        yield raw.wait_closed()
        client = yield self.paho5("gss-paho", connect=False,
                                  connect_properties={"AuthenticationMethod": "GSSAPI"})
        result = yield client.connect()
        self.assertEqual(result.rc, RC.BAD_AUTHENTICATION_METHOD)

    @inlineCallbacks
    def test_plain_password_login(self):
        """SCRAM users may also log in with a plain password; a wrong one gets 0x86."""
        good = yield self.paho5("plain-ok", username="alice", password="secret")
        self.assertEqual(good.connack.rc, 0)
        v3 = yield self.paho("plain-v3", username="bob", password="hunter2")
        self.assertFalse(v3.is_disconnected)
        bad = yield self.paho5("plain-bad", connect=False, username="alice", password="nope")
        result = yield bad.connect()
        self.assertEqual(result.rc, RC.BAD_USER_NAME_OR_PASSWORD)


class SysTopicTests(V5TestCase):
    """``$SYS/broker/...``: published retained, never matched by wildcards at the start."""

    NAMES = ("version", "uptime", "clients/connected", "clients/disconnected",
             "clients/total", "clients/maximum", "messages/received", "messages/sent",
             "bytes/received", "bytes/sent", "subscriptions/count",
             "retained messages/count", "load/messages/received/1min",
             "load/messages/sent/5min", "load/bytes/received/15min",
             "load/connections/1min")

    @inlineCallbacks
    def test_sys_subscriber_gets_values_hash_does_not(self):
        """$SYS values reach $SYS/# subscribers, never # or +/broker/# ones [MQTT-4.7.2-1]."""
        everything = yield self.paho5("sys-all")
        yield everything.subscribe(("#", 0), ("+/broker/#", 0))
        sys5 = yield self.paho5("sys-v5")
        yield sys5.subscribe(("$SYS/#", 0), ("end", 0))
        sys3 = yield self.paho("sys-v3")
        yield sys3.subscribe(("$SYS/broker/#", 0), ("end", 0))
        SysTopics(self.broker).tick()
        yield everything.publish("end", b"", 1)
        got = yield sys5.collect_until("end")
        values = {m.topic[len("$SYS/broker/"):]: m.payload for m in got}
        for name in self.NAMES:
            self.assertIn(name, values)
        if resident_memory() is not None:  # Linux
            self.assertGreater(int(values["heap/current"]), 0)
        self.assertTrue(values["version"].startswith(b"mqtt-twisted version "))
        self.assertEqual(values["clients/connected"], b"3")
        self.assertEqual(values["subscriptions/count"], b"6")
        self.assertTrue(values["uptime"].endswith(b" seconds"))
        got3 = yield sys3.collect_until("end")
        self.assertEqual({m.topic for m in got3}, {m.topic for m in got})
        self.assertEqual((yield everything.collect_until("end")), [])

    @inlineCallbacks
    def test_sys_values_retained_for_later_subscribers(self):
        """The values are retained: a later subscriber gets them at once."""
        SysTopics(self.broker).tick()
        late = yield self.paho5("sys-late")
        yield late.subscribe(("$SYS/broker/version", 0), ("$SYS/broker/clients/+", 0))
        got = yield late.collect(7)  # version and six clients/... values
        self.assertTrue(all(m.retain for m in got))
        topics = {m.topic for m in got}
        self.assertIn("$SYS/broker/version", topics)
        self.assertIn("$SYS/broker/clients/connected", topics)

    @inlineCallbacks
    def test_changed_values_republished(self):
        """A later tick republishes what changed, e.g. the number of connected clients."""
        topics = SysTopics(self.broker)
        watcher = yield self.paho5("sys-watch")
        yield watcher.subscribe(("$SYS/broker/clients/connected", 0))
        topics.tick()
        first = yield watcher.next_message()
        self.assertEqual(first.payload, b"1")
        yield self.paho5("sys-second")
        topics.tick()
        second = yield watcher.next_message()
        self.assertEqual(second.payload, b"2")
