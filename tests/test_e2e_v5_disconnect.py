"""End-to-end MQTT 5.0: DISCONNECT reason codes both ways, the will delay interval and will
properties, and server redirection (issue 4, "DISCONNECT and AUTH").

paho-mqtt 2.x MQTTv5 clients against a real broker on 127.0.0.1; raw clients
(our codec) where the test must break a rule.  The timer tests run on the real
clock with intervals of about a second.
"""

from __future__ import annotations

from twisted.internet.defer import fail, inlineCallbacks, succeed

from mqtt_twisted.codec import Connect, Disconnect, encode
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.errors import AuthenticationError, ConnectError
from mqtt_twisted.testing import start_broker, stop_broker

try:
    from tests.pahov5 import PahoClient, V5TestCase
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahov5 import PahoClient, V5TestCase  # type: ignore[no-redef]

#: A PUBLISH whose fixed header claims QoS 3 (flags 0b0110): malformed [MQTT-3.3.1-4].
QOS3_PUBLISH = bytes((0x36, 8)) + b"\x00\x03bad" + b"\x00\x01" + b"\x00"


class ClientDisconnectTests(V5TestCase):
    """DISCONNECT from the client: 0x00 drops the will, 0x04 sends it."""

    @inlineCallbacks
    def watcher(self):
        client = yield self.paho5("dc-watch")
        yield client.subscribe(("will/#", 1), ("end", 1))
        return client

    @inlineCallbacks
    def test_normal_disconnect_discards_will(self):
        """DISCONNECT 0x00 discards the will [MQTT-3.14.4-3]."""
        watcher = yield self.watcher()
        client = yield self.paho5("dc-0", will=("will/dc-0", b"never", 1, False))
        yield client.disconnect(0x00)
        yield self.wait_until(lambda: "dc-0" not in inspection.session_ids(self.broker))
        yield watcher.publish("end", b"", 1)
        self.assertEqual((yield watcher.collect_until("end")), [])

    @inlineCallbacks
    def test_disconnect_with_will_message_0x04(self):
        """DISCONNECT 0x04 (disconnect with will message) publishes the will."""
        watcher = yield self.watcher()
        client = yield self.paho5("dc-4", will=("will/dc-4", b"as asked", 1, False))
        yield client.disconnect(0x04)
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload), ("will/dc-4", b"as asked"))

    @inlineCallbacks
    def test_disconnect_with_error_code_sends_will(self):
        """After DISCONNECT 0x80 (not 0x00) the will is still published [MQTT-3.1.2-8]."""
        watcher = yield self.watcher()
        client = yield self.paho5("dc-80", will=("will/dc-80", b"failed", 1, False))
        yield client.disconnect(0x80)
        yield self.wait_until(lambda: "dc-80" not in inspection.session_ids(self.broker))
        yield watcher.publish("end", b"", 1)
        got = yield watcher.collect_until("end")
        self.assertEqual([(m.topic, m.payload) for m in got], [("will/dc-80", b"failed")])


class ServerDisconnectTests(V5TestCase):
    """DISCONNECT from the broker, with the reason, before it closes the connection."""

    @inlineCallbacks
    def test_session_taken_over_0x8e(self):
        """A takeover sends the old connection DISCONNECT 0x8E and closes it [MQTT-3.1.4-3]."""
        first = yield self.paho5("to")
        second = yield self.paho5("to")
        gone = yield first.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.SESSION_TAKEN_OVER, True))
        yield second.subscribe(("to/t", 1))
        yield second.publish("to/t", b"mine now", 1)
        message = yield second.next_message()
        self.assertEqual(message.payload, b"mine now")

    @inlineCallbacks
    def test_keep_alive_timeout_0x8d(self):
        """A client silent for 1.5 x its keep alive gets DISCONNECT 0x8D [MQTT-3.1.2-22]."""
        raw = yield self.raw5("ka-silent", keep_alive=1)
        start = self.reactor.seconds()
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.KEEP_ALIVE_TIMEOUT)
        self.assertGreaterEqual(self.reactor.seconds() - start, 1.4)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_server_shutting_down_0x8b(self):
        """Stopping the broker sends v5 clients DISCONNECT 0x8B; 3.1.1 clients are closed."""
        service, port = yield start_broker(self.reactor)
        stopped = []
        self.addCleanup(lambda: None if stopped else stop_broker(service))
        v5 = yield self.paho5("down-v5", port=port)
        v3 = PahoClient(self.reactor, port, "down-v3")
        self.addCleanup(v3.stop)
        yield v3.connect()
        yield stop_broker(service)
        stopped.append(True)
        gone = yield v5.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.SERVER_SHUTTING_DOWN, True))
        yield v3.disconnected

    @inlineCallbacks
    def test_malformed_packet_0x81(self):
        """A malformed packet (a PUBLISH with QoS 3) gets DISCONNECT 0x81 and the close."""
        raw = yield self.raw5("malformed")
        raw.send_bytes(QOS3_PUBLISH)
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.MALFORMED_PACKET)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_protocol_error_0x82(self):
        """A second CONNECT is a protocol error: DISCONNECT 0x82 [MQTT-3.1.0-2]."""
        raw = yield self.raw5("twice")
        raw.send_bytes(encode(Connect("twice", 5, True, 0), 5))
        answer = yield raw.expect(Disconnect)
        self.assertEqual(answer.reason_code, RC.PROTOCOL_ERROR)
        yield raw.wait_closed()

    @inlineCallbacks
    def test_administrative_action_0x98(self):
        """service.closeSession disconnects a client with DISCONNECT 0x98."""
        client = yield self.paho5("admin", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 60})
        self.assertTrue(self.service.gateway.closeSession("admin"))
        gone = yield client.disconnected
        self.assertEqual((gone.rc, gone.from_server), (RC.ADMINISTRATIVE_ACTION, True))
        yield self.wait_until(self.offline("admin"))  # the session itself stays
        self.assertTrue(self.service.gateway.closeSession("admin", remove=True))
        self.assertNotIn("admin", inspection.session_ids(self.broker))
        self.assertFalse(self.service.gateway.closeSession("nobody"))


class WillDelayTests(V5TestCase):
    """Will delay interval and will properties [MQTT-3.1.3-9]."""

    WILL_PROPS = {
        "ContentType": "text/plain", "PayloadFormatIndicator": 1,
        "ResponseTopic": "wd/reply", "CorrelationData": b"\x01\x02",
        "UserProperty": [("z", "1"), ("a", "2"), ("z", "3")], "MessageExpiryInterval": 60,
    }

    @inlineCallbacks
    def watcher(self):
        client = yield self.paho5("wd-watch")
        yield client.subscribe(("wd/#", 1))
        return client

    @inlineCallbacks
    def test_will_delay_cancelled_by_reconnect(self):
        """A reconnect within the will delay cancels the will [MQTT-3.1.3-9]."""
        watcher = yield self.watcher()
        sei = {"SessionExpiryInterval": 10}
        client = yield self.paho5("wd-back", clean_start=False, connect_properties=sei,
                                  will=("wd/back", b"gone", 1, False,
                                        {"WillDelayInterval": 1}))
        yield client.kill()
        yield self.wait_until(self.offline("wd-back"))
        again = yield self.paho5("wd-back", clean_start=False, connect_properties=sei)
        self.assertTrue(again.connack.session_present)
        yield watcher.no_message(1.5)  # past the delay
        self.assertEqual(self.broker.stats.wills_published, 0)

    @inlineCallbacks
    def test_will_sent_after_delay_with_properties(self):
        """A delayed will goes out after its delay with its properties, user properties in order."""
        watcher = yield self.watcher()
        will_props = dict(self.WILL_PROPS, WillDelayInterval=1)
        client = yield self.paho5("wd-late", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 10},
                                  will=("wd/late", b"gone", 1, False, will_props))
        yield client.kill()
        yield self.wait_until(self.offline("wd-late"))
        start = self.reactor.seconds()
        message = yield watcher.next_message()
        self.assertGreaterEqual(self.reactor.seconds() - start, 0.8)
        self.assertEqual((message.topic, message.payload, message.qos),
                         ("wd/late", b"gone", 1))
        for name, value in self.WILL_PROPS.items():
            if name == "MessageExpiryInterval":
                self.assertTrue(59 <= message.prop(name) <= 60, message.prop(name))
            elif name == "UserProperty":
                self.assertEqual(message.user_properties, value)
            else:
                self.assertEqual(message.prop(name), value, name)
        self.assertIsNone(message.prop("WillDelayInterval"))

    @inlineCallbacks
    def test_will_sent_at_session_end_before_delay(self):
        """A session ending before the will delay publishes the will then [MQTT-3.1.2-8]."""
        watcher = yield self.watcher()
        client = yield self.paho5("wd-end", clean_start=False,
                                  connect_properties={"SessionExpiryInterval": 1},
                                  will=("wd/end", b"ended", 1, False, {"WillDelayInterval": 30}))
        yield client.kill()
        yield self.wait_until(self.offline("wd-end"))
        start = self.reactor.seconds()
        message = yield watcher.next_message()
        self.assertGreaterEqual(self.reactor.seconds() - start, 0.8)
        self.assertEqual(message.payload, b"ended")
        self.assertNotIn("wd-end", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_will_delay_with_no_session_is_immediate(self):
        """With session expiry 0 a delayed will goes out as the connection closes."""
        watcher = yield self.watcher()
        client = yield self.paho5("wd-now", will=("wd/now", b"now", 1, False,
                                                  {"WillDelayInterval": 30}))
        yield client.kill()
        message = yield watcher.next_message(timeout=1.0)
        self.assertEqual(message.payload, b"now")

    @inlineCallbacks
    def test_retained_will(self):
        """A will with retain set becomes the retained message of its topic."""
        client = yield self.paho5("wd-ret", will=("wd/retained", b"last", 1, True,
                                                  {"ContentType": "text/plain"}))
        yield client.kill()
        yield self.wait_until(lambda: self.broker.stats.wills_published == 1)
        late = yield self.paho5("wd-late-sub")
        yield late.subscribe(("wd/retained", 1))
        message = yield late.next_message()
        self.assertEqual((message.payload, message.retain, message.prop("ContentType")),
                         (b"last", True, "text/plain"))


class Redirector:
    """An authenticator that redirects some clients and refuses bad passwords."""

    def authenticate(self, credentials):
        if credentials.clientId == "redirect-me":
            return fail(ConnectError("use the other one", RC.USE_ANOTHER_SERVER,
                                     {P.SERVER_REFERENCE: "other.example:1883"}))
        if credentials.clientId == "moved":
            return fail(ConnectError("moved for good", RC.SERVER_MOVED,
                                     {P.SERVER_REFERENCE: "new.example"}))
        if credentials.password == b"wrong":
            return fail(AuthenticationError("bad user name or password"))
        return succeed(credentials.username)


class RedirectionTests(V5TestCase):
    """Server redirection (0x9C/0x9D with a server reference) through the authenticator."""

    authenticator = Redirector()

    @inlineCallbacks
    def test_use_another_server_0x9c(self):
        """CONNACK 0x9C carries the server reference and a reason string; no session is made."""
        client = yield self.paho5("redirect-me", connect=False)
        result = yield client.connect()
        self.assertEqual(result.rc, RC.USE_ANOTHER_SERVER)
        self.assertEqual(result.prop("ServerReference"), "other.example:1883")
        self.assertEqual(result.prop("ReasonString"), "use the other one")
        yield client.disconnected
        self.assertNotIn("redirect-me", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_server_moved_0x9d(self):
        """CONNACK 0x9D (server moved) carries its server reference."""
        client = yield self.paho5("moved", connect=False)
        result = yield client.connect()
        self.assertEqual((result.rc, result.prop("ServerReference")),
                         (RC.SERVER_MOVED, "new.example"))

    @inlineCallbacks
    def test_v311_client_redirected_gets_server_unavailable(self):
        """A 3.1.1 client, which has no redirection, gets return code 3."""
        client = yield self.paho("redirect-me", connect=False)
        result = yield client.connect()
        self.assertEqual(result.rc, RC.SERVER_UNAVAILABLE)  # paho 2's name for rc 3

    @inlineCallbacks
    def test_refusal_carries_reason_string(self):
        """A refused CONNECT (bad password) gets CONNACK 0x86 with a reason string."""
        client = yield self.paho5("pw", connect=False, username="u", password="wrong")
        result = yield client.connect()
        self.assertEqual(result.rc, RC.BAD_USER_NAME_OR_PASSWORD)
        self.assertEqual(result.prop("ReasonString"), "bad user name or password")

    @inlineCallbacks
    def test_others_accepted(self):
        """Clients the authenticator accepts connect normally, identified by it."""
        yield self.paho5("fine", username="alice", password="ok")
        self.assertEqual(self.session("fine").identity, "alice")
