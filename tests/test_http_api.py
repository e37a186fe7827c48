"""The HTTP bridge end to end: curl and Twisted's Agent against a real broker, with paho-mqtt
clients on the MQTT side; every answer is checked against docs/openapi.json on the way
(see tests/httpbroker.py).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from zope.interface import implementer

from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import AuthenticationError, StorageError
from mqtt_twisted.interfaces import IAuthenticator, IAuthorizer
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import MemoryStore

try:
    from tests.httpbroker import HTTPBrokerTestCase
    from tests.pahov5 import PahoV5Client
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from httpbroker import HTTPBrokerTestCase  # type: ignore[no-redef]
    from pahov5 import PahoV5Client  # type: ignore[no-redef]

SSE = {"Accept": "text/event-stream"}


class PublishTests(HTTPBrokerTestCase):
    """POST /publish."""

    @inlineCallbacks
    def test_curl_publish_reaches_paho(self) -> Any:
        """A message curl publishes at QoS 1 reaches a paho subscriber; the answer counts it."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("sensors/#", 1))
        status, _, body = yield self.curl("--data-binary", "21.5", method="POST",
                                          path="/publish?topic=sensors/t1&qos=1")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"topic": "sensors/t1", "qos": 1, "retain": False,
                                            "subscribers": 1, "reason_code": 0})
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.qos), ("sensors/t1", b"21.5", 1))

    @inlineCallbacks
    def test_v5_properties_from_headers(self) -> Any:
        """The MQTT-* headers become the v5 properties a paho v5 subscriber receives."""
        sub = PahoV5Client(self.reactor, self.mqtt_port, "v5sub")
        self.addCleanup(sub.stop)
        yield sub.connect()
        yield sub.subscribe(("req/#", 1))
        yield self.json("POST", "/publish?topic=req/1&qos=1", 200, {
            "MQTT-Content-Type": "application/json",
            "MQTT-Response-Topic": "resp/1",
            "MQTT-Correlation-Data": "abc-123",
            "MQTT-Message-Expiry-Interval": "60",
            "MQTT-Payload-Format-Indicator": "1",
            "MQTT-User-Property": ["unit=celsius", "note=a%3Db%2Cc"],
        }, b'{"t": 1}')
        message = yield sub.next_message()
        self.assertEqual(message.payload, b'{"t": 1}')
        self.assertEqual(message.prop("ContentType"), "application/json")
        self.assertEqual(message.prop("ResponseTopic"), "resp/1")
        self.assertEqual(message.prop("CorrelationData"), b"abc-123")
        self.assertEqual(message.prop("PayloadFormatIndicator"), 1)
        self.assertIn(message.prop("MessageExpiryInterval"), (59, 60))
        self.assertEqual(message.user_properties, [("unit", "celsius"), ("note", "a=b,c")])

    @inlineCallbacks
    def test_retained_publish_list_and_delete(self) -> Any:
        """retain=1 keeps the message for GET /retained; an empty retained body deletes it."""
        yield self.curl("--data-binary", "on", method="POST",
                        path="/publish?topic=lights/hall&retain=1")
        binary = self.mktemp()
        with open(binary, "wb") as f:
            f.write(b"\xff")
        yield self.curl("--data-binary", f"@{binary}", method="POST",
                        path="/publish?topic=lights/attic&retain=true")
        status, _, body = yield self.curl(path="/retained?topic=lights/%23")
        self.assertEqual(status, 200)
        messages = json.loads(body)["messages"]
        self.assertEqual([(m["topic"], m["payload"], m["payload_encoding"], m["retain"])
                          for m in messages],
                         [("lights/attic", base64.b64encode(b"\xff").decode(), "base64", True),
                          ("lights/hall", "on", "plain", True)])
        yield self.curl("--data-binary", "", method="POST",
                        path="/publish?topic=lights/hall&retain=1")
        answer = yield self.json("GET", "/retained?topic=lights/hall", 200)
        self.assertEqual(answer, {"messages": []})

    @inlineCallbacks
    def test_retained_pages(self) -> Any:
        """GET /retained answers a page at a time (100 by default, limit= up to 1000, a
        page ends after 1 MiB of payload) with next= for the following page; every
        message comes once, in topic order."""
        from mqtt_twisted.message import Message

        for n in range(250):
            self.broker.retain(Message(f"page/{n:03d}", b"v", 0, True))
        topics, after, pages = [], None, 0
        while True:
            query = "/retained?topic=page/%23" + (f"&after={after}" if after else "")
            answer = yield self.json("GET", query, 200)
            pages += 1
            topics += [m["topic"] for m in answer["messages"]]
            after = answer.get("next")
            if after is None:
                break
            self.assertEqual(after, topics[-1])
        self.assertEqual((pages, topics), (3, [f"page/{n:03d}" for n in range(250)]))
        answer = yield self.json("GET", "/retained?topic=page/%23&limit=1000", 200)
        self.assertEqual((len(answer["messages"]), "next" in answer), (250, False))
        answer = yield self.json("GET", "/retained?topic=page/%23&limit=2&after=page/100",
                                 200)
        self.assertEqual([m["topic"] for m in answer["messages"]], ["page/101", "page/102"])
        for n in range(3):
            self.broker.retain(Message(f"big/{n}", b"x" * 600_000, 0, True))
        answer = yield self.json("GET", "/retained?topic=big/%23", 200)
        self.assertEqual(([m["topic"] for m in answer["messages"]], answer["next"]),
                         (["big/0"], "big/0"))
        for bad in ("limit=0", "limit=1001", "limit=x"):
            answer = yield self.json("GET", f"/retained?topic=page/%23&{bad}", 400)
            self.assertIn("limit", answer["error"])

    @inlineCallbacks
    def test_no_subscribers_reason_16(self) -> Any:
        """A message nobody subscribes to is answered 200 with reason code 16 (0x10)."""
        answer = yield self.json("POST", "/publish?topic=nobody/home", 200, body=b"x")
        self.assertEqual((answer["subscribers"], answer["reason_code"]), (0, 16))

    @inlineCallbacks
    def test_bad_publish_requests(self) -> Any:
        """Bad topics, QoS, flags and headers get 400 (or 415) with their reason code."""
        cases = [
            ("/publish", {}, 400, 0x90),
            ("/publish?topic=a/%23", {}, 400, 0x90),
            ("/publish?topic=a&qos=3", {}, 400, 0x81),
            ("/publish?topic=a&qos=x", {}, 400, 0x81),
            ("/publish?topic=a&retain=maybe", {}, 400, 0x82),
            ("/publish?topic=a&topic=b", {}, 400, 0x82),
            ("/publish?topic=a&client=", {}, 400, 0x85),
            ("/publish?topic=a", {"MQTT-Message-Expiry-Interval": "soon"}, 400, 0x82),
            ("/publish?topic=a", {"MQTT-User-Property": "novalue"}, 400, 0x82),
            ("/publish?topic=a", {"MQTT-Response-Topic": "r/+"}, 400, 0x90),
            ("/publish?topic=a", {"MQTT-Payload-Format-Indicator": "2"}, 400, 0x82),
            ("/publish?topic=a", {"Content-Encoding": "gzip"}, 415, 0x80),
        ]
        for path, headers, status, reason in cases:
            answer = yield self.json("POST", path, status, headers, b"payload")
            self.assertEqual(answer["reason_code"], reason, (path, headers, answer))

    @inlineCallbacks
    def test_wrong_method_and_path(self) -> Any:
        """Other methods get 405 with Allow; unknown paths 404; both as JSON errors."""
        code, headers, body = yield self.request("GET", "/publish?topic=a")
        self.assertEqual((code, headers["allow"]), (405, "POST"))
        self.assertEqual(json.loads(body)["reason_code"], 0x80)
        code, _, body = yield self.request("DELETE", "/subscribe?topic=a")
        self.assertEqual(code, 405)
        for path in ("/", "/nope", "/publish/extra"):
            code, _, body = yield self.request("POST", path)
            self.assertEqual(code, 404, path)
            self.assertIn("error", json.loads(body))


class QoS2SettingsTests(HTTPBrokerTestCase):
    """The broker's QoS and retain settings hold for HTTP publishers too."""

    settings = BrokerSettings(maximum_qos=1, retain_available=False, validate_utf8_payload=True)

    @inlineCallbacks
    def test_capabilities(self) -> Any:
        """QoS above the maximum is 0x9B, retain when unavailable 0x9A, bad UTF-8 0x99."""
        answer = yield self.json("POST", "/publish?topic=a&qos=2", 400, body=b"x")
        self.assertEqual(answer["reason_code"], 0x9B)
        answer = yield self.json("POST", "/publish?topic=a&retain=1", 400, body=b"x")
        self.assertEqual(answer["reason_code"], 0x9A)
        answer = yield self.json("POST", "/publish?topic=a", 400,
                                 {"MQTT-Payload-Format-Indicator": "1"}, b"\xff\xfe")
        self.assertEqual(answer["reason_code"], 0x99)
        answer = yield self.json("GET", "/subscribe?topic=a&qos=2&timeout=0", 400)
        self.assertEqual(answer["reason_code"], 0x9B)


class _SlowStore(MemoryStore):
    """A memory store that claims to persist messages, and whose retained writes answer
    when the test says (or fail)."""

    persistsMessages = True

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.reactor = reactor
        self.pending: list[Deferred[None]] = []
        self.fail = False

    def setRetained(self, message: Message) -> Any:
        d: Deferred[None] = Deferred()
        if self.fail:
            self.reactor.callLater(0, d.errback, StorageError("Redis is down"))
        else:
            self.pending.append(d)
        return d


class StoreTests(HTTPBrokerTestCase):
    """Publish answers wait for the store, and tell when it failed."""

    def make_store(self) -> Any:
        self.store = _SlowStore(self.reactor)
        return self.store

    @inlineCallbacks
    def test_answer_waits_for_the_store(self) -> Any:
        """A retained QoS 1 publish is answered only once the store has taken it."""
        answer = self.json("POST", "/publish?topic=kept&qos=1&retain=1", 200, body=b"v")
        yield self.wait_until(lambda: self.store.pending)
        yield self.sleep(0.05)
        self.assertFalse(answer.called)
        self.store.pending.pop().callback(None)
        result = yield answer
        self.assertEqual(result["topic"], "kept")

    @inlineCallbacks
    def test_store_failure_is_503(self) -> Any:
        """A store that fails the write makes the answer 503 with Retry-After and 0x88."""
        self.store.fail = True
        code, headers, body = yield self.request("POST", "/publish?topic=kept&retain=1",
                                                 body=b"v")
        self.assertEqual((code, headers["retry-after"]), (503, "1"))
        self.assertEqual(json.loads(body)["reason_code"], 0x88)
        self.flushLoggedErrors(StorageError)


class SSETests(HTTPBrokerTestCase):
    """GET/POST /subscribe as Server-Sent Events."""

    http_keys = {"heartbeat": "0.1"}

    @inlineCallbacks
    def test_curl_sse_receives_paho_messages(self) -> Any:
        """curl's SSE stream gets what paho publishes (text and binary), heartbeats between,
        and its session goes when curl does."""
        stream = self.curl_sse("/subscribe?topic=room/%2B/temp&qos=1")
        hello = yield stream.expect("subscribed")
        client_id = hello.data["client"]
        self.assertEqual(hello.data["subscriptions"], [{"topic": "room/+/temp", "qos": 1}])
        self.assertIn(client_id, inspection.session_ids(self.broker))
        pub = yield self.paho("pub")
        yield pub.publish("room/1/temp", b"20.5", qos=1)
        yield pub.publish("room/2/temp", b"\x00\xff", qos=0)
        first = yield stream.expect(None)
        second = yield stream.expect(None)
        self.assertEqual((first.data["topic"], first.data["payload"], first.data["qos"]),
                         ("room/1/temp", "20.5", 1))
        self.assertEqual(first.id, first.data["id"])
        self.assertEqual((second.data["payload"], second.data["payload_encoding"]),
                         (base64.b64encode(b"\x00\xff").decode(), "base64"))
        yield self.wait_until(lambda: stream.parser.comments >= 2)
        yield stream.stop()
        yield self.wait_until(lambda: client_id not in inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_agent_sse_post_json_several_topics(self) -> Any:
        """POST /subscribe with a JSON body subscribes to every topic it lists."""
        stream = yield self.agent_sse("/subscribe", {"Content-Type": "application/json"},
                                      "POST", b'{"topics": ["a/1", "b/#"], "qos": 2}')
        hello = yield stream.expect("subscribed")
        self.assertEqual(hello.data["subscriptions"],
                         [{"topic": "a/1", "qos": 2}, {"topic": "b/#", "qos": 2}])
        yield self.json("POST", "/publish?topic=b/x/y&qos=2", 200, body=b"deep")
        event = yield stream.expect(None)
        self.assertEqual((event.data["topic"], event.data["qos"]), ("b/x/y", 2))

    @inlineCallbacks
    def test_retained_first_then_live(self) -> Any:
        """A new subscription gets the matching retained messages (retain true) first."""
        yield self.json("POST", "/publish?topic=cfg/a&retain=1&qos=1", 200, body=b"A")
        stream = yield self.agent_sse("/subscribe?topic=cfg/%23&qos=1")
        yield stream.expect("subscribed")
        retained = yield stream.expect(None)
        self.assertEqual((retained.data["topic"], retained.data["retain"]), ("cfg/a", True))
        yield self.json("POST", "/publish?topic=cfg/a&retain=1&qos=1", 200, body=b"B")
        live = yield stream.expect(None)
        self.assertEqual((live.data["payload"], live.data["retain"]), ("B", False))

    @inlineCallbacks
    def test_last_event_id_resume(self) -> Any:
        """A persistent client resumes with Last-Event-ID: events after it are sent again,
        then what was queued while it was away."""
        path = "/subscribe?topic=feed&qos=1&client=reader"
        stream = yield self.agent_sse(path)
        yield stream.expect("subscribed")
        for n in (1, 2):
            yield self.json("POST", "/publish?topic=feed&qos=1", 200, body=b"m%d" % n)
        first = yield stream.expect(None)
        yield stream.expect(None)
        yield stream.stop()
        yield self.wait_until(lambda: not self.session("reader").online)
        yield self.json("POST", "/publish?topic=feed&qos=1", 200, body=b"m3")
        again = yield self.agent_sse(path, {"Last-Event-ID": first.id})
        hello = yield again.expect("subscribed")
        self.assertEqual(hello.data["client"], "reader")
        replayed = yield again.expect(None)
        queued = yield again.expect(None)
        self.assertEqual([replayed.data["payload"], queued.data["payload"]], ["m2", "m3"])

    @inlineCallbacks
    def test_takeover_and_removal_close_the_stream(self) -> Any:
        """A second stream of the same client takes the session over (close 0x8E); DELETE
        /session ends the other (close 0x98)."""
        first = yield self.agent_sse("/subscribe?topic=t&client=twice")
        yield first.expect("subscribed")
        second = yield self.agent_sse("/subscribe?topic=t&client=twice")
        closed = yield first.expect("close")
        self.assertEqual(closed.data, {"reason_code": 0x8E})
        yield first.wait_ended()
        yield second.expect("subscribed")
        code, _, _ = yield self.request("DELETE", "/session?client=twice")
        self.assertEqual(code, 204)
        closed = yield second.expect("close")
        self.assertEqual(closed.data, {"reason_code": 0x98})
        self.assertNotIn("twice", inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_shutdown_closes_streams(self) -> Any:
        """Stopping the broker ends open streams with close 0x8B."""
        stream = yield self.agent_sse("/subscribe?topic=t")
        yield stream.expect("subscribed")
        yield self.service.stopService()
        closed = yield stream.expect("close")
        self.assertEqual(closed.data, {"reason_code": 0x8B})
        self.service.startService = lambda: None  # tearDown stops it again: harmless

    @inlineCallbacks
    def test_bad_subscribe_requests(self) -> Any:
        """Missing or bad filters and parameters are 400; a non-JSON, non-form body 415."""
        cases = [
            ("GET", "/subscribe", {}, None, 400, 0x8F),
            ("GET", "/subscribe?topic=a/%23/b", {}, None, 400, 0x8F),
            ("GET", "/subscribe?topic=a&qos=5", {}, None, 400, 0x81),
            ("GET", "/subscribe?topic=a&timeout=-1", {}, None, 400, 0x82),
            ("GET", "/subscribe?topic=a&timeout=nan", {}, None, 400, 0x82),
            ("GET", "/subscribe?topic=a&max=0", {}, None, 400, 0x82),
            ("GET", "/subscribe?topic=a&expiry=10", {}, None, 400, 0x82),
            ("POST", "/subscribe", {"Content-Type": "text/plain"}, b"topic=a", 415, 0x80),
            ("POST", "/subscribe", {"Content-Type": "application/json"}, b"{", 400, 0x81),
            ("POST", "/subscribe", {"Content-Type": "application/json"}, b'{"topics": 1}',
             400, 0x82),
        ]
        for method, path, headers, body, status, reason in cases:
            answer = yield self.json(method, path, status, headers, body)
            self.assertEqual(answer["reason_code"], reason, (path, answer))
        self.assertEqual(inspection.session_ids(self.broker), set())


class LongPollTests(HTTPBrokerTestCase):
    """GET /subscribe without text/event-stream: a long poll."""

    @inlineCallbacks
    def test_curl_poll_times_out_with_204(self) -> Any:
        """A poll that sees nothing answers 204 after its timeout, and leaves no session."""
        started = time.monotonic()
        status, _, body = yield self.curl(path="/subscribe?topic=quiet&timeout=0.3")
        self.assertEqual((status, body), (204, b""))
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        self.assertEqual(inspection.session_ids(self.broker), set())

    @inlineCallbacks
    def test_poll_returns_what_paho_publishes(self) -> Any:
        """A waiting poll answers as soon as a paho client publishes, with the message."""
        pub = yield self.paho("pub")
        answer = self.curl("--data-urlencode", "topic=chat/#", "--data-urlencode", "timeout=5",
                           method="POST", path="/subscribe?qos=1")
        yield self.wait_until(lambda: any(s.subscriptions for s in inspection.sessions(self.broker)
                                          if s.client_id.startswith("http-")))
        yield pub.publish("chat/room", b"hi", qos=1)
        status, _, body = yield answer
        self.assertEqual(status, 200)
        result = json.loads(body)
        self.assertEqual([(m["topic"], m["payload"], m["qos"]) for m in result["messages"]],
                         [("chat/room", "hi", 1)])

    @inlineCallbacks
    def test_persistent_poll_keeps_the_rest(self) -> Any:
        """With client= the session keeps what one answer could not take (max=) for the next
        poll; a lost answer comes again with Last-Event-ID."""
        yield self.request("GET", "/subscribe?topic=jobs&qos=1&client=worker&timeout=0"
                           "&expiry=600")
        self.assertEqual(self.session("worker").expiry_interval, 600)
        for n in range(5):
            yield self.json("POST", "/publish?topic=jobs&qos=1", 200, body=b"%d" % n)
        path = "/subscribe?topic=jobs&qos=1&client=worker&timeout=0&max=2"
        batches = []
        for _ in range(3):
            answer = yield self.json("GET", path, 200)
            self.assertEqual(answer["client"], "worker")
            batches.append([m["payload"] for m in answer["messages"]])
        self.assertEqual(batches, [["0", "1"], ["2", "3"], ["4"]])
        code, _, _ = yield self.request("GET", path)
        self.assertEqual(code, 204)
        first_id = answer["messages"][0]["id"]
        yield self.json("POST", "/publish?topic=jobs&qos=1", 200, body=b"5")
        again = yield self.json("GET", path, 200, {"Last-Event-ID": first_id})
        self.assertEqual([m["payload"] for m in again["messages"]], ["5"])
        self.assertTrue(self.session("worker").persistent)


class SessionTests(HTTPBrokerTestCase):
    """DELETE /session."""

    @inlineCallbacks
    def test_curl_deletes_a_paho_session(self) -> Any:
        """DELETE /session disconnects a connected paho client and removes its session; a
        second DELETE is 404."""
        client = yield self.paho("field-unit-7", clean_session=False)
        status, _, body = yield self.curl(method="DELETE", path="/session?client=field-unit-7")
        self.assertEqual((status, body), (204, b""))
        yield client.disconnected
        self.assertNotIn("field-unit-7", inspection.session_ids(self.broker))
        status, _, body = yield self.curl(method="DELETE", path="/session?client=field-unit-7")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["reason_code"], 0x80)
        answer = yield self.json("DELETE", "/session", 400)
        self.assertEqual(answer["reason_code"], 0x85)


@implementer(IAuthenticator, IAuthorizer)
class _Users:
    """alice/secret and bob/hunter2, or the token 'tok-alice'; each may use its own topics."""

    passwords = {"alice": b"secret", "bob": b"hunter2"}

    def authenticate(self, credentials: Any) -> Any:
        if credentials.username is None and credentials.password == b"tok-alice":
            return succeed("alice")
        if credentials.username in self.passwords and \
                self.passwords[credentials.username] == credentials.password:
            return succeed(credentials.username)
        from twisted.internet.defer import fail

        return fail(AuthenticationError("bad user name or password"))

    def mayPublish(self, identity: Any, clientId: Any, topic: str) -> bool:
        return topic.startswith(f"{identity}/")

    def maySubscribe(self, identity: Any, clientId: Any, topicFilter: str) -> bool:
        return topicFilter.startswith(f"{identity}/")


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class AuthTests(HTTPBrokerTestCase):
    """Basic and Bearer through the broker's authenticator; its authorizer decides."""

    authenticator = authorizer = _Users()

    @inlineCallbacks
    def test_credentials(self) -> Any:
        """Right Basic or Bearer credentials publish; missing, wrong or unknown ones are 401."""
        yield self.json("POST", "/publish?topic=alice/x", 200, _basic("alice", "secret"), b"1")
        yield self.json("POST", "/publish?topic=alice/x", 200,
                        {"Authorization": "Bearer tok-alice"}, b"2")
        for headers in ({}, _basic("alice", "wrong"), {"Authorization": "Bearer nope"},
                        {"Authorization": "Digest x"}, {"Authorization": "Basic !!"}):
            code, answer_headers, _ = yield self.request("POST", "/publish?topic=alice/x",
                                                         headers, b"3")
            self.assertEqual(code, 401, headers)
            self.assertIn("Basic", answer_headers["www-authenticate"])
        status, _, _ = yield self.curl("-u", "bob:hunter2", "--data-binary", "x",
                                       method="POST", path="/publish?topic=bob/y")
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_authorizer(self) -> Any:
        """Publishing, subscribing or listing retained outside one's topics is 403 (0x87)."""
        alice = _basic("alice", "secret")
        for method, path in (("POST", "/publish?topic=bob/x"),
                             ("GET", "/subscribe?topic=bob/%23&timeout=0"),
                             ("GET", "/retained?topic=bob/%23")):
            answer = yield self.json(method, path, 403, alice, b"" if method == "POST" else None)
            self.assertEqual(answer["reason_code"], 0x87)
        self.assertEqual(inspection.session_ids(self.broker), set())

    @inlineCallbacks
    def test_sse_authenticated_like_mqtt(self) -> Any:
        """An SSE subscriber authenticated by token receives what an authenticated paho
        client publishes; a wrong token gets 401 before any stream."""
        code, _, _ = yield self.request("GET", "/subscribe?topic=alice/%23",
                                        {**SSE, "Authorization": "Bearer bad"})
        self.assertEqual(code, 401)
        stream = yield self.agent_sse("/subscribe?topic=alice/%23",
                                      {"Authorization": "Bearer tok-alice"})
        yield stream.expect("subscribed")
        pub = yield self.paho("alice-device", username="alice", password="secret")
        yield pub.publish("alice/door", b"open", qos=1)
        event = yield stream.expect(None)
        self.assertEqual(event.data["payload"], "open")

    @inlineCallbacks
    def test_delete_own_session_only(self) -> Any:
        """Without an authorizer's mayDisconnect, a user may remove only its own sessions."""
        yield self.paho("alices-phone", clean_session=False, username="alice", password="secret")
        answer = yield self.json("DELETE", "/session?client=alices-phone", 403,
                                 _basic("bob", "hunter2"))
        self.assertEqual(answer["reason_code"], 0x87)
        code, _, _ = yield self.request("DELETE", "/session?client=alices-phone",
                                        _basic("alice", "secret"))
        self.assertEqual(code, 204)


@implementer(IAuthenticator)
class _Devices:
    """Lets in whoever shows a client certificate; records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def authenticate(self, credentials: Any) -> Any:
        self.seen.append(credentials)
        if credentials.certificateIdentity is None:
            from twisted.internet.defer import fail

            return fail(AuthenticationError("a client certificate is required"))
        return succeed(credentials.username)


class TLSTests(HTTPBrokerTestCase):
    """http=ssl: with the TLS listener keys: optional client certificates whose identity
    becomes the user name, as for MQTT over TLS."""

    authenticator = None

    @inlineCallbacks
    def setUp(self) -> Any:
        try:
            from tests.certs import CA, temp_dir
        except ImportError:
            from certs import CA, temp_dir  # type: ignore[no-redef]

        ca = CA(temp_dir(self))
        server = ca.issue("localhost", server=True)
        self.device = ca.issue("device-7")
        self.ca = ca.cert_path
        self.authenticator = _Devices()
        self.http_endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
                              f":certKey={server.cert_path}")
        self.http_keys = {"caCerts": ca.cert_path, "clientCerts": "optional",
                          "identityAsUsername": "yes"}
        yield super().setUp()

    @inlineCallbacks
    def test_client_certificate_identity(self) -> Any:
        """curl over HTTPS with a client certificate publishes as its CN; without one the
        authenticator refuses (401)."""
        status, _, _ = yield self.curl("--cert", self.device.cert_path, "--key",
                                       self.device.key_path, "--data-binary", "x",
                                       method="POST", path="/publish?topic=d/7")
        self.assertEqual(status, 200)
        seen = self.authenticator.seen[-1]
        self.assertEqual((seen.certificateIdentity, seen.username, seen.adapter),
                         ("device-7", "device-7", "http"))
        status, _, _ = yield self.curl("--data-binary", "x", method="POST",
                                       path="/publish?topic=d/7")
        self.assertEqual(status, 401)
