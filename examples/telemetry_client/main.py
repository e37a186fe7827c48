#!/usr/bin/env python3
"""Telemetry subscriber: paho-mqtt over secure WebSocket (WSS), configured by a .env file.

Subscribes to ``devices/<device_id>/<sensor_type>`` topics and hands each JSON
payload to :meth:`TelemetryClient.process_message`.  Reconnects with exponential
backoff, stops cleanly (exit status 0) on SIGINT or SIGTERM.

    python main.py [--env-file PATH]

Exit status: 0 stopped by a signal, 2 bad configuration, 3 the broker refused the
token.  See README.md for the settings.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from dotenv import load_dotenv

log = logging.getLogger("telemetry")

EXIT_OK, EXIT_CONFIG, EXIT_AUTH = 0, 2, 3
#: CONNACK codes meaning "your credentials are wrong": v3.1.1 (4, 5) and v5 (0x86, 0x87).
AUTH_FAILURES = {4, 5, 0x86, 0x87}
TOPIC_PREFIX = "devices"


class ConfigError(Exception):
    """The configuration cannot work; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    """Everything the client needs, validated."""

    host: str
    port: int
    path: str
    tls: bool
    token: str
    username: str
    client_id: str
    topic: str
    qos: int = 1
    ca_file: str | None = None
    insecure: bool = False
    keepalive: int = 60
    reconnect_min: int = 1
    reconnect_max: int = 60
    protocol: int = mqtt.MQTTv311

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{self.path}"


def parse_broker_url(url: str) -> tuple[str, int, str, bool]:
    """``wss://host[:port][/path]`` -> (host, port, path, tls); ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("wss", "ws"):
        raise ValueError(f"MQTT_BROKER_URL must start with wss:// (or ws:// for a local test "
                         f"broker), not {url!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT_BROKER_URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"MQTT_BROKER_URL has a bad port: {url!r}") from None
    tls = parts.scheme == "wss"
    path = parts.path or "/mqtt"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port or (443 if tls else 80), path, tls


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (read, not verified: the broker verifies), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def topic_filter_problem(topic: str) -> str | None:
    if not topic:
        return "MQTT_TOPIC is empty"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"MQTT_TOPIC {topic!r}: '#' must be a whole last level"
        if "+" in level and level != "+":
            return f"MQTT_TOPIC {topic!r}: '+' must be a whole level"
    return None


def _flag(env: dict[str, str], name: str, problems: list[str]) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    problems.append(f"{name} must be true or false, not {env[name]!r}")
    return False


def _int(env: dict[str, str], name: str, default: int, low: int, high: int,
         problems: list[str]) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be a whole number, not {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{name} must be between {low} and {high}, not {value}")
    return value


def load_config(env: dict[str, str], now: float | None = None) -> Config:
    """Read and check the MQTT_* settings; ConfigError lists every problem at once."""
    problems: list[str] = []
    host, port, path, tls = "", 0, "/mqtt", True
    url = env.get("MQTT_BROKER_URL", "").strip()
    if not url:
        problems.append("MQTT_BROKER_URL is not set (e.g. wss://broker.example.com:8443/mqtt)")
    else:
        try:
            host, port, path, tls = parse_broker_url(url)
        except ValueError as e:
            problems.append(str(e))
    token = env.get("MQTT_TOKEN", "").strip()
    if not token:
        problems.append("MQTT_TOKEN is not set (the access token the broker expects as the "
                        "password)")
    elif any(c.isspace() for c in token):
        problems.append("MQTT_TOKEN contains white space: copy the token again")
    else:
        exp = token_expiry(token)
        if exp is not None and exp <= (now if now is not None else time.time()):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp))
            problems.append(f"MQTT_TOKEN expired at {when}: get a new one")
    client_id = env.get("MQTT_CLIENT_ID", "").strip() or f"telemetry-{uuid.uuid4().hex[:8]}"
    if len(client_id.encode()) > 65535:
        problems.append("MQTT_CLIENT_ID is too long")
    topic = env.get("MQTT_TOPIC", "").strip() or f"{TOPIC_PREFIX}/+/+"
    problem = topic_filter_problem(topic)
    if problem:
        problems.append(problem)
    ca_file = env.get("MQTT_CA_FILE", "").strip() or None
    insecure = _flag(env, "MQTT_TLS_INSECURE", problems)
    if ca_file and not os.path.isfile(ca_file):
        problems.append(f"MQTT_CA_FILE {ca_file!r} does not exist")
    if ca_file and insecure:
        problems.append("MQTT_CA_FILE and MQTT_TLS_INSECURE=true contradict each other: "
                        "choose one")
    if not tls and (ca_file or insecure):
        problems.append("MQTT_CA_FILE / MQTT_TLS_INSECURE need a wss:// URL")
    qos = _int(env, "MQTT_QOS", 1, 0, 2, problems)
    keepalive = _int(env, "MQTT_KEEPALIVE", 60, 5, 65535, problems)
    reconnect_min = _int(env, "MQTT_RECONNECT_MIN", 1, 1, 3600, problems)
    reconnect_max = _int(env, "MQTT_RECONNECT_MAX", 60, 1, 86400, problems)
    if reconnect_max < reconnect_min:
        problems.append("MQTT_RECONNECT_MAX must not be below MQTT_RECONNECT_MIN")
    version = env.get("MQTT_PROTOCOL", "3.1.1").strip()
    if version not in ("3.1.1", "5"):
        problems.append(f"MQTT_PROTOCOL must be 3.1.1 or 5, not {version!r}")
    if problems:
        raise ConfigError(problems)
    return Config(host, port, path, tls, token,
                  env.get("MQTT_USERNAME", "").strip() or client_id, client_id, topic, qos,
                  ca_file, insecure, keepalive, reconnect_min, reconnect_max,
                  mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311)


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``devices/<device_id>/<sensor_type>`` -> (device_id, sensor_type); None otherwise."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _code(rc: Any) -> int:
    """A CONNACK/DISCONNECT code as an int: paho 1.x passes ints, 2.x ReasonCode objects."""
    return rc if isinstance(rc, int) else int(getattr(rc, "value", 0))


class TelemetryClient:
    """Subscribes over WSS and feeds ``process_message``; ``run()`` blocks until stopped."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.exit_code = EXIT_OK
        self._stop = threading.Event()
        self.client = self._make_client()
        self.client.username_pw_set(config.username, config.token)
        self.client.ws_set_options(path=config.path)
        if config.tls:
            self.client.tls_set_context(self._tls_context())
            if config.insecure:
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(config.reconnect_min, config.reconnect_max)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _make_client(self) -> mqtt.Client:
        kwargs = {"client_id": self.config.client_id, "transport": "websockets",
                  "protocol": self.config.protocol}
        try:  # paho-mqtt 2.x
            return mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        except AttributeError:  # paho-mqtt 1.x: no CallbackAPIVersion
            return mqtt.Client(**kwargs)

    def _tls_context(self) -> ssl.SSLContext:
        if self.config.insecure:
            log.warning("MQTT_TLS_INSECURE=true: the broker's certificate is NOT verified "
                        "(development only)")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        # The system's CAs, or only the given CA file.
        context = ssl.create_default_context(cafile=self.config.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    # --- paho callbacks (paho's network thread); signatures fit paho 1.x and 2.x -------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                    properties: Any = None) -> None:
        code = _code(rc)
        if code == 0:
            log.info("connected to %s as %s", self.config.url, self.config.client_id)
            client.subscribe(self.config.topic, qos=self.config.qos)
        elif code in AUTH_FAILURES:
            log.error("authentication failed (CONNACK %#x): check MQTT_TOKEN", code)
            self.exit_code = EXIT_AUTH
            self._stop.set()
        else:
            log.warning("connection refused (CONNACK %#x); retrying", code)

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        # paho 1.x: (rc); 2.x: (flags, reason_code, properties)
        code = _code(args[1] if len(args) >= 2 else args[0] if args else 0)
        if not self._stop.is_set():
            log.warning("disconnected (%#x); reconnecting with backoff (%d..%d s)", code,
                        self.config.reconnect_min, self.config.reconnect_max)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, granted: Any,
                      properties: Any = None) -> None:
        codes = [_code(g) for g in granted]
        if any(c >= 0x80 for c in codes):
            log.error("subscription to %s refused (%s)", self.config.topic, codes)
        else:
            log.info("subscribed to %s (QoS %s)", self.config.topic, codes[0])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parsed = parse_topic(msg.topic)
        if parsed is None:
            log.debug("ignoring %s: not devices/<device_id>/<sensor_type>", msg.topic)
            return
        try:
            data = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring %s: payload is not JSON", msg.topic)
            return
        if not isinstance(data, dict):
            data = {"value": data}
        try:
            self.process_message(*parsed, data)
        except Exception:
            log.exception("process_message failed for %s", msg.topic)

    # --- the part to adapt ------------------------------------------------------------

    def process_message(self, device_id: str, sensor_type: str, data: dict[str, Any]) -> None:
        """Handle one reading; replace with your own processing (store, forward, alert)."""
        log.info("device=%s sensor=%s data=%s", device_id, sensor_type,
                 json.dumps(data, sort_keys=True))

    # --- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run()`` to disconnect and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Connect (retrying with backoff), then process messages until stopped."""
        log.info("connecting to %s", self.config.url)
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self.client.loop_start()  # paho's thread retries the first connection too
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        log.info("stopped")
        return self.exit_code


def install_signal_handlers(client: TelemetryClient) -> None:
    """SIGINT and SIGTERM stop the client cleanly; the handler only sets a flag, so it
    never runs paho code in the middle of paho code."""
    def handler(signum: int, frame: Any) -> None:
        log.info("%s received, shutting down", signal.Signals(signum).name)
        client.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", default=os.environ.get("TELEMETRY_ENV_FILE", ".env"),
                        help="settings file (default: .env); variables already set in the "
                             "environment win")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    if os.path.exists(args.env_file):
        load_dotenv(args.env_file, override=False)
    elif args.env_file != ".env":
        print(f"configuration error: --env-file {args.env_file} does not exist",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(dict(os.environ))
    except ConfigError as e:
        print("configuration error:", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        print("see .env.example", file=sys.stderr)
        return EXIT_CONFIG
    client = TelemetryClient(config)
    install_signal_handlers(client)
    return client.run()


if __name__ == "__main__":
    sys.exit(main())
