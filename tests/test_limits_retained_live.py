"""Issue 14: one client must not fill the retained quota for everyone.  Against a real
``twistd`` broker with paho (MQTT 5) and mosquitto_sub: past ``--max-retained-per-client``
a client's retained PUBLISH gets PUBACK 0x97 and is not kept, while another client
still retains, and a new subscriber gets exactly what was kept (docs/limits.md)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from tests.livebroker import LiveBroker

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def publish_retained(port: int, client_id: str, topics: list[str]) -> list[int]:
    """Publish one retained QoS 1 message per topic; the PUBACK reason codes, in order
    (a success with nobody subscribed, 0x10, as 0)."""
    codes: dict[int, int] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)

    def on_publish(client: mqtt.Client, userdata: object, mid: int, reason: object,
                   properties: Properties) -> None:
        codes[mid] = int(reason.value)  # type: ignore[attr-defined]
        if len(codes) == len(topics):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        mids = [client.publish(topic, b"v", qos=1, retain=True).mid for topic in topics]
        assert done.wait(10), codes
    finally:
        client.disconnect()
        client.loop_stop()
    return [0 if codes[mid] == 0x10 else codes[mid] for mid in mids]


def test_a_client_past_its_retained_share_gets_0x97(tmp_path: Path) -> None:
    broker = LiveBroker(tmp_path, "--max-retained-per-client", "2")
    try:
        assert publish_retained(broker.port, "hog", ["r/1", "r/2", "r/3", "r/2"]) == [
            0, 0, 0x97, 0]
        assert publish_retained(broker.port, "other", ["r/3"]) == [0]
        got = subprocess.run(
            [MOSQUITTO_SUB, "-p", str(broker.port), "-t", "r/#", "-v", "--retained-only",
             "-W", "2"], capture_output=True, text=True, timeout=20).stdout
        assert sorted(got.split()) == sorted(["r/1", "v", "r/2", "v", "r/3", "v"]), got
        assert broker.alive() and not broker.unhandled()
    finally:
        broker.stop()


@pytest.mark.parametrize("value", ["-1", "x"])
def test_a_bad_value_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """A one-line usage error and a non-zero exit, as for every other limit."""
    from tests.livebroker import _env, twistd_command

    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen", "tcp:0",
         "--max-retained-per-client", value], env=_env(), cwd=tmp_path,
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "max-retained-per-client" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
