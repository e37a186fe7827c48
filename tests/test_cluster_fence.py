"""Owner epochs (issue 16, part 2): a node paused past its lease is adopted; when it
runs again it finds out, cuts its clients off and writes nothing over the adopter's
state (``mqtt_twisted/cluster/fence.py``).

Real ``twistd`` nodes on a real redis-server; the pause is a real SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.core.session import Outbound, SubscriptionOptions
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import StoredSession
from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import WAIT, Client, Redis, redis, routed
from tests.test_store_redis import RedisTestCase

__all__ = ["redis"]  # the fixture, used by name

#: Seconds until a paused node's lease has run out and a survivor has adopted it.
ADOPTION = 20.0


def home_of(redis: Redis, client_id: str) -> str:
    return redis.cli("HGET", "mqtt:cluster:home", client_id)


@pytest.mark.slow
def test_paused_node_fenced(tmp_path: Path, redis: Redis) -> None:
    """Node B is stopped (SIGSTOP) past its lease and adopted; meanwhile messages queue
    for its persistent client on the adopter.  Continued (SIGCONT), B must not write
    over the adopter's state — not even for a client whose connection ended while B was
    stopped, which B would save as it knew it — must send its other client DISCONNECT
    0x8E, and must rejoin empty: the client resumed on the adopter gets its whole
    queue, and B takes new clients again."""
    nodes: dict[str, LiveBroker] = {}
    made: list[Client] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
        pub = Client(nodes["A"].port, "pub")
        durable = Client(nodes["B"].port, "durable", clean=False, v5_expiry=600)
        other = Client(nodes["B"].port, "other", clean=False, v5_expiry=600)
        made += [pub, durable, other]
        durable.subscribe("f/#", 1)
        other.subscribe("g/#", 1)
        routed(pub, "f/probe", durable)
        for i in range(10):
            pub.publish("f/t", b"a%d" % i, 1).wait_for_publish(WAIT)
        assert [m.payload for m in durable.take(10)] == [b"a%d" % i for i in range(10)]
        time.sleep(0.5)  # the PUBACKs reach B

        os.kill(nodes["B"].proc.pid, signal.SIGSTOP)
        # durable's connection ends while B cannot see it: B sees it when it runs again.
        durable.client.loop_stop()
        durable.client.socket().close()
        deadline = time.monotonic() + ADOPTION
        while home_of(redis, "durable") in ("B", ""):
            assert time.monotonic() < deadline, "B was not adopted"
            time.sleep(0.2)
        adopter = home_of(redis, "durable")
        assert adopter in ("A", "C")
        time.sleep(1.5)  # the adopter has registered durable's filter and drained B
        for i in range(20):
            info = pub.publish("f/t", b"q%d" % i, 1)
            info.wait_for_publish(WAIT)
            assert info.is_published()
        queued = redis.cli("HLEN", "mqtt:out:{durable}")
        assert queued == "20", queued

        os.kill(nodes["B"].proc.pid, signal.SIGCONT)
        assert other.disconnects.get(timeout=WAIT) == 0x8E
        deadline = time.monotonic() + WAIT
        while "rejoined" not in nodes["B"].log():
            assert time.monotonic() < deadline, nodes["B"].log()
            time.sleep(0.1)
        time.sleep(1.0)  # anything B still had to write has had its turn
        assert redis.cli("HLEN", "mqtt:out:{durable}") == "20"
        assert home_of(redis, "durable") == adopter
        assert home_of(redis, "other") == adopter

        again = Client(nodes[adopter].port, "durable", clean=False, v5_expiry=600)
        made.append(again)
        assert again.session_present
        assert [m.payload for m in again.take(20)] == [b"q%d" % i for i in range(20)]

        # B is a node again: a new client there gets messages published on A.
        fresh = Client(nodes["B"].port, "fresh")
        made.append(fresh)
        fresh.subscribe("n/#", 1)
        routed(pub, "n/probe", fresh)
        pub.publish("n/t", b"hello", 1)
        assert [m.payload for m in fresh.take(1)] == [b"hello"]
    finally:
        for client in made:
            try:
                client.close()
            except Exception:
                pass
        for broker in nodes.values():
            if broker.alive():
                os.kill(broker.proc.pid, signal.SIGCONT)
            broker.stop()
    for name, broker in nodes.items():
        assert broker.unhandled() == [], f"node {name}:\n{broker.log()}"


class FencedStoreTests(RedisTestCase):
    """``RedisStore.fence``: a cluster node writes a client's keys only while it owns
    the client (home is the node, the node's epoch is current); else ``FENCED`` and
    nothing changes."""

    @inlineCallbacks
    def fenced_store(self) -> Any:
        store = yield self.store()
        store.fence = (b"mqtt:cluster:home", b"mqtt:cluster:epoch:B", b"B", b"7")
        yield self.raw("SET", "mqtt:cluster:epoch:B", "7")
        yield self.raw("HSET", "mqtt:cluster:home", "c1", "B")
        return store

    @inlineCallbacks
    def test_owner_writes(self) -> Any:
        """The owner's writes go through, every kind of them."""
        store = yield self.fenced_store()
        session = StoredSession("c1")
        session.expiryInterval = 60
        yield store.saveSession(session)
        yield store.addSubscription("c1", "a/#", SubscriptionOptions(1))
        out = Outbound(Message("a/b", b"x", 1), 1, False, None, None, 0, None, 1)
        yield store.storeOutbound("c1", out)
        yield store.addInboundQoS2("c1", 5)
        state = yield store.loadSession("c1")
        self.assertEqual((list(state.subscriptions), len(state.outbound), state.inboundQoS2),
                         (["a/#"], 1, {5}))
        session.expiryInterval = 90
        yield store.saveSessionInfo(session)  # the fields alone: the records stay
        state = yield store.loadSession("c1")
        self.assertEqual((state.expiryInterval, len(state.outbound)), (90, 1))
        yield store.removeOutbound("c1", 1)
        yield store.removeSubscription("c1", "a/#")
        yield store.removeInboundQoS2("c1", 5)
        state = yield store.loadSession("c1")
        self.assertEqual((state.subscriptions, state.outbound, state.inboundQoS2),
                         ({}, [], set()))
        yield store.deleteSession("c1")
        self.assertIsNone((yield store.loadSession("c1")))

    @inlineCallbacks
    def test_not_the_owner(self) -> Any:
        """Once the client's home is another node, or the node's epoch has moved on (it
        was adopted), each write fails with FENCED and the adopter's state stays."""
        store = yield self.fenced_store()
        session = StoredSession("c1")
        session.expiryInterval = 60
        session.subscriptions = {"a/#": SubscriptionOptions(1)}
        session.outbound = [Outbound(Message("a/b", b"x", 1), 1, False, None, None, 0,
                                     None, 1)]
        yield store.saveSession(session)
        for home, epoch in (("C", "7"), ("B", "8")):
            yield self.raw("HSET", "mqtt:cluster:home", "c1", home)
            yield self.raw("SET", "mqtt:cluster:epoch:B", epoch)
            for write in (lambda: store.saveSession(StoredSession("c1")),
                          lambda: store.saveSessionInfo(StoredSession("c1")),
                          lambda: store.deleteSession("c1"),
                          lambda: store.removeOutbound("c1", 1),
                          lambda: store.removeSubscription("c1", "a/#"),
                          lambda: store.addSubscription("c1", "b", SubscriptionOptions(0)),
                          lambda: store.addInboundQoS2("c1", 9)):
                with self.assertRaises(StorageError) as e:
                    yield write()
                self.assertIn("FENCED", str(e.exception))
        state = yield store.loadSession("c1")
        self.assertEqual((list(state.subscriptions), [o.seq for o in state.outbound],
                          state.inboundQoS2, state.expiryInterval), (["a/#"], [1], set(), 60))

    @inlineCallbacks
    def test_marks(self) -> Any:
        """An outbound record stored while a stream entry is delivered marks the entry
        in the session (``m:STREAM``, the last one); saving the session keeps the mark,
        loading it returns it (an adopter skips what the session had)."""
        store = yield self.fenced_store()
        session = StoredSession("c1")
        session.expiryInterval = 60
        yield store.saveSession(session)
        for seq, entry in ((1, b"1700000000000-0"), (2, b"1700000000001-3")):
            store.mark = (b"m:mqtt:cluster:inbox:B", entry)
            out = Outbound(Message("a/b", b"x", 2), 2, False, None, None, 0, None, seq)
            yield store.storeOutbound("c1", out)
        store.mark = None
        state = yield store.loadSession("c1")
        self.assertEqual(state.marks, {b"mqtt:cluster:inbox:B": b"1700000000001-3"})
        self.assertEqual([o.seq for o in state.outbound], [1, 2])
        yield store.saveSession(state)
        state = yield store.loadSession("c1")
        self.assertEqual(state.marks, {b"mqtt:cluster:inbox:B": b"1700000000001-3"})
        yield self.raw("HSET", "mqtt:cluster:home", "c1", "C")
        store.mark = (b"m:mqtt:cluster:inbox:B", b"1800000000000-0")
        with self.assertRaises(StorageError):
            yield store.storeOutbound("c1", Outbound(Message("a/b", b"y", 2), 2, False, None,
                                                     None, 0, None, 3))
