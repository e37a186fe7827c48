"""The QoS 0 lane between nodes: Redis 7's sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``)
where the server has it, plain ``PUBLISH`` where it does not (issue 16, part 2).  Real
``twistd`` nodes on a real redis-server; the fallback runs on a server whose
``SSUBSCRIBE`` and ``SPUBLISH`` are renamed away, as on Redis before 7.0."""

from __future__ import annotations

import re
from pathlib import Path

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import Client, Redis, routed


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
