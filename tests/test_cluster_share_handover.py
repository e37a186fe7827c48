"""A share group's only member taken over by another node mid-stream loses nothing:
its old node keeps the group registered while the peers learn where it went, and
forwards the group's copies there (issue 16, "Share groups, at the edges";
``cluster/moved.py``, ``forward_share``).

Real ``twistd --cluster`` nodes on a real redis-server, paho-mqtt clients.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import WAIT, Client, Redis, redis
from tests.test_cluster_share_e2e import KEY, wait_weights

__all__ = ["redis"]  # the fixture, used by name


def test_only_member_taken_over_mid_stream(tmp_path: Path, redis: Redis) -> None:
    """The group's only member, a persistent session on A, reconnects to B while 2,000
    QoS 1 messages published on C flow to it: every one reaches it, on A or on B
    (QoS 1: some may come twice; the count is printed)."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    count = 2000
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name,
                                     "--max-queued", str(count * 2))
        pub = Client(nodes["C"].port, "pub")
        first = Client(nodes["A"].port, "mover", clean=False)
        made += [pub, first]
        first.subscribe(KEY, 1)
        wait_weights(redis, {"A": "1"})
        expected = [b"%d" % i for i in range(count)]
        sent = [pub.publish("jobs/t", payload, 1) for payload in expected]
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT * 3
        while len(got) < count // 3:
            assert time.monotonic() < deadline, f"{len(got)} before the takeover"
            got += [m.payload for m in first.take(1, timeout=0.1)]
        second = Client(nodes["B"].port, "mover", clean=False)  # takes the session over
        made.append(second)
        for info in sent:
            info.wait_for_publish(WAIT * 3)
            assert info.is_published()
        got += [m.payload for m in first.take(count, timeout=0.2)]
        deadline = time.monotonic() + WAIT * 3
        while len(set(got)) < count and time.monotonic() < deadline:
            got += [m.payload for m in second.take(1, timeout=0.2)]
        time.sleep(1.0)
        got += [m.payload for m in second.take(count, timeout=0.2)]
        twice = sum(n - 1 for n in Counter(got).values())
        lost = sorted(set(expected) - set(got), key=int)
        print(f"{len(set(got))} of {count} reached the member, {twice} twice")
        assert not lost, f"{len(lost)} lost, e.g. {lost[:10]}"
    finally:
        for client in made:
            client.close()
        for broker in nodes.values():
            broker.stop()
    for name, broker in nodes.items():
        assert broker.unhandled() == [], f"node {name}:\n{broker.log()[-3000:]}"
