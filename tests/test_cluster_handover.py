"""The handover window (issue 16, part 2): a session taken over by another node
mid-stream loses nothing (``mqtt_twisted/cluster/moved.py``).

Real ``twistd`` nodes on a real redis-server, paho clients.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import Client, Redis, redis, routed

__all__ = ["redis"]  # the fixture, used by name


def takeover_mid_stream(tmp_path: Path, redis: Redis, count: int) -> None:
    """``count`` QoS 1 messages published on A for a persistent QoS 1 subscriber on B;
    a third of the way through, the same client id connects to C and takes the session
    over.  Every message reaches the client, on B or on C (QoS 1: some twice)."""
    nodes: list[LiveBroker] = []
    made: list[Client] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            # The subscriber reads one message at a time: a queue for the whole run, so
            # that the default bound of 1,000 (drop the oldest) is not what is tested.
            nodes.append(LiveBroker(directory, "--store", redis.url, "--cluster", name,
                                    "--max-queued", str(count + 1000)))
        a, b, c = nodes
        pub = Client(a.port, "pub")
        first = Client(b.port, "mover", clean=False)
        made += [pub, first]
        first.subscribe("ho/#", 1)
        routed(pub, "ho/probe", first)
        expected = [b"%d" % i for i in range(count)]
        for payload in expected:
            pub.publish("ho/t", payload, 1)
        got_b: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got_b) < count // 3:
            assert time.monotonic() < deadline, len(got_b)
            got_b += [m.payload for m in first.take(1, timeout=1)]
        second = Client(c.port, "mover", clean=False)  # takes the session over
        made.append(second)
        assert second.session_present
        got_b += [m.payload for m in first.take(count, timeout=0.5)]
        first.client.loop_stop()  # taken over: it must not come back for the session
        got_c: list[bytes] = []
        deadline = time.monotonic() + 120
        while set(got_b) | set(got_c) != set(expected) and time.monotonic() < deadline:
            got_c += [m.payload for m in second.take(1, timeout=1)]
        missing = set(expected) - set(got_b) - set(got_c)
        twice = len(got_b) + len(got_c) - len(set(got_b) | set(got_c))
        # Order is reported, not asserted: a message forwarded by B can come after a
        # later one that reached C directly (docs/cluster.md, "Not yet").
        seen: set[bytes] = set()
        late = top = 0
        for payload in got_c:
            if payload not in seen:
                seen.add(payload)
                late += int(payload) < top
                top = max(top, int(payload))
        print(f"{count} messages: {len(got_b)} on B, {len(got_c)} on C, {twice} twice, "
              f"{len(missing)} missing, {late} after a later one on C")
        assert not missing, (len(missing), sorted(missing, key=int)[:10], b.log()[-3000:],
                             c.log()[-3000:])
    finally:
        for client in made:
            client.close()
        for broker in nodes:
            broker.stop()
    for broker in nodes:
        assert broker.unhandled() == [], broker.log()


def test_takeover_mid_stream_none_lost(tmp_path: Path, redis: Redis) -> None:
    """2,000 QoS 1 messages, the session moving from B to C mid-stream: none lost."""
    takeover_mid_stream(tmp_path, redis, 2000)


@pytest.mark.slow
def test_takeover_mid_stream_10000(tmp_path: Path, redis: Redis) -> None:
    """The issue's figure: 10,000 QoS 1 messages, a takeover mid-stream, none lost."""
    takeover_mid_stream(tmp_path, redis, 10_000)

