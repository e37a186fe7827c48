"""The reconnecting client service against a broker stopped and started again mid-stream:
our broker as a real ``twistd mqttbroker`` process on a Redis store, and a real Mosquitto
with persistence.  A publisher and a persistent subscriber, both services, ride out the
restart: every publish is acknowledged, every message arrives."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from mqtt_twisted.client.service import MQTTClientService, backoff
from tests.redisserver import RedisServer, free_port
from tests.securebroker import spawn, within
from tests.test_twistd_run import TwistdTestCase, _listen

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT = 20.0
COUNT, STOP_AT, START_AT = 300, 100, 150


class RestartMixin:
    """``start()``/``stop()`` a broker on ``self.port``; the test is the same for each."""

    reactor: Any
    port: int

    def service(self, client_id: str, **options: Any) -> MQTTClientService:
        service = MQTTClientService(self.reactor, f"tcp:127.0.0.1:{self.port}", client_id,
                                    clean_start=False, retry_policy=backoff(0.1, 0.5, 2.0),
                                    **options)
        service.startService()
        self.addCleanup(service.stopService)  # type: ignore[attr-defined]
        return service

    @inlineCallbacks
    def test_restart_mid_stream(self) -> Any:
        """300 QoS 1 publishes at a steady pace; the broker is stopped after the 100th and
        started again after the 150th: every publish Deferred fires with PUBACK 0 (none
        fails), and the persistent subscriber gets all 300."""
        received: set[bytes] = set()
        subscriber = self.service("svc-sub", on_message=lambda m: received.add(m.payload))
        yield within(subscriber.subscribe("svc/#", 1), self.reactor, WAIT, "the SUBACK")
        publisher = self.service("svc-pub")
        results = []
        for n in range(COUNT):
            results.append(publisher.publish(f"svc/{n}", str(n).encode(), 1))
            if n == STOP_AT:
                yield self.stop()
            if n == START_AT:
                self.assertFalse(publisher.online)
                self.assertGreater(publisher.queued, 0)
                yield self.start()
            yield deferLater(self.reactor, 0.005, lambda: None)
        codes = yield within(gatherResults(results), self.reactor, WAIT, "every PUBACK")
        self.assertEqual(set(codes), {0})
        wanted = {str(n).encode() for n in range(COUNT)}
        for _ in range(int(WAIT / 0.05)):
            if wanted <= received:
                break
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.assertEqual(sorted(wanted - received, key=int), [])  # type: ignore[attr-defined]
        self.assertGreaterEqual(publisher.connections, 2)
        self.assertGreaterEqual(subscriber.connections, 2)


class OurBrokerRestartTests(RestartMixin, TwistdTestCase):
    """Our broker, a real twistd on a real Redis (sessions and queues survive a stop)."""

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.dir = self.directory()
        self.redis = RedisServer(self.reactor, str(self.dir / "redis"))
        try:
            yield self.redis.start()
        except (OSError, RuntimeError) as e:
            raise SkipTest(f"redis-server: {e}") from None
        self.addCleanup(self.redis.stop, "KILL")
        self.port = free_port()
        yield self.start()

    @inlineCallbacks
    def start(self) -> Any:
        self.broker = self.twistd("-n", "--pidfile=", "mqttbroker", "--listen",
                                  _listen(self.port), "--sys-interval", "0",
                                  "--store", self.redis.url(), cwd=self.dir)
        yield self.wait_for_port(self.port, self.broker)

    def stop(self) -> Deferred[Any]:
        self.broker.transport.signalProcess("TERM")
        return within(self.broker.ended, self.reactor, WAIT, "twistd to stop")


class MosquittoRestartTests(RestartMixin, TwistdTestCase):
    """A real Mosquitto with persistence (saved when it stops)."""

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        if not os.access(MOSQUITTO, os.X_OK):
            raise SkipTest("mosquitto is not installed (scripts/test installs it)")
        self.dir = self.directory()
        self.port = free_port()
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {self.dir}/\n")
        yield self.start()

    @inlineCallbacks
    def start(self) -> Any:
        self.mosquitto = spawn(self, self.reactor, [MOSQUITTO, "-c", str(self.conf)],
                               env=dict(os.environ), path=str(self.dir))
        yield self.wait_for_port(self.port, self.mosquitto)

    def stop(self) -> Deferred[Any]:
        self.mosquitto.transport.signalProcess("TERM")
        return within(self.mosquitto.ended, self.reactor, WAIT, "mosquitto to stop")
