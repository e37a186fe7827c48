"""The admin API on the HTTP adapter (/admin/...): clients, kick, subscriptions, retained
topics, stats and their SSE, against paho clients and HTTP sessions on a real broker;
every answer is checked against docs/openapi.json on the way (tests/httpbroker.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from tests.httpbroker import HTTPBrokerTestCase
from tests.pahoclient import PahoClient
from tests.pahov5 import PahoV5Client
from tests.test_auth_passwd import ALICE, CAROL


class AdminAPITests(HTTPBrokerTestCase):
    """An anonymous broker: the admin API is open (as DELETE /session is)."""

    @inlineCallbacks
    def test_clients_paged_and_searched(self) -> None:
        """Sessions by client id with adapter and protocol; search matches any part of the
        id (any case); limit/after page through them."""
        for name in ("alpha-1", "Alpha-2", "beta"):
            yield self.paho(name)
        answer = yield self.json("GET", "/admin/clients", 200)
        self.assertEqual([c["client_id"] for c in answer["clients"]],
                         ["Alpha-2", "alpha-1", "beta"])
        first = answer["clients"][0]
        self.assertEqual((first["online"], first["adapter"], first["protocol"]),
                         (True, "mqtt", "mqtt3.1.1"))
        self.assertTrue(first["peer"].startswith("127.0.0.1"))
        self.assertNotIn("next", answer)
        found = yield self.json("GET", "/admin/clients?search=ALPHA", 200)
        self.assertEqual(len(found["clients"]), 2)
        page = yield self.json("GET", "/admin/clients?limit=2", 200)
        self.assertEqual(len(page["clients"]), 2)
        rest = yield self.json("GET", f"/admin/clients?limit=2&after={page['next']}", 200)
        self.assertEqual([c["client_id"] for c in rest["clients"]], ["beta"])
        self.assertNotIn("next", rest)

    @inlineCallbacks
    def test_http_session_listed(self) -> None:
        """An HTTP subscriber's virtual session is a client of adapter http."""
        stream = self.curl_sse("/subscribe?topic=h/%23&client=web-1")
        yield stream.expect("subscribed")
        answer = yield self.json("GET", "/admin/client?client=web-1", 200)
        self.assertEqual((answer["adapter"], answer["protocol"], answer["online"]),
                         ("http", "http", True))
        self.assertEqual([s["topic"] for s in answer["subscriptions"]], ["h/#"])

    @inlineCallbacks
    def test_client_detail_queue_and_inflight(self) -> None:
        """An offline persistent session shows its subscriptions and the QoS 1 messages
        queued for it; an unknown client is 404."""
        sub = yield self.paho("keeper", clean_session=False)
        yield sub.subscribe(("q/#", 1), ("other", 0))
        yield sub.disconnect()
        yield self.wait_until(lambda: not self.session("keeper").online)
        pub = yield self.paho("pusher")
        for i in range(3):
            yield pub.publish("q/x", b"%d" % i, 1)
        answer = yield self.json("GET", "/admin/client?client=keeper", 200)
        self.assertEqual(answer["online"], False)
        self.assertEqual(answer["persistent"], True)
        self.assertEqual(answer["queued"] + answer["inflight"], 3)
        self.assertEqual([s["topic"] for s in answer["subscriptions"]], ["other", "q/#"])
        self.assertEqual(answer["subscriptions"][1]["qos"], 1)
        yield self.json("GET", "/admin/client?client=nobody", 404)
        yield self.json("GET", "/admin/client", 400)

    @inlineCallbacks
    def test_kick_v5_and_remove(self) -> None:
        """DELETE /admin/client disconnects an MQTT 5 client with 0x98 (administrative
        action) and keeps its session; remove=1 deletes it; then 404."""
        client = PahoV5Client(self.reactor, self.mqtt_port, "kicked", clean_start=False,
                              connect_properties={"SessionExpiryInterval": 3600})
        self.addCleanup(client.stop)
        yield client.connect()
        yield self.json("DELETE", "/admin/client?client=kicked", 204)
        gone = yield client.disconnected
        self.assertEqual(gone.rc, 0x98)
        self.assertIsNotNone(inspection.session_info(self.broker, "kicked"))
        yield self.json("DELETE", "/admin/client?client=kicked&remove=1", 204)
        self.assertIsNone(inspection.session_info(self.broker, "kicked"))
        yield self.json("DELETE", "/admin/client?client=kicked", 404)

    @inlineCallbacks
    def test_subscriptions_paged(self) -> None:
        """Every subscription by filter then client id, paged with an opaque cursor; a
        prefix narrows them; a cursor the API did not give is a 400."""
        a = yield self.paho("a")
        b = yield self.paho("b")
        yield a.subscribe(("s/1", 0), ("s/2", 1), ("t/1", 0))
        yield b.subscribe(("s/1", 2))
        seen: list[tuple[str, str]] = []
        path = "/admin/subscriptions?limit=3"
        while True:
            page = yield self.json("GET", path, 200)
            seen += [(s["topic"], s["client_id"]) for s in page["subscriptions"]]
            if "next" not in page:
                break
            path = f"/admin/subscriptions?limit=3&after={page['next']}"
        self.assertEqual(seen, [("s/1", "a"), ("s/1", "b"), ("s/2", "a"), ("t/1", "a")])
        narrowed = yield self.json("GET", "/admin/subscriptions?prefix=t/", 200)
        self.assertEqual(narrowed["subscriptions"], [{"topic": "t/1", "client_id": "a",
                                                     "qos": 0}])
        yield self.json("GET", "/admin/subscriptions?after=zzz", 400)

    @inlineCallbacks
    def test_retained_paged_and_deleted(self) -> None:
        """Retained topics paged by topic; DELETE removes one (a new subscriber gets the
        others only), a second DELETE is 404, a filter as topic is 400."""
        pub = yield self.paho("retainer")
        for topic in ("r/a", "r/b", "r/c"):
            yield pub.publish(topic, b"v-" + topic.encode(), 1, retain=True)
        page = yield self.json("GET", "/admin/retained?topic=r/%23&limit=2", 200)
        self.assertEqual([t["topic"] for t in page["topics"]], ["r/a", "r/b"])
        self.assertEqual(page["topics"][0]["bytes"], 5)
        rest = yield self.json("GET", f"/admin/retained?topic=r/%23&after={page['next']}", 200)
        self.assertEqual([t["topic"] for t in rest["topics"]], ["r/c"])
        yield self.json("DELETE", "/admin/retained?topic=r/b", 204)
        yield self.json("DELETE", "/admin/retained?topic=r/b", 404)
        yield self.json("DELETE", "/admin/retained?topic=r/%23", 400)
        sub = yield self.paho("late")
        yield sub.subscribe(("r/#", 0))
        got = yield sub.collect(2)
        self.assertEqual(sorted(m.topic for m in got), ["r/a", "r/c"])
        yield sub.no_message()

    @inlineCallbacks
    def test_stats_and_events(self) -> None:
        """Stats count what paho did, top topics show the busy topic; /admin/events sends
        a stats event a second with the latest rate point."""
        pub = yield self.paho("stats-pub")
        for _ in range(64):
            yield pub.publish("busy/topic", b"x", 0)
        for _ in range(16):
            yield pub.publish("quiet/topic", b"x", 0)
        yield self.wait_until(lambda: self.broker.stats.messages_received >= 80)
        stats = yield self.json("GET", "/admin/stats", 200)
        self.assertEqual(stats["connections"], 1)
        self.assertEqual(stats["connections_by_adapter"], {"mqtt": 1})
        self.assertGreaterEqual(stats["counters"]["messages_received"], 80)
        self.assertEqual(stats["top_topics"][0]["topic"], "busy/topic")
        self.assertGreater(stats["top_topics"][0]["messages"],
                           stats["top_topics"][1]["messages"])
        stream = self.curl_sse("/admin/events")
        first = yield stream.expect("stats")
        second = yield stream.expect("stats")
        self.assertNotIn("history", first.data)
        self.assertEqual(second.data["connections"], 1)
        self.assertIsNotNone(second.data["point"])
        self.assertGreater(second.data["time"], first.data["time"])
        stats = yield self.json("GET", "/admin/stats", 200)
        self.assertGreaterEqual(len(stats["history"]), 1)

    @inlineCallbacks
    def test_errors(self) -> None:
        """Bad parameters 400, other methods 405, unknown paths 404: all JSON."""
        yield self.json("GET", "/admin/clients?limit=0", 400)
        yield self.json("POST", "/admin/stats", 405)
        yield self.json("GET", "/admin/nothing", 404)
        yield self.json("GET", "/admin/retained?topic=a/%23/b", 400)

    @inlineCallbacks
    def test_dashboard_files(self) -> None:
        """/dashboard redirects to /dashboard/, which serves the page with a strict content
        security policy; its script and style sheet have their types; others 404."""
        code, headers, _ = yield self.request("GET", "/dashboard")
        self.assertEqual((code, headers["location"]), (302, "/dashboard/"))
        code, headers, body = yield self.request("GET", "/dashboard/")
        self.assertEqual(code, 200)
        self.assertIn(b'<script src="dashboard.js">', body)
        self.assertIn("script-src 'self'", headers["content-security-policy"])
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            code, headers, body = yield self.request("GET", f"/dashboard/{name}")
            self.assertEqual(code, 200)
            self.assertTrue(headers["content-type"].startswith(kind))
            self.assertTrue(body)
        yield self.json("GET", "/dashboard/nothing.js", 404)


class AdminAuthTests(HTTPBrokerTestCase):
    """--auth passwd with carol as --admin-user: the admin paths are hers alone."""

    settings = BrokerSettings(admin_users=frozenset({"carol"}))
    PATHS = ("/admin/clients", "/admin/client?client=x", "/admin/subscriptions",
             "/admin/retained", "/admin/stats", "/dashboard/", "/dashboard/dashboard.js")

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.authenticator = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "f"),
                                                       reactor=reactor)
        return super().setUp()

    @inlineCallbacks
    def test_admin_role(self) -> None:
        """No credentials: 401 with the challenge; alice (a user, not an admin): 403;
        carol: the answer."""
        for path in self.PATHS:
            code, headers, _ = yield self.request("GET", path)
            self.assertEqual(code, 401, path)
            self.assertIn("basic", headers["www-authenticate"].lower())
            code, _, _ = yield self.curl("-u", "alice:secret1", path=path)
            self.assertEqual(code, 403, path)
            code, _, _ = yield self.curl("-u", "carol:c3", path=path)
            self.assertIn(code, (200, 404), path)  # /admin/client?client=x: none

    @inlineCallbacks
    def test_kick_needs_admin(self) -> None:
        """alice cannot kick carol's client; carol can."""
        client = PahoClient(self.reactor, self.mqtt_port, "carols", username="carol",
                            password="c3")
        self.addCleanup(client.stop)
        yield client.connect()
        code, _, _ = yield self.curl("-u", "alice:secret1", path="/admin/client?client=carols",
                                     method="DELETE")
        self.assertEqual(code, 403)
        self.assertTrue(self.session("carols").online)
        code, _, _ = yield self.curl("-u", "carol:c3", path="/admin/client?client=carols",
                                     method="DELETE")
        self.assertEqual(code, 204)
        yield client.disconnected


class StatsStreamTests(SynchronousTestCase):
    """/admin/events on a clock: what a stalled reader costs."""

    def test_paused_while_transport_full(self) -> None:
        """A stats event a second; none while the transport says it is full (the stream
        is the request's push producer), and again once it drains; none after the end."""
        from twisted.internet.task import Clock

        from mqtt_twisted.adapters._httpadmin import StatsStream
        from mqtt_twisted.admin import BrokerAdmin
        from mqtt_twisted.testing import make_broker

        clock = Clock()
        request = _Request()
        stream = StatsStream(request, BrokerAdmin(make_broker()[0]), clock)
        stream.start()
        self.assertIs(request.producer, stream)
        self.assertEqual(len(request.written), 1)
        self.assertTrue(request.written[0].startswith(b"event: stats\n"))
        stream.pauseProducing()
        for _ in range(3):
            clock.advance(1)
        self.assertEqual((len(request.written), stream.skipped), (1, 3))
        stream.resumeProducing()
        clock.advance(1)
        self.assertEqual(len(request.written), 2)
        stream.stopProducing()
        clock.advance(5)
        self.assertEqual(len(request.written), 2)
        self.assertEqual(clock.getDelayedCalls(), [])


class _Request:
    """What StatsStream uses of a twisted.web request (twisted's DummyRequest pulls from
    any producer in a loop: no use for a push producer)."""

    finished = False
    _disconnected = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def write(self, data: bytes) -> None:
        self.written.append(data)
