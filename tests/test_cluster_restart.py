"""A node started again under its own name (issue 16, session 19: ``cluster/restart.py``).

Before, the new run's stream reader began before its sessions were restored: what its
previous run had left in its stream (read and not acknowledged, or not read yet) was
delivered to no session and acknowledged.  Within the previous run's 3 s lease nobody
adopts it, so those QoS 1/2 messages of persistent sessions were lost; after the lease,
the new run's reader took entries of the stream from under the adopter's drain.

Real ``twistd`` nodes on a real redis-server, killed with SIGKILL; paho clients.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

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
from tests.test_cluster_drain import redis_command, small_queue_nodes
from tests.test_cluster_e2e import LEASE_WAIT, WAIT, Client, Redis, redis, routed

__all__ = ["redis"]  # the fixture, used by name

STREAM = b"mqtt:cluster:inbox:B"


def pending(redis: Redis) -> int:
    """Entries of B's stream read by B's consumer group and not acknowledged."""
    reply = redis_command(redis, b"XPENDING", STREAM, b"B")
    return int(reply[0]) if reply else 0


def unread(redis: Redis) -> bool:
    """Whether B's stream has entries B's consumer group has not read."""
    stream = redis_command(redis, b"XINFO", b"STREAM", STREAM)
    last = stream[stream.index(b"last-generated-id") + 1]
    (group,) = [g for g in redis_command(redis, b"XINFO", b"GROUPS", STREAM)
                if g[g.index(b"name") + 1] == b"B"]
    return group[group.index(b"last-delivered-id") + 1] != last


def stop_all(clients: list[Client], nodes: dict[str, LiveBroker]) -> None:
    """Close ``clients``, stop ``nodes``."""
    for client in clients:
        client.close()
    for broker in nodes.values():
        broker.stop()


def assert_no_traceback(nodes: dict[str, LiveBroker]) -> None:
    for name in ("A", "B1"):
        assert nodes[name].unhandled() == [], nodes[name].log()


def held_back(redis: Redis) -> bool:
    """Whether B's reader came to be held back by its stalled subscriber (waiting up to
    WAIT): entries it read and did not acknowledge (its delivery stopped within an
    entry), or, after a few seconds, entries it did not read (it stopped at an entry's
    end).  Both were lost before.  Under load it sometimes is not (every message went
    into the session, acknowledged: 2 runs in 11 on a busy 2-core machine); the test
    then still checks that they all arrive once, through the stored session."""
    deadline = time.monotonic() + WAIT
    patience = time.monotonic() + 5
    while not (pending(redis) or (time.monotonic() > patience and unread(redis))):
        if time.monotonic() > deadline:
            print("B's reader was not held back: every message is in the session")
            return False
        time.sleep(0.1)
    return True


def collect(client: Client, expected: list[bytes], timeout: float = 60) -> list[bytes]:
    """What ``client`` gets until it has every payload of ``expected`` (or the timeout),
    and a second more (a copy that comes twice)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not set(expected) <= set(got) and time.monotonic() < deadline:
        got += [m.payload for m in client.take(1, timeout=1)]
    got += [m.payload for m in client.take(10_000, timeout=1)]
    return got


def test_restarted_within_its_lease_delivers_what_its_previous_run_left(
        tmp_path: Path, redis: Redis) -> None:
    """B's previous run died just now (its lease is held): it had read stream entries
    1 and 2 and not acknowledged them, having delivered entry 1 into the persistent
    QoS 2 session of q2 (the copy is in the stored session, packet id 7, the session
    marked with entry 1); entry 3 it never read.  B started again, alone: q2 gets one
    (resumed), two and three, each once.  (Before: entries 1 and 2 were read before q2
    was restored and went to nobody; two was lost.)"""
    messages = [Message("x2/t", payload, 2, False, None, None, time.time(), "pub")
                for payload in (b"one", b"two", b"three")]
    redis_command(redis, b"XGROUP", b"CREATE", STREAM, b"B", b"0", b"MKSTREAM")
    ids = [redis_command(redis, b"XADD", STREAM, b"*", b"o", b"A", b"m",
                         encode_message(m), b"d", b"B") for m in messages]
    redis_command(redis, b"XREADGROUP", b"GROUP", b"B", b"B", b"COUNT", b"2", b"STREAMS",
                  STREAM, b">")  # entries 1 and 2 read by B's previous run
    state = StoredSession("q2")
    state.expiryInterval = 300
    redis_command(redis, b"HSET", b"mqtt:session:{q2}", *session_fields(state),
                  b"m:" + STREAM, ids[0])
    redis_command(redis, b"HSET", b"mqtt:subs:{q2}", b"x2/#",
                  encode_options(SubscriptionOptions(2)))
    redis_command(redis, b"HSET", b"mqtt:out:{q2}", b"1",
                  encode_outbound(Outbound(messages[0], 2, False, None, 7, 0, None, 1)))
    redis_command(redis, b"SADD", b"mqtt:sessions", b"q2")
    redis_command(redis, b"HSET", b"mqtt:cluster:home", b"q2", b"B")
    redis_command(redis, b"SADD", b"mqtt:cluster:nodes", b"B")
    redis_command(redis, b"SET", b"mqtt:cluster:epoch", b"7")
    redis_command(redis, b"SET", b"mqtt:cluster:epoch:B", b"7")
    redis_command(redis, b"SET", b"mqtt:cluster:alive:B", b"7", b"PX", b"3000")
    (tmp_path / "B").mkdir()
    started = time.monotonic()
    node = LiveBroker(tmp_path / "B", "--store", redis.url, "--cluster", "B")
    sub = None
    try:
        assert time.monotonic() - started < 10, "a lone node must not wait for survivors"
        sub = Client(node.port, "q2", clean=False)
        assert sub.session_present
        got = sorted(m.payload for m in sub.take(4, timeout=3))
        assert got == [b"one", b"three", b"two"], (got, node.log()[-3000:])
        assert "its previous run" in node.log(), node.log()
    finally:
        if sub is not None:
            sub.close()
        node.stop()
    assert node.unhandled() == [], node.log()


def stalled_subscriber(redis: Redis, tmp_path: Path,
                       count: int) -> tuple[dict[str, LiveBroker], Client, list[bytes]]:
    """Nodes A and B; a persistent QoS 2 subscriber on B that stops reading, and
    ``count`` QoS 2 messages published on A, all acknowledged: B's stream reader is
    held back by the subscriber (20 in flight, 500 queued), the rest of what it read
    pending in Redis, the rest unread."""
    nodes: dict[str, LiveBroker] = {}
    for name in "AB":
        directory = tmp_path / name
        directory.mkdir()
        nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
    pub = Client(nodes["A"].port, "pub")
    durable = Client(nodes["B"].port, "durable", clean=False)
    durable.subscribe("rs/#", 2)
    routed(pub, "rs/probe", durable)
    durable.client.loop_stop()  # reads nothing, acknowledges nothing from now on
    expected = [b"%d" % i for i in range(count)]
    infos = [pub.publish("rs/t", payload, 2) for payload in expected]
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    pub.close()
    return nodes, durable, expected


@pytest.mark.slow
@pytest.mark.parametrize("back_to", ["A", "B", "A while B is down"])
def test_killed_and_started_again_within_its_lease(tmp_path: Path, redis: Redis,
                                                   back_to: str) -> None:
    """``kill -9`` of B, started again at once under the name B (within its 3 s lease:
    nobody adopts it): the persistent QoS 2 subscriber of B, back on A or on B, gets
    every one of the 800 messages acknowledged to the publisher, once.  (Before: what
    B's stream held beyond the 520 in the session was lost, 279 here.)  Back on A while
    B is down, A finds nobody to ask, and B's lease held: it asks again once B is back
    (before, it took the stored session while B's new run restored it too)."""
    nodes, durable, expected = stalled_subscriber(redis, tmp_path, 800)
    made = [durable]
    try:
        held_back(redis)
        nodes["B"].stop()  # SIGKILL
        early: list[Client] = []
        connecting = threading.Thread(target=lambda: early.append(
            Client(nodes["A"].port, "durable", clean=False)))
        if back_to == "A while B is down":
            connecting.start()
            time.sleep(0.3)
        (tmp_path / "B1").mkdir()
        nodes["B1"] = LiveBroker(tmp_path / "B1", "--store", redis.url, "--cluster", "B")
        if back_to == "A while B is down":
            connecting.join(WAIT + 5)
            back = early[0]
        else:
            back = Client(nodes["A" if back_to == "A" else "B1"].port, "durable",
                          clean=False)
        made.append(back)
        assert back.session_present
        got = collect(back, expected)
        adopted = "adopting its sessions" in nodes["A"].log()
        print(f"back on {back_to} (B {'adopted' if adopted else 'not adopted'}): "
              f"{len(set(got))} of {len(expected)} received, {len(got)} copies")
        assert set(got) == set(expected), (len(set(expected) - set(got)),
                                           nodes["B1"].log()[-3000:])
        assert len(got) == len(expected), "a QoS 2 message came twice"
        pub = Client(nodes["A"].port, "pub2")
        made.append(pub)
        later = [b"later %d" % i for i in range(50)]
        for payload in later:  # the session is on one node only: nothing for B any more
            pub.publish("rs/t", payload, 2).wait_for_publish(WAIT)
        got = collect(back, later, timeout=WAIT)
        assert sorted(got) == sorted(later), got
        time.sleep(1)
        assert "FENCED" not in nodes["B1"].log(), nodes["B1"].log()[-3000:]
    finally:
        stop_all(made, nodes)
    assert_no_traceback(nodes)


@pytest.mark.slow
@pytest.mark.parametrize("back_to", ["A", "B"])
def test_started_again_while_its_adopter_drains(tmp_path: Path, redis: Redis,
                                                back_to: str) -> None:
    """B killed with its subscriber's session at the queue's mark and more in its
    stream; A adopts B and its drain waits for the client (drain.py).  B, started again
    under its name meanwhile, listens at once but leaves its stream to A's drain, which
    stops at the marker B's new run put into it; the client, back on A or on the new
    B, gets every message once.  (Before: the new B read the entries of its stream
    that the drain had not reached, delivered them to nobody and acknowledged them:
    279 of 800 lost.)"""
    nodes, durable, expected = stalled_subscriber(redis, tmp_path, 600)
    made = [durable]
    try:
        nodes["B"].stop()  # SIGKILL
        pub = Client(nodes["A"].port, "pub2")
        made.append(pub)
        more = [b"%d" % i for i in range(600, 800)]
        for payload in more:  # into B's stream until A adopts B (its routes)
            info = pub.publish("rs/t", payload, 2)
            info.wait_for_publish(WAIT)
            assert info.is_published()
        deadline = time.monotonic() + LEASE_WAIT
        while "adopted node B" not in nodes["A"].log():
            assert time.monotonic() < deadline, nodes["A"].log()[-3000:]
            time.sleep(0.1)
        (tmp_path / "B1").mkdir()
        nodes["B1"] = LiveBroker(tmp_path / "B1", "--store", redis.url, "--cluster", "B")
        assert "waited 0.0 s" not in nodes["A"].log()  # the drain waits for the client
        time.sleep(2)  # (before: the new B read its stream meanwhile)
        back = Client(nodes["A" if back_to == "A" else "B1"].port, "durable", clean=False)
        made.append(back)
        assert back.session_present
        got = collect(back, expected + more)
        print(f"back on {back_to}: {len(set(got))} of {len(expected) + len(more)} "
              f"received, {len(got)} copies")
        assert set(got) == set(expected + more), (
            len(set(expected + more) - set(got)), nodes["B1"].log()[-3000:])
        assert len(got) == len(expected + more), "a QoS 2 message came twice"
        assert "its stream is being delivered by A" in nodes["B1"].log()
    finally:
        stop_all(made, nodes)
    assert_no_traceback(nodes)


@pytest.mark.slow
def test_started_again_while_it_drains_goes_on_with_the_drain(tmp_path: Path,
                                                              redis: Redis) -> None:
    """A adopts B (killed) and delivers B's stream, waiting for B's persistent QoS 2
    subscriber (50 queued a session, 1,000 messages, most left in B's stream); A is
    killed in turn and started again at once under its name (within its lease: nobody
    adopts it).  A's new run goes on with B's stream: the subscriber, back on A, gets
    every message once.  A bystander of A, a persistent QoS 2 subscriber that had every
    message already (published on A), gets none again: A's new run knows which sessions
    came with B's stream (``P:cluster:adopted:A:B``).  Before, the rest of B's stream
    waited in A's drains for A's next death (~950 of 1,000 not delivered)."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    try:
        small_queue_nodes(tmp_path, redis, "AB", nodes)
        pub = Client(nodes["A"].port, "pub")
        slow = Client(nodes["B"].port, "slow", clean=False)
        bystander = Client(nodes["A"].port, "bystander", clean=False)
        made += [pub, slow, bystander]
        slow.subscribe("dr/#", 2)
        bystander.subscribe("dr/#", 2)
        routed(pub, "dr/probe", slow, bystander)
        slow.client.loop_stop()  # reads nothing, acknowledges nothing from now on
        expected = [b"%d" % i for i in range(1000)]
        for at in range(0, len(expected), 10):
            # Ten at a time: a burst in one read would be routed whole into the
            # bystander's 50-message queue (flow control pauses the next read).
            infos = [pub.publish("dr/t", payload, 2) for payload in expected[at:at + 10]]
            for info in infos:
                info.wait_for_publish(WAIT)
                assert info.is_published()
        seen = collect(bystander, expected)
        assert sorted(seen) == sorted(expected), (len(seen), nodes["A"].log()[-3000:])
        pub.close()
        nodes["B"].stop()  # SIGKILL
        deadline = time.monotonic() + LEASE_WAIT
        while "adopted node B" not in nodes["A"].log():
            assert time.monotonic() < deadline, nodes["A"].log()[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # draining (after 1 s), waiting for the client (queue at the mark)
        assert redis.cli("SMEMBERS", "mqtt:cluster:drains:A") == "B"
        nodes["A"].stop()  # SIGKILL while it drains
        bystander.close()
        (tmp_path / "A1").mkdir()
        nodes["A1"] = LiveBroker(tmp_path / "A1", "--store", redis.url, "--cluster", "A",
                                 "--max-queued", "50")
        back = Client(nodes["A1"].port, "slow", clean=False)
        made.append(back)
        assert back.session_present
        got = collect(back, expected)
        print(f"A started again while it drained B: {len(set(got))} of {len(expected)} "
              f"received, {len(got)} copies")
        assert set(got) == set(expected), (len(set(expected) - set(got)),
                                           nodes["A1"].log()[-3000:])
        assert len(got) == len(expected), "a QoS 2 message came twice"
        again = Client(nodes["A1"].port, "bystander", clean=False)
        made.append(again)
        assert again.session_present
        twice = [m.payload for m in again.take(1000, timeout=3)]
        assert twice == [], (len(twice), nodes["A1"].log()[-3000:])
        assert "goes on with it" in nodes["A1"].log()
        deadline = time.monotonic() + WAIT
        while redis.cli("SMEMBERS", "mqtt:cluster:drains:A") != "":
            assert time.monotonic() < deadline, "the drain did not end"
            time.sleep(0.2)
        assert redis.cli("EXISTS", "mqtt:cluster:adopted:A:B") == "0"
    finally:
        stop_all(made, nodes)
    assert nodes["A1"].unhandled() == [], nodes["A1"].log()
