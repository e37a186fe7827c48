"""The QoS 0 lane between nodes: Redis 7's sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``)
where the server has it, plain ``PUBLISH`` where it does not (issue 16, part 2), and
plain PUBLISHes carried as their publisher's bytes (``cluster/rawlane.py``).  Real
``twistd`` nodes on a real redis-server; the fallback runs on a server whose
``SSUBSCRIBE`` and ``SPUBLISH`` are renamed away, as on Redis before 7.0."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import REDIS_CLI, Client, Redis, routed


def cross(tmp_path: Path, redis: Redis) -> None:
    """100 QoS 0 messages from a publisher on A to a subscriber on B, all in order."""
    nodes = []
    made: list[Client] = []
    try:
        for name in "AB":
            directory = tmp_path / name
            directory.mkdir()
            nodes.append(LiveBroker(directory, "--store", redis.url, "--cluster", name))
        pub = Client(nodes[0].port, "pub")
        sub = Client(nodes[1].port, "sub")
        made += [pub, sub]
        sub.subscribe("z/#", 0)
        routed(pub, "z/probe", sub)
        for i in range(100):
            pub.publish("z/t", b"%d" % i, 0)
        assert [m.payload for m in sub.take(100)] == [b"%d" % i for i in range(100)]
    finally:
        for client in made:
            client.close()
        for node in nodes:
            node.stop()
    for node in nodes:
        assert node.unhandled() == [], node.log()


def calls(redis: Redis, command: str) -> int:
    found = re.search(rf"cmdstat_{command}:calls=(\d+)", redis.cli("INFO", "commandstats"))
    return int(found.group(1)) if found else 0


def test_qos0_lane_sharded(tmp_path: Path) -> None:
    """On Redis 7 each node takes its QoS 0 inbox with SSUBSCRIBE and its peers send
    with SPUBLISH: QoS 0 crosses nodes without a plain PUBLISH."""
    redis = Redis(tmp_path / "redis")
    try:
        cross(tmp_path, redis)
        # The messages of one turn for one node share one SPUBLISH (batch.py).
        assert calls(redis, "spublish") >= 1
        assert calls(redis, "ssubscribe") >= 2
        # Plain PUBLISH carries route changes and handovers only, not the 100 messages.
        assert calls(redis, "publish") < 50
    finally:
        redis.stop()


def test_qos0_lane_without_sharded_pubsub(tmp_path: Path) -> None:
    """A server without SSUBSCRIBE/SPUBLISH (renamed away here, as on Redis 6): the
    nodes fall back to PUBLISH and QoS 0 still crosses."""
    redis = Redis(tmp_path / "redis", "--rename-command", "SPUBLISH", "",
                  "--rename-command", "SSUBSCRIBE", "")
    try:
        cross(tmp_path, redis)
        assert calls(redis, "publish") >= 1  # the only way the 100 could cross
        assert calls(redis, "spublish") == 0
    finally:
        redis.stop()


def test_plain_qos0_crosses_as_the_publishers_bytes(tmp_path: Path) -> None:
    """paho publishers on A (MQTT 3.1.1 and 5), paho subscribers on B (both versions):
    plain QoS 0 messages cross in raw pub/sub messages (seen with MONITOR), a retained
    one and one with a property between them as records; each subscriber gets every
    message of each publisher, in order, in its own protocol's format."""
    redis = Redis(tmp_path / "redis")
    nodes: list[LiveBroker] = []
    made: list[Client] = []
    monitor = None
    try:
        for name in "AB":
            directory = tmp_path / name
            directory.mkdir()
            nodes.append(LiveBroker(directory, "--store", redis.url, "--cluster", name))
        p3, p5 = Client(nodes[0].port, "p3"), Client(nodes[0].port, "p5", v5_expiry=0)
        s3, s5 = Client(nodes[1].port, "s3"), Client(nodes[1].port, "s5", v5_expiry=0)
        made += [p3, p5, s3, s5]
        for sub in (s3, s5):
            sub.subscribe("r/#", 0)
        routed(p3, "r/probe", s3, s5)
        out = (tmp_path / "monitor").open("wb")
        monitor = subprocess.Popen([REDIS_CLI, "-p", str(redis.port), "MONITOR"], stdout=out)
        routed(p5, "r/probe5", s3, s5)  # (MONITOR is on once a probe went through it)
        typed = Properties(PacketTypes.PUBLISH)
        typed.ContentType = "text/plain"
        for i in range(500):
            p3.publish("r/3", b"3-%d" % i)
            p5.publish("r/5", b"5-%d" % i)
            if i == 250:
                p3.publish("r/3", b"kept", retain=True)
                p5.client.publish("r/5", b"typed", 0, False, typed)
        received = {}
        for sub in (s3, s5):
            got = received[sub] = sub.take(1002)
            for topic, mine in (("r/3", b"3-"), ("r/5", b"5-")):
                payloads = [m.payload for m in got if m.topic == topic]
                expected = [mine + b"%d" % i for i in range(500)]
                extra = b"kept" if topic == "r/3" else b"typed"
                assert payloads == [*expected[:251], extra, *expected[251:]]
        typed_copy = [m for m in received[s5] if m.payload == b"typed"]
        assert typed_copy[0].properties.ContentType == "text/plain"
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait()
        for client in made:
            client.close()
        for node in nodes:
            node.stop()
        redis.stop()
    for node in nodes:
        assert node.unhandled() == [], node.log()
    seen = (tmp_path / "monitor").read_bytes()
    # redis-cli prints each argument quoted, bytes escaped: a raw one starts with R.
    assert re.search(rb'"SPUBLISH" "[^"]*inbox0:B@0" "R', seen), seen[-2000:]
