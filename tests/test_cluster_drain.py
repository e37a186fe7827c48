"""A killed node's stream, delivered by its adopter under flow control (issue 16,
part 2; ``mqtt_twisted/cluster/drain.py``): not replayed faster than its subscribers
take it, so a small queue drops nothing.

Real ``twistd`` nodes on a real redis-server, killed with SIGKILL; paho clients.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from mqtt_twisted.cluster.resp import Parser, encode_command
from mqtt_twisted.core.session import Outbound, SubscriptionOptions
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.store.redis import (
    encode_message,
    encode_options,
    encode_outbound,
    session_fields,
)
from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import LEASE_WAIT, WAIT, Client, Redis, redis, routed

__all__ = ["redis"]  # the fixture, used by name


def small_queue_nodes(tmp_path: Path, redis: Redis, names: str,
                      nodes: dict[str, LiveBroker]) -> None:
    """Start cluster nodes ``names`` into ``nodes``, each session queueing at most 50
    messages (high-water mark 25: a drain waits for an offline client early)."""
    for name in names:
        directory = tmp_path / name
        directory.mkdir()
        nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name,
                                 "--max-queued", "50")


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
        small_queue_nodes(tmp_path, redis, "ABC", nodes)
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


@pytest.mark.slow
def test_adopter_killed_while_draining(tmp_path: Path, redis: Redis) -> None:
    """As above (at most 50 queued a session, 1,000 messages mostly left in B's stream,
    B killed), but the node that adopts B is killed in turn while it waits for the
    client to take B's stream: the last node adopts the adopter, and with it the rest
    of B's stream.  The client, back on the last node, gets all 1,000 (before, the rest
    of B's stream was left to nobody: ~950 lost)."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    try:
        small_queue_nodes(tmp_path, redis, "ABC", nodes)
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
        pub.close()
        nodes["B"].stop()  # SIGKILL
        deadline = time.monotonic() + LEASE_WAIT
        while (adopter := redis.cli("HGET", "mqtt:cluster:home", "slow")) == "B":
            assert time.monotonic() < deadline, "B was not adopted"
            time.sleep(0.2)
        last = "C" if adopter == "A" else "A"
        deadline = time.monotonic() + LEASE_WAIT
        while "adopted node B" not in nodes[adopter].log():
            assert time.monotonic() < deadline, nodes[adopter].log()[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # draining (after 1 s), waiting for the client (queue at the mark)
        nodes[adopter].stop()  # SIGKILL: the adopter dies while it drains
        deadline = time.monotonic() + LEASE_WAIT
        while redis.cli("HGET", "mqtt:cluster:home", "slow") != last:
            assert time.monotonic() < deadline, f"{adopter} was not adopted"
            time.sleep(0.2)
        back = Client(nodes[last].port, "slow", clean=False)
        made.append(back)
        assert back.session_present
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while set(got) != set(expected) and time.monotonic() < deadline:
            got += [m.payload for m in back.take(1, timeout=1)]
        print(f"{adopter} adopted B and was killed, {last} adopted it: {len(got)} "
              f"received, {len(set(got))} distinct")
        assert set(got) == set(expected), (len(set(expected) - set(got)),
                                           nodes[last].log()[-3000:])
    finally:
        for client in made:
            client.close()
        for broker in nodes.values():
            broker.stop()
    assert nodes[last].unhandled() == [], nodes[last].log()


def redis_command(redis: Redis, *args: Any) -> Any:
    """One command with binary arguments (redis-cli takes text), its reply."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=WAIT) as sock:
        sock.sendall(encode_command(*args))
        parser = Parser()
        while True:
            replies = parser.feed(sock.recv(65536))
            if replies:
                return replies[0]


@pytest.mark.slow
def test_adopter_skips_what_the_dead_node_delivered(tmp_path: Path, redis: Redis) -> None:
    """Node Z died after delivering stream entry 1 into the persistent QoS 2 session
    of q2 (the copy is in the stored session, packet id 7, PUBLISH sent, the session
    marked with entry 1) and before acknowledging it; entry 2 it never read.  Node A
    adopts Z: q2, back on A, gets message one once (resumed, same packet id) and
    message two once — the drain skipped entry 1 for q2.  (Without the mark it got
    message one twice.)"""
    stream = b"mqtt:cluster:inbox:Z"
    one = Message("x2/t", b"one", 2, False, None, None, time.time(), "pub")
    two = Message("x2/t", b"two", 2, False, None, None, time.time(), "pub")
    redis_command(redis, b"XGROUP", b"CREATE", stream, b"Z", b"0", b"MKSTREAM")
    first = redis_command(redis, b"XADD", stream, b"*", b"o", b"A", b"m",
                          encode_message(one), b"d", b"Z")
    redis_command(redis, b"XADD", stream, b"*", b"o", b"A", b"m", encode_message(two),
                  b"d", b"Z")
    redis_command(redis, b"XREADGROUP", b"GROUP", b"Z", b"Z", b"COUNT", b"1", b"STREAMS",
                  stream, b">")  # entry 1 read by Z, never acknowledged
    state = StoredSession("q2")
    state.expiryInterval = 300
    fields = [*session_fields(state), b"m:" + stream, first]
    redis_command(redis, b"HSET", b"mqtt:session:{q2}", *fields)
    redis_command(redis, b"HSET", b"mqtt:subs:{q2}", b"x2/#",
                  encode_options(SubscriptionOptions(2)))
    redis_command(redis, b"HSET", b"mqtt:out:{q2}", b"1",
                  encode_outbound(Outbound(one, 2, False, None, 7, 0, None, 1)))
    redis_command(redis, b"SADD", b"mqtt:sessions", b"q2")
    redis_command(redis, b"HSET", b"mqtt:cluster:home", b"q2", b"Z")
    redis_command(redis, b"SADD", b"mqtt:cluster:nodes", b"Z")
    (tmp_path / "A").mkdir()
    node = LiveBroker(tmp_path / "A", "--store", redis.url, "--cluster", "A")
    sub = None
    try:
        deadline = time.monotonic() + LEASE_WAIT
        while "delivered 2 messages left in node Z" not in node.log():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        assert "1 copies skipped that the sessions had had" in node.log(), node.log()
        sub = Client(node.port, "q2", clean=False)
        assert sub.session_present
        got = [m.payload for m in sub.take(3, timeout=3)]
        assert sorted(got) == [b"one", b"two"], got
    finally:
        if sub is not None:
            sub.close()
        node.stop()
    assert node.unhandled() == [], node.log()
