"""What a cluster answers as a whole, on real ``twistd --cluster`` nodes and a real
redis-server: ``$SYS`` cluster totals, MQTT 5's PUBACK 0x10 and the HTTP bridge's
``"subscribers"`` (issue 16, part 2), and session expiry after a node died.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests import test_cluster_e2e as e2e
from tests.livebroker import LiveBroker, free_port
from tests.test_cluster_e2e import WAIT, Client, Redis

redis = e2e.redis  # the fixture


def sys_values(watcher: Client, expected: dict[str, str], timeout: float = 15,
               check: Any = lambda seen: True) -> dict[str, str]:
    """The $SYS/broker/cluster/ values the watcher got (others as ``own/...``), until
    they include ``expected`` (each topic's latest value) and pass ``check``."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in watcher.take(1, timeout=0.2):
            name = m.topic.removeprefix("$SYS/broker/")
            if name.startswith("cluster/"):
                name = name.removeprefix("cluster/")
            else:
                name = "own/" + name
            seen[name] = m.payload.decode()
            if all(seen.get(k) == v for k, v in expected.items()) and check(seen):
                return seen
    raise AssertionError(f"expected {expected}, last seen {seen}")


@pytest.fixture
def two(tmp_path: Path, redis: Redis) -> Iterator[dict[str, LiveBroker]]:
    """Nodes A and B, $SYS every second, an HTTP bridge on each."""
    started: dict[str, LiveBroker] = {}
    try:
        for name in "AB":
            directory = tmp_path / name
            directory.mkdir()
            http = free_port()
            started[name] = LiveBroker(
                directory, "--store", redis.url, "--cluster", name, "--sys-interval", "1",
                listen=[f"http=tcp:{http}:interface=127.0.0.1"])
            started[name].http = http  # type: ignore[attr-defined]
        yield started
    finally:
        for broker in started.values():
            broker.stop()
    for name, broker in started.items():
        assert broker.unhandled() == [], f"node {name}:\n{broker.log()}"


@pytest.fixture
def made() -> Iterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for c in clients:
        c.close()


def test_sys_cluster_totals(two: dict[str, LiveBroker], made: list[Client]) -> None:
    """Each node's $SYS/broker/cluster/... says the totals of every alive node: clients
    connected, messages received and sent, subscriptions, nodes alive; a node that
    dies leaves the totals."""
    watcher = Client(two["B"].port, "watcher")
    made.append(watcher)
    watcher.subscribe("$SYS/broker/cluster/#", 0)
    watcher.subscribe("$SYS/broker/messages/sent", 0)
    on_a = [Client(two["A"].port, f"a{i}") for i in range(3)]
    made.extend(on_a)
    for i, c in enumerate(on_a):
        c.subscribe(f"tot/{i}", 0)
        c.subscribe("tot/all", 0)
    pub = Client(two["B"].port, "pub")
    made.append(pub)
    for _ in range(5):
        pub.publish("tot/all", b"x", 0)  # B: 5 received; A: 15 sent
    # A: 3 clients and 6 subscriptions; B: the watcher (2 subscriptions) and pub.
    # Sent: A's 15, and B's own ($SYS messages to the watcher, published in the same
    # tick just before the total).
    sys_values(watcher, {"clients/connected": "5", "subscriptions/count": "8",
                         "messages/received": "5", "nodes/alive": "2", "node": "B"},
               check=lambda seen: int(seen.get("messages/sent", 0))
               - int(seen.get("own/messages/sent", 0)) == 15)
    two["A"].stop()  # SIGKILL: its lease runs out, its counters leave the totals
    sys_values(watcher, {"clients/connected": "2", "subscriptions/count": "2",
                         "nodes/alive": "1"}, timeout=15)


def test_no_matching_subscribers_cluster_wide(two: dict[str, LiveBroker],
                                              made: list[Client]) -> None:
    """A v5 publisher on A whose topic only a subscriber on B matches gets PUBACK 0,
    not 0x10 (no matching subscribers), and the HTTP bridge on A counts it; a topic
    nobody matches gets 0x10 on both."""
    sub = Client(two["B"].port, "sub")
    made.append(sub)
    sub.subscribe("ans/#", 1)
    codes: dict[int, int] = {}
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub",
                      protocol=mqtt.MQTTv5)
    pub.on_publish = lambda c, u, mid, rc, p: codes.__setitem__(mid, int(rc.value))
    pub.connect("127.0.0.1", two["A"].port)
    pub.loop_start()
    try:
        deadline = time.monotonic() + WAIT
        while True:  # until B's filter has reached A
            info = pub.publish("ans/t", b"1", 1)
            info.wait_for_publish(WAIT)
            time.sleep(0.05)
            if codes[info.mid] == 0:
                break
            assert codes[info.mid] == 0x10
            assert time.monotonic() < deadline, "B's filter never reached A"
        info = pub.publish("nobody/t", b"2", 1)
        info.wait_for_publish(WAIT)
        time.sleep(0.05)
        assert codes[info.mid] == 0x10
    finally:
        pub.disconnect()
        pub.loop_stop()

    def http_publish(topic: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{two['A'].http}/publish?topic={topic}&qos=1",  # type: ignore[attr-defined]
            data=b"h", method="POST")
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    assert {k: v for k, v in http_publish("ans/h").items()
            if k in ("subscribers", "reason_code")} == {"subscribers": 1, "reason_code": 0}
    assert {k: v for k, v in http_publish("nobody/h").items()
            if k in ("subscribers", "reason_code")} == {"subscribers": 0, "reason_code": 16}
    # Until b"h" (not take(3), which waited out WAIT when only two came).
    payloads: list[bytes] = []
    while b"h" not in payloads and len(payloads) < 3:
        got = sub.take(1)
        if not got:
            break
        payloads.append(got[0].payload)
    assert payloads[-1:] == [b"h"], payloads


@pytest.mark.slow
def test_session_expires_on_time_on_the_adopter(tmp_path: Path, redis: Redis) -> None:
    """Persistent v5 sessions of node B, which is killed: the adopter expires each on
    time — one whose client had left (expiry 12 s) 12 s after it left, one whose client
    was connected (expiry 6 s) 6 s after the adoption found it gone — and keeps one
    with a long expiry, which its client resumes on another node."""
    started: dict[str, LiveBroker] = {}
    made: list[Client] = []

    def stored(client_id: str) -> bool:
        return redis.cli("EXISTS", f"mqtt:session:{{{client_id}}}") == "1"

    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            started[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
        time.sleep(4.5)  # the survivors judge others once their own lease is settled
        short = Client(started["B"].port, "short", clean=False, v5_expiry=12)
        long = Client(started["B"].port, "long", clean=False, v5_expiry=300)
        live = Client(started["B"].port, "live", clean=False, v5_expiry=6)
        made.append(live)
        for c in (short, long):
            c.subscribe("exp/#", 1)
            c.close()
        left_at = time.monotonic()
        time.sleep(0.3)
        assert stored("short") and stored("long") and stored("live")
        started["B"].stop()  # SIGKILL
        live.client.loop_stop()
        deadline = time.monotonic() + 15
        while redis.cli("HGET", "mqtt:cluster:home", "live") in ("B", ""):
            assert time.monotonic() < deadline, "B was not adopted"
            time.sleep(0.1)
        adopted_at = time.monotonic()
        assert adopted_at - left_at < 10
        assert stored("live") and stored("short")
        gone_at: dict[str, float] = {}
        while len(gone_at) < 2:
            for client_id in ("short", "live"):
                if client_id not in gone_at and not stored(client_id):
                    gone_at[client_id] = time.monotonic()
            assert time.monotonic() < max(left_at + 12, adopted_at + 6) + 4, (
                f"not expired: {gone_at}")
            time.sleep(0.05)
        assert 11.5 <= gone_at["short"] - left_at <= 14, gone_at["short"] - left_at
        assert 5.5 <= gone_at["live"] - adopted_at <= 8, gone_at["live"] - adopted_at
        assert stored("long")
        assert redis.cli("HEXISTS", "mqtt:cluster:home", "short") == "0"
        back = Client(started["C"].port, "long", clean=False, v5_expiry=300)
        made.append(back)
        assert back.session_present
        gone = Client(started["A"].port, "short", clean=False, v5_expiry=12)
        made.append(gone)
        assert not gone.session_present
    finally:
        for client in made:
            client.close()
        for broker in started.values():
            broker.stop()
    for name in "AC":
        assert started[name].unhandled() == [], started[name].log()
