"""Cluster-wide share groups, totals and answers on real ``twistd --cluster`` nodes and a
real redis-server, with paho-mqtt clients (issue 16, part 2).

The helpers and fixtures (three nodes A, B and C on one Redis) are those of
``test_cluster_e2e.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from tests import test_cluster_e2e as e2e
from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import LEASE_WAIT, WAIT, Client, Redis

redis, nodes, clients = e2e.redis, e2e.nodes, e2e.clients  # the fixtures

KEY = "$share/workers/jobs/#"


def wait_weights(redis: Redis, expected: dict[str, str]) -> None:
    """Until each node's registered weight for KEY is as expected, then a little
    longer (the change notifications reach the other nodes)."""
    deadline = time.monotonic() + WAIT
    while {n: redis.cli("HGET", f"mqtt:cluster:shared:{n}", KEY)
           for n in expected} != expected:
        assert time.monotonic() < deadline, "share weights not registered"
        time.sleep(0.05)
    time.sleep(0.3)


def collect(members: dict[str, list[Client]], count: int,
            timeout: float = 60) -> dict[str, list[bytes]]:
    """Every payload each node's members got, until ``count`` in all (and a second
    more, to catch a copy too many)."""
    got: dict[str, list[bytes]] = {n: [] for n in members}
    deadline = time.monotonic() + timeout
    settle: float | None = None
    while time.monotonic() < (settle or deadline):
        idle = True
        for name, subs in members.items():
            for sub in subs:
                while not sub.messages.empty():
                    got[name].append(sub.messages.get().payload)
                    idle = False
        if settle is None and sum(map(len, got.values())) >= count:
            settle = time.monotonic() + 1.0
        if idle:
            time.sleep(0.02)
    return got


def test_share_group_once_cluster_wide(nodes: dict[str, LiveBroker], redis: Redis,
                                       clients: list[Client]) -> None:
    """Members on three nodes (1 on A, 2 on B, 3 on C), 3,000 QoS 1 messages published
    on A: each is delivered exactly once in the whole cluster, and members on every
    node get their share, in proportion to the members each node has."""
    pub = Client(nodes["A"].port, "pub")
    clients.append(pub)
    members: dict[str, list[Client]] = {}
    for name, n in (("A", 1), ("B", 2), ("C", 3)):
        members[name] = [Client(nodes[name].port, f"w-{name}{i}") for i in range(n)]
        clients.extend(members[name])
        for member in members[name]:
            member.subscribe(KEY, 1)
    wait_weights(redis, {"A": "1", "B": "2", "C": "3"})
    count = 3000
    expected = [b"%d" % i for i in range(count)]
    for payload in expected:
        pub.publish("jobs/t", payload, 1)
    got = collect(members, count)
    every = [p for payloads in got.values() for p in payloads]
    twice = [p for p, n in Counter(every).items() if n > 1]
    assert twice == [], f"{len(twice)} delivered more than once"
    assert sorted(every) == sorted(expected), f"{count - len(set(every))} lost"
    shares = {name: len(payloads) for name, payloads in got.items()}
    for name, weight in (("A", 1), ("B", 2), ("C", 3)):
        assert abs(shares[name] - count * weight / 6) <= count / 30, shares
        assert all(not m.messages.qsize() for m in members[name])
    for name, subs in members.items():  # each member of a node gets some
        assert all(sub.client.is_connected() for sub in subs), name


def test_plain_and_shared_together(nodes: dict[str, LiveBroker], redis: Redis,
                                   clients: list[Client]) -> None:
    """A plain subscriber on B gets every message; the group (members on B and C) gets
    each once, on one node or the other, whichever node it was published on."""
    pub_a = Client(nodes["A"].port, "pub-a")
    pub_c = Client(nodes["C"].port, "pub-c")
    plain = Client(nodes["B"].port, "plain")
    member_b = Client(nodes["B"].port, "member-b")
    member_c = Client(nodes["C"].port, "member-c")
    clients += [pub_a, pub_c, plain, member_b, member_c]
    plain.subscribe("jobs/#", 1)
    member_b.subscribe(KEY, 1)
    member_c.subscribe(KEY, 1)
    wait_weights(redis, {"B": "1", "C": "1"})
    time.sleep(0.5)  # plain's filter too
    sent = []
    for i in range(200):
        for pub, tag in ((pub_a, b"a"), (pub_c, b"c")):
            sent.append(tag + b"%d" % i)
            pub.publish("jobs/x", sent[-1], 1)
    assert sorted(m.payload for m in plain.take(len(sent), timeout=30)) == sorted(sent)
    got = collect({"B": [member_b], "C": [member_c]}, len(sent), timeout=30)
    every = got["B"] + got["C"]
    assert sorted(every) == sorted(sent)  # once each
    assert got["B"] and got["C"]


def test_dead_node_stream_goes_to_the_group(tmp_path: Path, redis: Redis) -> None:
    """Node B is stopped (SIGSTOP) while the group's messages for its member pile up
    in its stream, then killed: its adopter gives each of them to the member on C
    (through C when the adopter is A), once; nothing acknowledged to the publisher is
    lost."""
    started: dict[str, LiveBroker] = {}
    made: list[Client] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            started[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
        pub = Client(started["A"].port, "pub")
        member_b = Client(started["B"].port, "member-b")
        member_c = Client(started["C"].port, "member-c")
        made += [pub, member_b, member_c]
        member_b.subscribe(KEY, 1)
        member_c.subscribe(KEY, 1)
        wait_weights(redis, {"B": "1", "C": "1"})
        os.kill(started["B"].proc.pid, signal.SIGSTOP)
        member_b.client.loop_stop()
        expected = [b"%d" % i for i in range(400)]
        for payload in expected[:200]:
            info = pub.publish("jobs/t", payload, 1)
            info.wait_for_publish(WAIT)
            assert info.is_published()
        assert int(redis.cli("XLEN", "mqtt:cluster:inbox:B")) > 50  # B's share waits
        started["B"].stop()  # SIGKILL
        for payload in expected[200:]:
            info = pub.publish("jobs/t", payload, 1)
            info.wait_for_publish(WAIT)
            assert info.is_published()
        got = collect({"C": [member_c]}, len(expected), timeout=LEASE_WAIT + 10)["C"]
        assert Counter(got).most_common(1)[0][1] == 1, "a message twice"
        assert sorted(got) == sorted(expected), f"{len(set(expected) - set(got))} lost"
        assert member_b.messages.empty()
    finally:
        for client in made:
            client.close()
        for broker in started.values():
            broker.stop()
    for name in "AC":
        assert started[name].unhandled() == [], started[name].log()

