"""Python function calls per routed message, in process: a check that a refactoring of
the core added no call to the per-message path.

Drives the sans-IO broker (``mqtt_twisted.testing``) with raw packets: one publisher,
one subscriber, QoS 0 and QoS 1 (publisher PUBACK and subscriber PUBACK included),
and counts every Python-level call with ``sys.setprofile`` over N messages.  Counts,
unlike times, do not depend on the machine's load, so two checkouts compare exactly:

    python bench/calls_per_message.py
    python bench/calls_per_message.py --checkout /path/to/older/checkout
    python bench/calls_per_message.py --more   # also per connection cycle, per SUBSCRIBE
    MQTT_TWISTED_PURE=1 python bench/calls_per_message.py   # the pure codec (docs/speedups.md)

``--cluster`` counts a QoS 1 message that crosses nodes instead: two cluster nodes in
one process (``ClusterNode`` on sans-IO brokers, Redis replaced by replies made with
the RESP codec and parsed as the receiving node parses them), the publisher on A, the
subscriber on B, ``--turn`` messages read in one reactor turn (the outbox batches per
turn); calls counted on A (reading the PUBLISHes, sending to B's stream, the PUBACKs)
and on B (parsing the stream reply, delivering, the subscriber's PUBACKs, XACK).
``--nodes N`` routes each message to N nodes (B and N-1 whose entries are answered, not
read): a turn's entries then go in one MULTI/EXEC (``cluster/batch.py``, "Order"),
``--pipelined`` sends them as before to compare.  ``--spread N`` has the publisher
spread its messages over N nodes as ``bench/cluster.py --scenario spread`` does (1/N
stay on A), and prints the calls per message of all nodes together: against one
node's QoS 1 figure, the scaling the Python work alone allows (no reactor, no
syscalls: see docs/cluster.md, "Benchmarks").

``--redis`` counts a QoS 1 message to a **persistent** subscriber on the Redis store
instead (the store writes it for the subscriber's session, the publisher's PUBACK waits
for them): ``RedisStore`` with its connection replaced by a transport that keeps what
is written, answered as Redis would (``1`` for each command), ``--turn`` PUBLISHes a
reactor turn then the subscriber's PUBACKs for what it got, a turn too; with the broker's
default in-flight window (20) most messages are queued first.  ``--memory`` runs the
same on the memory store, to compare.  It prints the Redis commands per message too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = r"""
import sys
if __import__("os").environ.get("CALLS_PER_MESSAGE_PLAIN"):  # --plain
    sys.setprofile = lambda f: None
from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.testing import FakeClient, make_broker

N = int(sys.argv[1])
try:
    from mqtt_twisted.codec import _accel
    print("codec:", "compiled" if _accel.compiled_in_use() else "pure Python")
except ImportError:  # a checkout from before the compiled codec
    print("codec: pure Python")
broker, _ = make_broker()
sub = FakeClient(broker, 4)
sub.connect("sub")
for qos in (0, 1):
    sub.subscribe(f"q{qos}/t", qos=qos)
pub = FakeClient(broker, 4)
pub.connect("pub")
calls = [0]

def count(frame, event, arg):
    if event == "call":
        calls[0] += 1

for qos in (0, 1):
    packets = [encode(Publish(f"q{qos}/t", b"x" * 16, qos, False, False,
                              (i % 60000) + 1 if qos else None), 4) for i in range(N)]
    acks = [encode(PubAck((i % 60000) + 1), 4) for i in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        pub.connection.dataReceived(packets[i])
        if qos:
            sub.connection.dataReceived(acks[i])
    sys.setprofile(None)
    sub.transport.written.clear()
    pub.transport.written.clear()
    print(f"QoS {qos}: {calls[0] / N:.1f} Python calls per message")

# QoS 2: both handshakes (publisher PUBREC/PUBREL/PUBCOMP, subscriber PUBREC/PUBREL/
# PUBCOMP), a subscriber of its own so that the broker's packet ids start at 1.
try:
    from mqtt_twisted.codec import PubComp, PubRec, PubRel
    sub2 = FakeClient(broker, 4)
    sub2.connect("sub2")
    sub2.subscribe("q2/t", qos=2)
    packets = [encode(Publish("q2/t", b"x" * 16, 2, False, False, (i % 60000) + 1), 4)
               for i in range(N)]
    recs = [encode(PubRec((i % 60000) + 1), 4) for i in range(N)]
    rels = [encode(PubRel((i % 60000) + 1), 4) for i in range(N)]
    comps = [encode(PubComp((i % 60000) + 1), 4) for i in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        pub.connection.dataReceived(packets[i])
        sub2.connection.dataReceived(recs[i])
        sub2.connection.dataReceived(comps[i])
        pub.connection.dataReceived(rels[i])
    sys.setprofile(None)
    delivered = bytes(sub2.transport.written).count(b"q2/t")
    completed = bytes(pub.transport.written).count(bytes([0x70, 2]))
    assert delivered == N and completed >= N, (delivered, completed)
    print(f"QoS 2: {calls[0] / N:.1f} Python calls per message")
except ImportError:  # a checkout without these names
    pass

if "--more" in sys.argv:
    from mqtt_twisted.codec import Connect, Disconnect, Subscribe, Subscription
    from mqtt_twisted.testing import FakeTransport
    # A connection's life: built, CONNECT, CONNACK, DISCONNECT, closed.
    connects = [encode(Connect(f"cycle{i}", 4, True, 0), 4) for i in range(N)]
    bye = encode(Disconnect(0), 4)
    transports = [FakeTransport() for _ in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        conn = broker.build_connection(transports[i], "peer")
        conn.dataReceived(connects[i])
        conn.dataReceived(bye)
        conn.connectionLost(None)
    sys.setprofile(None)
    print(f"connect: {calls[0] / N:.1f} Python calls per CONNECT-CONNACK-DISCONNECT")
    # One new filter per SUBSCRIBE (SUBACK included).
    subs = [encode(Subscribe((i % 60000) + 1, [Subscription(f"s/{i}/+", 1)]), 4)
            for i in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        sub.connection.dataReceived(subs[i])
    sys.setprofile(None)
    print(f"subscribe: {calls[0] / N:.1f} Python calls per SUBSCRIBE of one new filter")
    # SUBSCRIBEs of 100 new filters each, a third exact, '+' and '#' (bench/loadgen.py's
    # many-subscriptions scenario), from a client of its own (under the quota).
    from mqtt_twisted.core.settings import BrokerSettings
    big, _ = make_broker(BrokerSettings(max_subscriptions=0))
    many = FakeClient(big, 4)
    many.connect("many")
    kinds = ("m/{0}/e{0}", "m/+/p{0}", "m/{0}/#")
    packets = [encode(Subscribe(k % 60000 + 1, [Subscription(kinds[i % 3].format(k * 100 + i))
                                                for i in range(100)]), 4)
               for k in range(max(1, N // 100))]
    calls[0] = 0
    sys.setprofile(count)
    for data in packets:
        many.connection.dataReceived(data)
    sys.setprofile(None)
    print(f"subscribe: {calls[0] / (100 * len(packets)):.1f} Python calls per filter in "
          f"SUBSCRIBEs of 100 new filters")
"""


_CLUSTER = r"""
import sys
if __import__("os").environ.get("CALLS_PER_MESSAGE_PLAIN"):  # --plain
    sys.setprofile = lambda f: None
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.cluster.resp import Parser, encode_reply
from mqtt_twisted.cluster.routes import ADD, SHARE
from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.store.redis import parse_url
from mqtt_twisted.testing import FakeClient, make_broker

N, TURN, MORE, PIPELINED, SPREAD = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                    sys.argv[4] == "1", int(sys.argv[5]))
SHARE_KEY = "$share/g/x/t" if sys.argv[6] == "1" else None  # B's subscriber: a group member


class Redis:
    def __init__(self):
        self.sent = []

    def command(self, *args):
        d = Deferred()
        self.sent.append((args, d))
        return d

    def command_blocking(self, block, *args):
        return self.command(*args)

    def pipeline(self, commands):  # one Deferred, the last command's (MULTI ... EXEC)
        d = Deferred()
        self.sent += [(args, None) for args in commands[:-1]]
        self.sent.append((commands[-1], d))
        return d


def node(name):
    # A turn's messages reach B's subscriber at once: with --spread, room for them in
    # flight, as one node's subscriber has (it acknowledges each before the next).
    broker, clock = make_broker(BrokerSettings(max_inflight=65535) if SPREAD else None)
    n = ClusterNode(clock, parse_url("redis://127.0.0.1:1/0"), name, broker)
    locate = broker.locate_session
    n.install()
    broker.locate_session = locate  # no other node has had these client ids
    n.commands, n.reader = Redis(), Redis()
    n.fence.confirmed_at = clock.seconds()
    return n, broker, clock


a, broker_a, clock_a = node("A")
b, broker_b, clock_b = node("B")
topics = ["x/t"]
if SPREAD:  # x/0 on A, x/1 on B, x/2... on nodes whose entries are answered, not read
    topics = [f"x/{k}" for k in range(SPREAD)]
    sub_a = FakeClient(broker_a, 4)
    sub_a.connect("sub_a")
    sub_a.subscribe("x/0", qos=1)
    for k in range(2, SPREAD):
        a.router.routes.apply(ADD, f"C{k}", f"x/{k}")
if SHARE_KEY:
    a.router.routes.apply(SHARE, "B", SHARE_KEY, 1)
else:
    a.router.routes.apply(ADD, "B", topics[-1 if not SPREAD else 1])
for k in range(MORE):  # more nodes with a subscriber: their entries answered, not read
    a.router.routes.apply(ADD, f"C{k}", "x/t")
if PIPELINED:  # a turn's entries for several nodes pipelined, not in MULTI/EXEC
    a.link.outbox._transaction = None
sub = FakeClient(broker_b, 4)
sub.connect("sub")
sub.subscribe(SHARE_KEY or topics[-1 if not SPREAD else 1], qos=1)
pub = FakeClient(broker_a, 4)
pub.connect("pub")
b.inbox.start()
a.commands.sent.clear()
b.commands.sent.clear()
parser = Parser()
calls = [0]
on_a = on_b = 0


def count(frame, event, arg):
    if event == "call":
        calls[0] += 1


packets = [encode(Publish(topics[i % len(topics)], b"x" * 16, 1, False, False,
                          (i % 60000) + 1), 4) for i in range(N)]
acks = [encode(PubAck((i % 60000) + 1), 4) for i in range(N)]
to_b = [i for i in range(N) if not SPREAD or i % SPREAD == 1]  # B's messages, in order
at_b = at_a = 0
entry = 0
for first in range(0, N, TURN):
    last = min(N, first + TURN)
    calls[0] = 0
    sys.setprofile(count)
    for i in range(first, last):  # one turn of A: the publisher's PUBLISHes
        pub.connection.dataReceived(packets[i])
        if SPREAD and not i % SPREAD:  # delivered here: acknowledged, as on one node
            sub_a.connection.dataReceived(acks[at_a])
            at_a += 1
    clock_a.advance(0)  # the turn is over: the outbox sends
    sent = list(a.commands.sent)
    a.commands.sent.clear()
    replies = []
    queued = None
    for args, d in sent:  # Redis has them: the PUBACKs go
        if args[0] == b"MULTI":
            queued = []
            if d is not None:
                d.callback(b"OK")
            continue
        if args[0] == b"EXEC":
            d.callback(queued)
            queued = None
            continue
        entry += 1
        entry_id = b"1-%d" % entry
        if queued is None:
            d.callback(entry_id)
        else:
            queued.append(entry_id)
            if d is not None:
                d.callback(b"QUEUED")
        if args[1] == b"mqtt:cluster:inbox:B":
            fields = list(args[args.index(b"*") + 1:])
            replies.append([entry_id, fields])
    sys.setprofile(None)
    on_a += calls[0]
    if not replies:
        continue  # nothing for B this turn
    wire = encode_reply([[b"mqtt:cluster:inbox:B", replies]])
    calls[0] = 0
    sys.setprofile(count)
    # The last read's XACK (pipelined with the read, on its connection) and the read.
    for args, d in b.reader.sent[:-1]:
        d.callback(len(args) - 3)
    [(_, read)] = b.reader.sent[-1:]
    b.reader.sent.clear()
    [reply] = parser.feed(wire)  # as B's connection parses it
    read.callback(reply)  # delivered to the subscriber
    while at_b < len(to_b) and to_b[at_b] < last:
        sub.connection.dataReceived(acks[at_b])
        at_b += 1
    for args, d in b.commands.sent:  # XACK (after store writes)
        d.callback(len(args) - 3)
    b.commands.sent.clear()
    sys.setprofile(None)
    on_b += calls[0]
got = sum(1 for p in sub.received() if isinstance(p, Publish))
assert got == len(to_b), got
if SPREAD:
    # Every crossing message costs its node what B's cost B: all nodes, per message.
    per_b = on_b / len(to_b)
    print(f"spread over {SPREAD} nodes, {TURN} a turn: {on_a / N:.1f} Python calls per "
          f"message on A (publisher's node, 1/{SPREAD} delivered there), {per_b:.1f} per "
          f"crossing message on its node; all nodes "
          f"{(on_a + per_b * (N - N // SPREAD)) / N:.1f} per message")
    sys.exit()
more = f", to {MORE + 1} nodes{' pipelined' if PIPELINED else ''}" if MORE else ""
more += ", B's subscriber a share group's only member" if SHARE_KEY else ""
print(f"QoS 1 across nodes, {TURN} a turn{more}: {on_a / N:.1f} Python calls per message "
      f"on A (publisher's node), {on_b / N:.1f} on B (subscriber's), "
      f"{(on_a + on_b) / N:.1f} in all")
"""


_REDIS = r"""
import sys
if __import__("os").environ.get("CALLS_PER_MESSAGE_PLAIN"):  # --plain
    sys.setprofile = lambda f: None
from twisted.internet.task import Clock
from mqtt_twisted.cluster.resp import Parser
from mqtt_twisted.codec import Connect, PubAck, Publish, encode
from mqtt_twisted.store._redisscripts import SHAS
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.redis import RedisStore, parse_url
from mqtt_twisted.testing import FakeClient, make_broker

N, TURN, MEMORY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"


class Transport:
    def __init__(self):
        self.data = []

    def write(self, data):
        self.data.append(data)


class Connection:  # a connection the store's link took over (store/_redislink.py)
    connected = True

    def __init__(self):
        self.transport = Transport()


reactor = Clock()  # the store's; the broker has its own
store = (MemoryStore(reactor) if MEMORY
         else RedisStore(reactor, parse_url("redis://127.0.0.1:1/0?pool=1")))
broker, clock = make_broker(store=store)
redis = Connection()
if not MEMORY:
    store._links[0].protocol = redis
parser = Parser()
calls = [0]
counting = [False]
commands = [0]


def count(frame, event, arg):
    if event == "call":
        calls[0] += 1


def turn():
    # The end of a reactor turn: the store writes its commands; Redis answers each.
    clock.advance(0)
    reactor.advance(0)
    data = b"".join(redis.transport.data)
    redis.transport.data.clear()
    if not data:
        return
    sys.setprofile(None)  # Redis's work, not the broker's
    sent = parser.feed(data)
    commands[0] += len(sent)
    replies = [b"OK" if c[0] == b"SET" else b"\x90" if c[0] == b"EVALSHA" and
               c[1] == SHAS["match_retained"] else 1 for c in sent]
    sys.setprofile(count if counting[0] else None)
    store._links[0].answered(redis, replies)


sub = FakeClient(broker, 4)
sub.send(Connect("sub", 4, False, 0))  # clean session 0: persistent
turn()
turn()
sub.subscribe("q/t", qos=1)
turn()
pub = FakeClient(broker, 4)
pub.connect("pub")
turn()
sub.received()
pub.received()
packets = [encode(Publish("q/t", b"x" * 16, 1, False, False, (i % 60000) + 1), 4)
           for i in range(N)]
commands[0] = 0


def acked():  # the subscriber acknowledges what it got (encoding it is not counted)
    sys.setprofile(None)
    got = [p for p in sub.received() if isinstance(p, Publish)]
    acks = b"".join(encode(PubAck(p.packet_id), 4) for p in got)
    sys.setprofile(count)
    if acks:
        sub.connection.dataReceived(acks)
        turn()
    return bool(acks)


counting[0] = True
sys.setprofile(count)
for first in range(0, N, TURN):
    for i in range(first, min(N, first + TURN)):
        pub.connection.dataReceived(packets[i])
    turn()
    acked()
while acked():
    pass
sys.setprofile(None)
acks = sum(1 for p in pub.received() if isinstance(p, PubAck))
assert acks == N, acks
what = "memory store" if MEMORY else "Redis store"
print(f"QoS 1 to a persistent subscriber, {what}, {TURN} a turn: {calls[0] / N:.1f} "
      f"Python calls per message, {commands[0] / N:.3f} Redis commands per message")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--more", action="store_true",
                        help="also count the calls per connection cycle and per SUBSCRIBE")
    parser.add_argument("--cluster", action="store_true",
                        help="a QoS 1 message crossing from node A to node B")
    parser.add_argument("--turn", type=int, action="append",
                        help="--cluster, --redis: messages per reactor turn (default 1 "
                        "and 100)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="--cluster: nodes with a subscriber each (B, then nodes whose "
                        "entries are answered but not read); with more than one, a "
                        "turn's entries go in one MULTI/EXEC")
    parser.add_argument("--pipelined", action="store_true",
                        help="--cluster --nodes N: the entries pipelined instead (to "
                        "compare)")
    parser.add_argument("--redis", action="store_true",
                        help="QoS 1 to a persistent subscriber on the Redis store")
    parser.add_argument("--memory", action="store_true",
                        help="--redis's scenario on the memory store")
    parser.add_argument("--spread", type=int, default=0,
                        help="--cluster: the publisher spreads its messages over N nodes "
                        "(bench/cluster.py --scenario spread, in process): x/0 has a "
                        "subscriber on A, x/1 on B, x/2... on nodes answered, not read; "
                        "prints the calls per message of all nodes, one node's "
                        "(QoS 1, no --cluster) to compare")
    parser.add_argument("--share", action="store_true",
                        help="--cluster: B's subscriber is the only member of a share group "
                        "($share/g/x/t), not a plain subscriber")
    parser.add_argument("--plain", action="store_true",
                        help="run the scenarios without the call counter (the figures "
                        "printed are then 0): for valgrind --tool=callgrind "
                        "--trace-children=yes to count their instructions")
    args = parser.parse_args()
    print(f"checkout: {args.checkout}")
    env = {"PYTHONPATH": str(args.checkout)}
    if args.plain:
        # The programs' sys.setprofile(count) and sys.setprofile(None) become no-ops.
        env["CALLS_PER_MESSAGE_PLAIN"] = "1"
    # The compiled codec (docs/speedups.md) makes fewer Python calls than the pure one:
    # MQTT_TWISTED_PURE=1 counts the pure path, the figure to compare across checkouts.
    env.update((k, v) for k, v in os.environ.items() if k.startswith("MQTT_TWISTED_"))
    if args.redis or args.memory:
        for turn in args.turn or [1, 100]:
            subprocess.run([sys.executable, "-c", _REDIS, str(args.messages), str(turn),
                            "1" if args.memory else "0"],
                           check=True, env=env, cwd=args.checkout)
        return
    if not args.cluster:
        subprocess.run([sys.executable, "-c", _PROGRAM, str(args.messages)]
                       + (["--more"] if args.more else []), check=True,
                       env=env, cwd=args.checkout)
        return
    for turn in args.turn or [1, 100]:
        subprocess.run([sys.executable, "-c", _CLUSTER, str(args.messages), str(turn),
                        str(args.nodes - 1), "1" if args.pipelined else "0",
                        str(args.spread), "1" if args.share else "0"],
                       check=True, env=env, cwd=args.checkout)


if __name__ == "__main__":
    main()
