"""Wills of a killed node's clients (issue 16, part 2): the adopter publishes each
once, those of clean sessions too (``mqtt_twisted/cluster/wills.py``), a v5 will
delay included.

Real ``twistd`` nodes on a real redis-server, killed with SIGKILL; paho clients.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import LEASE_WAIT, WAIT, Client, Redis, redis

__all__ = ["redis"]  # the fixture, used by name


def will_client(port: int, client_id: str, topic: str, *, v5_expiry: int | None = None,
                delay: int = 0) -> mqtt.Client:
    """A client with a will on ``topic`` (v3.1.1 clean session, or v5 with an expiry
    and a will delay), connected, its network loop running."""
    if v5_expiry is None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.will_set(topic, client_id.encode(), 1)
        client.connect("127.0.0.1", port)
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.WillDelayInterval = delay
        client.will_set(topic, client_id.encode(), 1, properties=will_props)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = v5_expiry
        client.connect("127.0.0.1", port, clean_start=v5_expiry == 0, properties=props)
    client.reconnect_delay_set(60, 120)
    client.loop_start()
    deadline = time.monotonic() + WAIT
    while not client.is_connected():
        assert time.monotonic() < deadline, "paho did not connect"
        time.sleep(0.01)
    return client


@pytest.mark.slow
def test_killed_node_wills_once(tmp_path: Path, redis: Redis) -> None:
    """``kill -9`` of node B: the wills of its clean-session clients (v3.1.1 and v5
    session expiry 0) are published once, by a survivor, soon after the adoption; a v5
    persistent client's will with a 4 s delay comes 4 s later, once; a client that
    disconnected normally has no will, and none stays kept in Redis."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    paho: list[mqtt.Client] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
        watcher = Client(nodes["A"].port, "watcher")
        made.append(watcher)
        watcher.subscribe("wills/#", 1)
        b = nodes["B"].port
        paho += [will_client(b, "clean3", "wills/clean3"),
                 will_client(b, "clean5", "wills/clean5", v5_expiry=0),
                 will_client(b, "delayed", "wills/delayed", v5_expiry=300, delay=4)]
        polite = will_client(b, "polite", "wills/polite")
        polite.disconnect()  # a normal DISCONNECT: no will, and it is no longer kept
        polite.loop_stop()
        deadline = time.monotonic() + WAIT
        while redis.cli("HKEYS", "mqtt:cluster:wills:B").split() != ["clean3", "clean5"]:
            assert time.monotonic() < deadline, redis.cli("HKEYS", "mqtt:cluster:wills:B")
            time.sleep(0.05)
        time.sleep(0.5)  # the watcher's route reaches B
        nodes["B"].stop()  # SIGKILL
        killed = time.monotonic()
        for client in paho:
            client.loop_stop()
        got = {}
        deadline = killed + LEASE_WAIT + 6
        while len(got) < 3 and time.monotonic() < deadline:
            for m in watcher.take(1, timeout=0.5):
                assert m.topic not in got, f"{m.topic} twice"
                got[m.topic] = time.monotonic()
        assert sorted(got) == ["wills/clean3", "wills/clean5", "wills/delayed"], got
        assert got["wills/delayed"] - max(got["wills/clean3"], got["wills/clean5"]) > 3
        assert watcher.take(1, timeout=2) == []  # once
        assert redis.cli("EXISTS", "mqtt:cluster:wills:B") == "0"
    finally:
        for c in made:
            c.close()
        for broker in nodes.values():
            broker.stop()
    for name in "AC":
        assert nodes[name].unhandled() == [], nodes[name].log()
