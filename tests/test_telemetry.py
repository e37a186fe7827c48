"""The telemetry example (examples/telemetry_client): its configuration checks, and the
real script as a subprocess against the broker over WSS with a CA and tokens made here."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.auth.jwt import JWTAuthenticator, KeySource
from mqtt_twisted.codec import ConnAck, Connect, Publish
from tests.certs import CA, temp_dir
from tests.pahoclient import connect_raw
from tests.securebroker import SecureBrokerTestCase, spawn, within

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "examples" / "telemetry_client" / "main.py"
SECRET = b"telemetry test secret, 32 bytes or more"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("telemetry_main", MAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


telemetry = load_example()


def token(expires_in: float = 600, secret: bytes = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": "dashboard", "exp": time.time() + expires_in, **claims}, secret,
                      algorithm="HS256")


class ConfigTests(SynchronousTestCase):
    """URL parsing, topic parsing and the configuration checks, without a broker."""

    def test_broker_url(self) -> None:
        """wss://host:port/path is split; defaults are port 443 (80 for ws://) and /mqtt."""
        self.assertEqual(telemetry.parse_broker_url("wss://b.example:8443/mqtt"),
                         ("b.example", 8443, "/mqtt", True))
        self.assertEqual(telemetry.parse_broker_url("wss://b.example"),
                         ("b.example", 443, "/mqtt", True))
        self.assertEqual(telemetry.parse_broker_url("ws://[::1]:8080/ws?x=1"),
                         ("::1", 8080, "/ws?x=1", False))
        for bad, text in (("mqtts://b:8883", "must start with wss://"),
                          ("wss://:8443/mqtt", "no host"), ("wss://b:port/", "bad port")):
            e = self.assertRaises(ValueError, telemetry.parse_broker_url, bad)
            self.assertIn(text, str(e))

    def test_topics(self) -> None:
        """devices/<device_id>/<sensor_type> is parsed; other shapes are not."""
        self.assertEqual(telemetry.parse_topic("devices/d-1/temperature"), ("d-1", "temperature"))
        for topic in ("devices/d-1", "devices/d-1/t/x", "sensors/d/t", "devices//t"):
            self.assertIsNone(telemetry.parse_topic(topic), topic)

    def test_valid_config(self) -> None:
        """A complete configuration loads; client id and user name default sensibly."""
        config = telemetry.load_config({"MQTT_BROKER_URL": "wss://b:8443/mqtt",
                                        "MQTT_TOKEN": token()})
        self.assertTrue(config.client_id.startswith("telemetry-"))
        self.assertEqual((config.username, config.topic, config.qos, config.url),
                         (config.client_id, "devices/+/+", 1, "wss://b:8443/mqtt"))

    def test_every_problem_listed(self) -> None:
        """Missing, malformed and contradictory settings are all reported at once."""
        e = self.assertRaises(telemetry.ConfigError, telemetry.load_config, {
            "MQTT_TOPIC": "devices/#/x", "MQTT_QOS": "3", "MQTT_TLS_INSECURE": "maybe",
            "MQTT_CA_FILE": "/nonexistent/ca.pem"})
        text = "\n".join(e.problems)
        for expected in ("MQTT_BROKER_URL is not set", "MQTT_TOKEN is not set",
                         "'#' must be a whole last level", "MQTT_QOS must be between 0 and 2",
                         "MQTT_TLS_INSECURE must be true or false",
                         "MQTT_CA_FILE '/nonexistent/ca.pem' does not exist"):
            self.assertIn(expected, text)

    def test_expired_token(self) -> None:
        """A JWT whose exp has passed is refused before connecting, with its expiry time."""
        e = self.assertRaises(telemetry.ConfigError, telemetry.load_config, {
            "MQTT_BROKER_URL": "wss://b", "MQTT_TOKEN": token(expires_in=-60)})
        self.assertIn("MQTT_TOKEN expired at", e.problems[0])

    def test_insecure_and_ca_contradict(self) -> None:
        """MQTT_CA_FILE with MQTT_TLS_INSECURE=true, or either with ws://, is an error."""
        ca = CA(temp_dir(self)).cert_path
        e = self.assertRaises(telemetry.ConfigError, telemetry.load_config, {
            "MQTT_BROKER_URL": "wss://b", "MQTT_TOKEN": "t", "MQTT_CA_FILE": ca,
            "MQTT_TLS_INSECURE": "true"})
        self.assertIn("contradict", e.problems[0])
        e = self.assertRaises(telemetry.ConfigError, telemetry.load_config, {
            "MQTT_BROKER_URL": "ws://b", "MQTT_TOKEN": "t", "MQTT_TLS_INSECURE": "1"})
        self.assertIn("need a wss:// URL", e.problems[0])


class TelemetryProcessTests(SecureBrokerTestCase):
    """examples/telemetry_client/main.py run as a subprocess against a WSS broker."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.dir = temp_dir(self)
        self.ca = CA(self.dir)
        server = self.ca.issue("broker", server=True)
        self.wss = (f"ws=ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
                    f":certKey={server.cert_path}")

    @inlineCallbacks
    def broker(self) -> Any:
        """A broker with --auth jwt (HS256) serving WSS and plain TCP; (wss port, tcp port)."""
        auth = JWTAuthenticator(KeySource.from_secret(SECRET), clock=self.reactor.seconds)
        ports = yield self.start(self.wss, "tcp:0:interface=127.0.0.1", authenticator=auth,
                                 authorizer=auth)
        return ports

    def run_client(self, wss_port: int, **settings: str) -> Any:
        """Write a .env and start main.py with it (environment without MQTT_* variables)."""
        values = {"MQTT_BROKER_URL": f"wss://127.0.0.1:{wss_port}/mqtt",
                  "MQTT_TOKEN": token(), "MQTT_CLIENT_ID": "dashboard-1",
                  "MQTT_TOPIC": "devices/+/+", "MQTT_CA_FILE": self.ca.cert_path,
                  "MQTT_RECONNECT_MIN": "1", "MQTT_RECONNECT_MAX": "2", **settings}
        env_file = os.path.join(self.dir, ".env")
        with open(env_file, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in values.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "TELEMETRY_"))}
        env.update(PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")
        return spawn(self, self.reactor, [sys.executable, str(MAIN), "--env-file", env_file],
                     env=env, path=self.dir)

    @inlineCallbacks
    def publisher(self, tcp_port: int) -> Any:
        raw = yield connect_raw(self.reactor, tcp_port)
        self.addCleanup(raw.abort)
        raw.send(Connect("sensor-gateway", 4, True, 0, None, "gw", token().encode()))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, 0)
        return raw

    @inlineCallbacks
    def until(self, predicate: Any, seconds: float, what: str) -> Any:
        """Poll ``predicate`` every 50 ms; fail after ``seconds``."""
        from twisted.internet.task import deferLater

        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.fail(f"timed out after {seconds}s waiting for {what}")

    @inlineCallbacks
    def test_receives_over_wss_and_stops_on_sigterm(self) -> None:
        """The client subscribes over WSS (test CA, JWT), gets JSON readings a TCP client
        publishes as process_message lines, skips non-JSON, and exits 0 on SIGTERM."""
        wss_port, tcp_port = yield self.broker()
        client = self.run_client(wss_port)
        yield within(client.seen("subscribed to devices/+/+"), self.reactor, 20,
                     f"the client to subscribe:\n{client.text}")
        gateway = yield self.publisher(tcp_port)
        gateway.send(Publish("devices/dev-7/raw", b"not json", 0, False, False, None))
        gateway.send(Publish("devices/dev-7/temperature", b'{"celsius": 21.5}', 1, False,
                             False, 1))
        yield within(client.seen('device=dev-7 sensor=temperature data={"celsius": 21.5}'),
                     self.reactor, 10, f"the reading:\n{client.text}")
        self.assertIn("ignoring devices/dev-7/raw: payload is not JSON", client.text)
        client.transport.signalProcess("TERM")
        code = yield within(client.ended, self.reactor, 10, "the client to exit")
        self.assertEqual(code, 0, client.text)
        self.assertIn("SIGTERM received, shutting down", client.text)
        self.assertIn("stopped", client.text)
        self.assertNotIn("Traceback", client.text)

    @inlineCallbacks
    def test_reconnects_after_the_broker_drops_it(self) -> None:
        """Dropped by the broker, the client reconnects with backoff and subscribes again."""
        wss_port, tcp_port = yield self.broker()
        client = self.run_client(wss_port)
        yield within(client.seen("subscribed to devices/+/+"), self.reactor, 20,
                     f"the client to subscribe:\n{client.text}")
        self.service.gateway.closeSession("dashboard-1")
        yield within(client.seen("reconnecting with backoff"), self.reactor, 10,
                     f"the client to notice:\n{client.text}")
        yield self.until(lambda: client.text.count("subscribed to devices/+/+") == 2, 15,
                         f"the client to subscribe again:\n{client.text}")
        gateway = yield self.publisher(tcp_port)
        gateway.send(Publish("devices/d2/humidity", b"55", 0, False, False, None))
        yield within(client.seen('device=d2 sensor=humidity data={"value": 55}'), self.reactor,
                     10, f"the reading after the reconnect:\n{client.text}")
        client.transport.signalProcess(signal.SIGINT)
        self.assertEqual((yield within(client.ended, self.reactor, 10, "exit")), 0, client.text)

    @inlineCallbacks
    def test_bad_token_refused(self) -> None:
        """A token signed with another secret is refused by the broker (CONNACK 0x04); the
        client says so and exits 3 instead of retrying forever."""
        wss_port, _ = yield self.broker()
        client = self.run_client(wss_port, MQTT_TOKEN=token(secret=b"x" * 40))
        code = yield within(client.ended, self.reactor, 20, f"the client to give up:\n"
                                                                f"{client.text}")
        self.assertEqual(code, 3, client.text)
        self.assertIn("authentication failed (CONNACK 0x86): check MQTT_TOKEN", client.text)

    @inlineCallbacks
    def test_config_error_exits_2(self) -> None:
        """A bad configuration ends the client with exit status 2 and the problems listed."""
        client = self.run_client(1, MQTT_BROKER_URL="https://broker.example", MQTT_QOS="x")
        code = yield within(client.ended, self.reactor, 20, "the client to exit")
        self.assertEqual(code, 2, client.text)
        self.assertIn("configuration error:", client.text)
        self.assertIn("MQTT_BROKER_URL must start with wss://", client.text)
        self.assertIn("MQTT_QOS must be a whole number", client.text)
