"""Prometheus metrics: the ``metrics=`` listener and the HTTP adapter's ``/metrics``,
scraped over real sockets and read with prometheus-client's own parser, after paho
traffic; and the counters behind them (per-QoS, refusals, store latency, outages).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.admin import BrokerAdmin
from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.core.journal import Journal
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.stats import LATENCY_SAMPLE, BrokerStats
from mqtt_twisted.interfaces import IBrokerAdmin, IListenerChecker, IStreamAdapter
from mqtt_twisted.plugins.metrics import metricsAdapter
from mqtt_twisted.store.outage import OutageLog
from tests.httpbroker import HTTPBrokerTestCase, read_body
from tests.pahoclient import PahoClient, with_timeout
from tests.test_auth_passwd import ALICE, CAROL
from tests.test_twistd_run import TwistdTestCase, _listen

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


class _MetricsBroker(HTTPBrokerTestCase):
    """The HTTP bridge's broker, plus a ``metrics=`` listener started with it."""

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        settings = parse_listener("metrics=tcp:0:interface=127.0.0.1", "mqtt",
                                  {"metrics": list(metricsAdapter.options)})
        metricsAdapter.checkListener(settings)
        listener = self.service.addListener(metricsAdapter, settings)
        listener.setServiceParent(self.service)  # the service runs: this starts it
        port = yield listener.whenListening()
        self.metrics_port = port.getHost().port

    @inlineCallbacks
    def scrape(self, url: str | None = None, headers: dict[str, str] | None = None) -> Any:
        """GET the metrics listener's /metrics; fires with (status, headers, samples)."""
        from twisted.web.http_headers import Headers

        url = url or f"http://127.0.0.1:{self.metrics_port}/metrics"
        raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        response = yield with_timeout(self.agent.request(b"GET", url.encode(), raw),
                                      self.reactor)
        body = yield with_timeout(read_body(response), self.reactor)
        flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, flat, body.decode()


class MetricsListenerTests(_MetricsBroker):
    """``--listen metrics=...`` on a running broker."""

    @inlineCallbacks
    def test_values_move_after_paho_traffic(self) -> None:
        """Connections, messages by QoS, bytes, subscriptions and connects follow what two
        paho clients do, read by prometheus-client's parser from a real scrape."""
        status, headers, text = yield self.scrape()
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        before = parse(text)
        subscriber = yield self.paho("m-sub")
        publisher = yield self.paho("m-pub")
        yield subscriber.subscribe(("m/#", 1))
        for qos, n in ((0, 3), (1, 2), (2, 1)):
            for i in range(n):
                yield publisher.publish(f"m/{qos}", b"x" * 100 + bytes([i]), qos)
        yield subscriber.collect(6)
        _, _, text = yield self.scrape()
        after = parse(text)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("mqtt_messages_received_total", qos="0"), 3)
        self.assertEqual(moved("mqtt_messages_received_total", qos="1"), 2)
        self.assertEqual(moved("mqtt_messages_received_total", qos="2"), 1)
        # Granted QoS 1: the QoS 2 message goes out at 1.
        self.assertEqual(moved("mqtt_messages_sent_total", qos="0"), 3)
        self.assertEqual(moved("mqtt_messages_sent_total", qos="1"), 3)
        self.assertEqual(moved("mqtt_messages_sent_total", qos="2"), 0)
        self.assertGreater(moved("mqtt_received_bytes_total"), 600)
        self.assertGreater(moved("mqtt_sent_bytes_total"), 600)
        self.assertEqual(moved("mqtt_connects_total"), 2)
        self.assertEqual(value(after, "mqtt_connections", adapter="mqtt", protocol="mqtt3.1.1"),
                         2)
        self.assertEqual(value(after, "mqtt_sessions", state="online"), 2)
        self.assertEqual(value(after, "mqtt_subscriptions"), 1)
        self.assertEqual(value(after, "mqtt_queued_messages"), 0)
        self.assertEqual(value(after, "mqtt_store_up"), 1)
        self.assertEqual(value(after, "mqtt_build_info", version=__import__(
            "mqtt_twisted").__version__), 1)
        mqtt_listener = next(name for (n, labels), _ in after.items()
                             if n == "mqtt_listener_connections"
                             for key, name in labels if name.startswith("mqtt="))
        self.assertEqual(value(after, "mqtt_listener_connections", listener=mqtt_listener), 2)
        self.assertIn(("process_resident_memory_bytes", frozenset()), after)

    @inlineCallbacks
    def test_retained_and_dropped(self) -> None:
        """The retained count follows a retained PUBLISH and its deletion."""
        publisher = yield self.paho("r-pub")
        _, _, text = yield self.scrape()
        base = value(parse(text), "mqtt_retained_messages")
        yield publisher.publish("r/a", b"kept", 1, retain=True)
        _, _, text = yield self.scrape()
        self.assertEqual(value(parse(text), "mqtt_retained_messages"), base + 1)
        yield publisher.publish("r/a", b"", 1, retain=True)
        _, _, text = yield self.scrape()
        self.assertEqual(value(parse(text), "mqtt_retained_messages"), base)

    @inlineCallbacks
    def test_openmetrics_and_404(self) -> None:
        """A scraper asking for OpenMetrics gets it (ending in # EOF); other paths 404."""
        status, headers, text = yield self.scrape(
            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/openmetrics-text"))
        self.assertTrue(text.endswith("# EOF\n"))
        status, _, _ = yield self.scrape(f"http://127.0.0.1:{self.metrics_port}/nothing")
        self.assertEqual(status, 404)

    @inlineCallbacks
    def test_http_adapter_metrics(self) -> None:
        """GET /metrics on the HTTP adapter (an anonymous broker: anyone) serves the same
        metrics, and curl gets them too; the answer follows docs/openapi.json."""
        code, _, body = yield self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        samples = parse(body.decode())
        self.assertIn(("mqtt_connects_total", frozenset()), samples)
        status, _, body = yield self.curl(path="/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"mqtt_messages_received_total{qos=\"0\"}", body)


class AdminMetricsTests(_MetricsBroker):
    """With --auth passwd and --admin-user carol: /metrics on the HTTP adapter is hers."""

    settings = BrokerSettings(admin_users=frozenset({"carol"}))

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.authenticator = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "f"),
                                                       reactor=reactor)
        return super().setUp()

    @inlineCallbacks
    def test_only_admins(self) -> None:
        """No credentials: 401 with the challenge; alice: 403; carol: 200."""
        code, headers, _ = yield self.request("GET", "/metrics")
        self.assertEqual(code, 401)
        self.assertIn("www-authenticate", headers)
        code, _, _ = yield self.curl("-u", "alice:secret1", path="/metrics")
        self.assertEqual(code, 403)
        code, _, body = yield self.curl("-u", "carol:c3", path="/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"mqtt_connects_total", body)

    @inlineCallbacks
    def test_refusals_by_reason(self) -> None:
        """A wrong password is counted under bad_user_name_or_password."""
        _, _, text = yield self.scrape()
        before = parse(text).get(("mqtt_connect_refusals_total", frozenset(
            {("reason", "bad_user_name_or_password")})), 0)
        client = PahoClient(self.reactor, self.mqtt_port, "r1", username="alice",
                            password="wrong")
        self.addCleanup(client.stop)
        result = yield client.connect()
        self.assertNotEqual(result.rc, 0)
        _, _, text = yield self.scrape()
        self.assertEqual(value(parse(text), "mqtt_connect_refusals_total",
                               reason="bad_user_name_or_password"), before + 1)


class CounterTests(SynchronousTestCase):
    """The counters behind the metrics, without sockets."""

    def test_interfaces(self) -> None:
        """The adapter and the admin object provide their interfaces."""
        verifyObject(IStreamAdapter, metricsAdapter)
        verifyObject(IListenerChecker, metricsAdapter)
        from mqtt_twisted.testing import make_broker

        verifyObject(IBrokerAdmin, BrokerAdmin(make_broker()[0]))

    def test_store_latency_sampled(self) -> None:
        """One pending store write in LATENCY_SAMPLE is timed into its bucket; writes
        complete at once (the memory store) are neither counted nor timed."""
        clock, stats = Clock(), BrokerStats()
        journal = Journal(object(), stats, clock)
        pending = [Deferred() for _ in range(LATENCY_SAMPLE * 2)]
        for d in pending:
            journal.persist(d)
        journal.persist(succeed(None))
        clock.advance(0.003)
        for d in pending:
            d.callback(None)
        self.assertEqual(stats.store_writes, LATENCY_SAMPLE * 2)
        self.assertEqual(stats.store_latency.count, 2)
        buckets = dict(stats.store_latency.cumulative())
        self.assertEqual(buckets[0.0025], 0)
        self.assertEqual(buckets[0.005], 2)
        self.assertEqual(buckets[float("inf")], 2)

    def test_top_topics_sampled_and_decaying(self) -> None:
        """Topics noted (one message in TOPIC_SAMPLE) rank by count, $SYS left out, and
        old counts halve every ``decay`` notes so new traffic overtakes them."""
        from mqtt_twisted.core.stats import TOPIC_SAMPLE, TopicSample

        sample = TopicSample(decay=8)
        for topic in ["old"] * 6 + ["$SYS/broker/uptime"]:
            sample.note(topic)
        self.assertEqual(sample.top(), [("old", 6 * TOPIC_SAMPLE)])
        sample.note("new")  # the 8th note: counts halve
        for _ in range(4):
            sample.note("new")
        self.assertEqual([t for t, _ in sample.top()], ["new", "old"])

    def test_outages_counted(self) -> None:
        """An outage is counted once however many connections go down, with its length."""
        clock = Clock()
        outage = OutageLog(clock, Logger(), "Redis")
        outage.down("a", "refused")
        outage.down("b", "refused")
        clock.advance(2.5)
        outage.up("a")
        outage.up("b")
        self.assertEqual((outage.outages, outage.outage_seconds), (1, 2.5))


class TapTests(SynchronousTestCase):
    """``twistd mqttbroker --listen metrics=...``."""

    def test_listen_metrics(self) -> None:
        """``metrics=tcp:...`` is a listener kind: parsed, checked, built into the service;
        a key it does not know is a usage error naming it."""
        from twisted.internet.testing import MemoryReactorClock
        from twisted.python.usage import UsageError

        from mqtt_twisted.tap import Options, makeService

        options = Options()
        options.parseOptions(["--listen", "metrics=tcp:9100:interface=127.0.0.1"])
        service = makeService(options, MemoryReactorClock())
        self.assertIn("metrics=tcp:9100:interface=127.0.0.1",
                      [s.name for s in service._listeners])
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--listen", "metrics=tcp:9100:path=/x"])
        self.assertIn("path", str(caught.exception))


class TwistdMetricsTests(TwistdTestCase):
    """A real ``twistd mqttbroker --listen metrics=...`` process, scraped by curl."""

    @inlineCallbacks
    def test_twistd_metrics_listener(self) -> None:
        """The metrics adapter is found as a plugin by twistd; after a paho publish the
        scrape (curl, parsed by prometheus-client) counts it."""
        from twisted.internet.utils import getProcessOutputAndValue

        from tests.redisserver import free_port

        mqtt, metrics = free_port(), free_port()
        proc = self.twistd("-n", "--pidfile=", "mqttbroker", "--sys-interval", "0",
                           "--listen", _listen(mqtt),
                           "--listen", f"metrics={_listen(metrics)}")
        yield self.wait_for_port(metrics, proc)
        client = PahoClient(self.reactor, mqtt, "twistd-pub")
        self.addCleanup(client.stop)
        yield client.connect()
        yield client.publish("t/x", b"hello", 1)
        out, err, code = yield getProcessOutputAndValue(
            "curl", ["-s", "-m", "10", f"http://127.0.0.1:{metrics}/metrics"],
            env={"NO_PROXY": "*"}, reactor=self.reactor)
        self.assertEqual(code, 0, err)
        samples = parse(out.decode())
        self.assertEqual(value(samples, "mqtt_messages_received_total", qos="1"), 1)
        self.assertEqual(value(samples, "mqtt_connections", adapter="mqtt",
                               protocol="mqtt3.1.1"), 1)


class RedisMetricsTests(_MetricsBroker):
    """With the Redis store (a real redis-server): the store latency histogram fills,
    and an outage shows in mqtt_store_up and is counted once."""

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        from tests.redisserver import RedisServer, temp_dir

        self.redis = RedisServer(reactor, temp_dir(self))
        yield self.redis.start()
        self.addCleanup(self.redis.stop)
        yield super().setUp()
        # Cleanups run last first: the broker stops while Redis still runs.
        self.addCleanup(HTTPBrokerTestCase.tearDown, self)

    def tearDown(self) -> None:
        pass  # (in a cleanup, above)

    def make_store(self) -> Any:
        from twisted.internet import reactor

        from mqtt_twisted.store.redis import RedisStore

        return RedisStore.fromURL(reactor, self.redis.url(timeout=2))

    @inlineCallbacks
    def samples(self) -> Any:
        _, _, text = yield self.scrape()
        return parse(text)

    @inlineCallbacks
    def test_store_latency_and_outage(self) -> None:
        """QoS 1 messages for a persistent session are store writes, one in 16 timed into
        the histogram; Redis stopped: mqtt_store_up 0 and one outage; back: 1 again and
        the outage's seconds counted."""
        sub = yield self.paho("redis-sub", clean_session=False)
        yield sub.subscribe(("q/#", 1))
        pub = yield self.paho("redis-pub")
        for i in range(40):
            yield pub.publish("q/x", b"%d" % i, 1)
        yield sub.collect(40)
        samples = yield self.samples()
        self.assertGreaterEqual(value(samples, "mqtt_store_writes_total"), 40)
        count = value(samples, "mqtt_store_latency_seconds_count")
        self.assertGreaterEqual(count, 2)
        self.assertEqual(value(samples, "mqtt_store_latency_seconds_bucket", le="+Inf"), count)
        self.assertGreater(value(samples, "mqtt_store_latency_seconds_sum"), 0)
        self.assertEqual(value(samples, "mqtt_store_up"), 1)
        self.assertEqual(value(samples, "mqtt_store_outages_total"), 0)

        yield self.redis.stop()
        state: dict[str, Any] = {}

        @inlineCallbacks
        def store_is(up: int) -> Any:
            for _ in range(300):
                state["samples"] = yield self.samples()
                if value(state["samples"], "mqtt_store_up") == up:
                    return
                yield self.sleep(0.1)
            self.fail(f"mqtt_store_up never became {up}")

        yield store_is(0)
        self.assertEqual(value(state["samples"], "mqtt_store_outages_total"), 1)
        yield self.redis.start()
        yield store_is(1)
        self.assertEqual(value(state["samples"], "mqtt_store_outages_total"), 1)
        self.assertGreater(value(state["samples"], "mqtt_store_outage_seconds_total"), 0)
