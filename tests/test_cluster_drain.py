"""A killed node's stream, delivered by its adopter under flow control (issue 16,
part 2; ``mqtt_twisted/cluster/drain.py``): not replayed faster than its subscribers
take it, so a small queue drops nothing.

Real ``twistd`` nodes on a real redis-server, killed with SIGKILL; paho clients.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import LEASE_WAIT, WAIT, Client, Redis, redis, routed

__all__ = ["redis"]  # the fixture, used by name


@pytest.mark.slow
def test_adopter_drains_under_flow_control(tmp_path: Path, redis: Redis) -> None:
    """Nodes queue at most 50 messages a session.  A persistent QoS 1 subscriber on B
    stops reading; 1,000 QoS 1 messages are published on A (acknowledged once in B's
    stream, where B's reader, held back by the subscriber, leaves most of them); B is
    killed.  The client comes back on C 3 s after the adoption and gets all 1,000: the
    adopter waited for it instead of pouring them into its 50-message queue."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name,
                                     "--max-queued", "50")
        pub = Client(nodes["A"].port, "pub")
        slow = Client(nodes["B"].port, "slow", clean=False)
        made += [pub, slow]
        slow.subscribe("d/#", 1)
        routed(pub, "d/probe", slow)
        slow.client.loop_stop()  # reads nothing, acknowledges nothing from now on
        expected = [b"%d" % i for i in range(1000)]
        infos = [pub.publish("d/t", payload, 1) for payload in expected]
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()
        nodes["B"].stop()  # SIGKILL, within the flow control's 2 s grace
        pending = redis.cli("XPENDING", "mqtt:cluster:inbox:B", "B").split("\n")[0]
        lag = redis.cli("XINFO", "GROUPS", "mqtt:cluster:inbox:B").split("\n")
        unread = lag[lag.index("lag") + 1] if "lag" in lag else "?"
        deadline = time.monotonic() + LEASE_WAIT
        while redis.cli("HGET", "mqtt:cluster:home", "slow") == "B":
            assert time.monotonic() < deadline, "B was not adopted"
            time.sleep(0.2)
        time.sleep(3)  # the adopter has begun delivering B's stream: the client is away
        back = Client(nodes["C"].port, "slow", clean=False)
        made.append(back)
        assert back.session_present
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while set(got) != set(expected) and time.monotonic() < deadline:
            got += [m.payload for m in back.take(1, timeout=1)]
        print(f"B's stream at the kill: {pending} read and not acknowledged, {unread} "
              f"unread; {len(got)} received, {len(set(got))} distinct")
        assert set(got) == set(expected), len(set(expected) - set(got))
    finally:
        for client in made:
            client.close()
        for broker in nodes.values():
            broker.stop()
    for name in "AC":
        assert nodes[name].unhandled() == [], nodes[name].log()
