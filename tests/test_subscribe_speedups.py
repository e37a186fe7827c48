"""The SUBSCRIBE path's compiled loops (core/_subscribe.pyx) against their pure
specification: ``topic_tree.insert``, ``control.grant`` and ``delivery.wanted`` give
the same trees, codes, records and lists on random input, and a broker fed the same
SUBSCRIBEs ends in the same state and writes the same SUBACKs with either.  The
comparisons are skipped only where the extension was not built (CI sets
``MQTT_TWISTED_REQUIRE_EXT=1``, which makes that an import error)."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from mqtt_twisted.codec import Subscribe, Subscription, _accel, encode
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core import _compiled, control, delivery, grant, topic_tree
from mqtt_twisted.core.grant import check_filters
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.topic_tree import TopicTree, _Leaf
from mqtt_twisted.errors import ProtocolError
from mqtt_twisted.records import SubscriptionOptions
from mqtt_twisted.testing import FakeClient, make_broker

ext = _compiled.speedups
needs_ext = pytest.mark.skipif(ext is None, reason="the compiled SUBSCRIBE loops are not "
                               "built here (no C compiler, or MQTT_TWISTED_NO_EXT=1)")

LEVELS = ["a", "b", "+", "#", "", "é", "$SYS", "$x", "c/d"]


def random_filter(rng: random.Random) -> str:
    """Filters valid or not (insert takes what it is given), some shared."""
    text = "/".join(rng.choice(LEVELS) for _ in range(rng.randint(1, 4)))
    return f"$share/g{rng.randint(0, 2)}/{text}" if rng.random() < 0.1 else text


def shape(node: Any) -> Any:
    """A tree as nested tuples that tell a leaf from a node."""
    if type(node) is _Leaf:
        return ("leaf", sorted(node.items()))
    return ("node", sorted(((k is None, k or ""), shape(v) if isinstance(v, dict) else v)
                           for k, v in node.items()))


@needs_ext
def test_insert_builds_the_same_tree() -> None:
    """Random batches of adds (filters ending above, below and at others' ends, repeats,
    shared filters skipped or not) give equal trees, counts and skipped lists."""
    rng = random.Random(19)
    for _ in range(200):
        roots: list[dict[Any, Any]] = [{}, {}]
        for _ in range(rng.randint(1, 6)):
            owner = rng.choice(["x", "y", "z"])
            items = [(random_filter(rng), rng.randint(0, 9)) for _ in range(rng.randint(0, 12))]
            skip = rng.random() < 0.7
            results = []
            for root, insert in zip(roots, (topic_tree.insert, ext.insert)):
                skipped: list[Any] | None = [] if skip else None
                results.append((insert(root, owner, iter(items), skipped), skipped))
            assert results[0] == results[1], items
            assert shape(roots[0]) == shape(roots[1]), items


def packet_like(rng: random.Random) -> list[str]:
    """A SUBSCRIBE's filters as clients send them: runs sharing their first levels
    (the compiled insert goes on from the level two filters last share), some
    ending where another goes on or above it, some deeper than the levels it
    remembers, in 1-, 2- and 4-byte characters."""
    heads = ["dev/17", "dev/17/x", "dev/1", "dev", "d€v/17", "dev/\U0001F600", "", "a" * 3,
             "/".join("l" * rng.randint(0, 2) for _ in range(40))]
    tails = ["a", "b", "+", "#", "", "a/b", "+/c", "€", "x/\U0001F600"]
    filters = []
    for _ in range(rng.randint(1, 30)):
        head = rng.choice(heads)
        filters.append(f"{head}/{rng.choice(tails)}" if head else rng.choice(tails))
    return filters


@needs_ext
def test_insert_going_on_from_the_previous_filter() -> None:
    """Filters sharing levels with the one before (or not, or only some characters of
    a level: "dev/1" and "dev/17"), deeper than the levels remembered, of mixed
    widths: the compiled insert builds the pure one's tree, count and leaves."""
    rng = random.Random(23)
    for _ in range(300):
        roots: list[dict[Any, Any]] = [{}, {}]
        for _ in range(rng.randint(1, 4)):
            owner = rng.choice(["x", "y"])
            items: Any = [(f, rng.randint(0, 9)) for f in packet_like(rng)]
            if rng.random() < 0.5:  # as the broker passes them: read in place
                items = dict(items).items()
            if rng.random() < 0.3:
                items = [*items, ("$share/g/dev/17/a", 1)]
            results = []
            for root, insert in zip(roots, (topic_tree.insert, ext.insert)):
                skipped: list[Any] = []
                results.append((insert(root, owner, items, skipped), skipped))
            assert results[0] == results[1], items
            assert shape(roots[0]) == shape(roots[1]), items


@needs_ext
def test_usual_filters_matches_pure() -> None:
    """Whether a packet's filters are all the usual ones: '+' and '#' in and out of
    place, shared filters, U+0000 and line feeds, empty and long filters, any
    character width: the compiled scan answers as the pure joined-string one."""
    rng = random.Random(29)
    parts = ["a", "+", "#", "", "a+", "#b", "$share", "$share/g", "\x00", "\n", "€",
             "\U0001F600", "bb/+", "+/#"]
    for _ in range(5000):
        filters = ["/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
                   for _ in range(rng.randint(0, 4))]
        short = rng.choice([0, 3, 8, 127])
        assert ext.usual_filters(filters, short) == grant.usual_filters(filters, short), (
            filters, short)
        for f in filters:
            assert ext.usual_filters([f], short) == grant.usual_filters([f], short), f


@needs_ext
def test_tree_operations_agree_after_compiled_inserts() -> None:
    """A tree built by the compiled insert answers match, get, items and remove as one
    built by the pure insert does."""
    rng = random.Random(7)
    trees: list[TopicTree[int]] = [TopicTree(), TopicTree()]
    filters = [random_filter(rng) for _ in range(300)]
    filters = [f for f in filters if not f.startswith("$share/")]
    for impl, tree in zip((False, True), trees):
        _compiled.use(impl)
        try:
            for k in range(0, len(filters), 25):
                tree.add_many(f"o{k % 3}", [(f, k) for f in filters[k:k + 25]])
        finally:
            _compiled.use(_accel._chosen)
    assert len(trees[0]) == len(trees[1])
    assert sorted(trees[0].items()) == sorted(trees[1].items())
    for topic in ["a", "a/b", "$SYS/a", "a//b", "é/c/d", "b/+/#", "$x", ""]:
        assert sorted(trees[0].match(topic)) == sorted(trees[1].match(topic)), topic
    for f in filters[::7]:
        assert trees[0].remove(f, "o0") == trees[1].remove(f, "o0")
    assert shape(trees[0]._root) == shape(trees[1]._root)


@needs_ext
def test_untracked_only_while_nothing_tracked_goes_in() -> None:
    """The compiled insert leaves new leaves and nodes off the collector's lists when
    their values are off them (the compiled grant's options records), and CPython
    puts a leaf back on them when a value that is on them goes in."""
    root: dict[Any, Any] = {}
    record = SubscriptionOptions()
    ext.insert(root, "x", [("a/b/c", 1)])
    assert not gc.is_tracked(root["a"]["b"]["c"]) and not gc.is_tracked(root["a"])
    ext.insert(root, "y", [("a/b/c", record)])  # a tracked value: tracked again
    assert gc.is_tracked(record) and gc.is_tracked(root["a"]["b"]["c"])
    _, added, granted = ext.grant([Subscription("t", 1)], [(0, None)], None, {}, 0, 2,
                                      True, None, None)
    assert not gc.is_tracked(added["t"]) and not gc.is_tracked(granted[0])
    ext.insert(root, "z", added.items())
    assert not gc.is_tracked(root["t"])
    pure_root: dict[Any, Any] = {}
    topic_tree.insert(pure_root, "z", [("t", [])])
    ext.insert(root, "w", [("t", [])])  # a list: tracked, so its leaf is
    assert gc.is_tracked(root["t"]) and gc.is_tracked(pure_root["t"])


def random_subscriptions(rng: random.Random, pool: list[str]) -> list[Subscription]:
    return [Subscription(rng.choice(pool), rng.randint(0, 2), rng.random() < 0.2,
                         rng.random() < 0.3, rng.randint(0, 2))
            for _ in range(rng.randint(1, 15))]


def outcome(grant: Any, *args: Any) -> Any:
    """What a grant call returns and does, comparable across implementations: the
    records by value and by which filters share one."""
    hits: list[str] = []
    try:
        codes, added, granted = grant(*args, hits.append)
    except ProtocolError as e:
        return ("error", str(e), hits)
    ids: dict[int, int] = {}
    for o in [*added.values(), *(o for _, o, _ in granted)]:
        ids.setdefault(id(o), len(ids))
    return (codes, [type(c) for c in codes],
            [(f, o.as_tuple(), ids[id(o)]) for f, o in added.items()],
            [(f, o.as_tuple(), ids[id(o)], new) for f, o, new in granted], hits)


@needs_ext
def test_grant_matches_pure() -> None:
    """Random SUBSCRIBEs (repeats, shares with and without no local, refusals, the
    authorizer's answers, held filters, quotas, both versions, subscription ids) get
    the same codes, the same records shared the same way, the same granted list and
    the same quota hits, or the same protocol error."""
    rng = random.Random(3)
    pool = ["a", "a/+", "a/#", "b/#/c", "$share/g/a", "$share/h/#", "c", "d/e", "+/+", "#"]
    settings = [BrokerSettings(), BrokerSettings(wildcard_subscriptions=False),
                BrokerSettings(shared_subscriptions=False),
                BrokerSettings(subscription_identifiers=False)]
    for _ in range(2000):
        subs = random_subscriptions(rng, pool)
        sub_id = rng.choice([None, 5])
        checks = check_filters(rng.choice(settings), [s.topic_filter for s in subs], sub_id)
        allowed = rng.choice([None, [rng.random() < 0.8 for _ in subs]])
        held = {f: SubscriptionOptions() for f in rng.sample(pool, rng.randint(0, 4))}
        args = (subs, checks, allowed, held, rng.choice([0, 0, 2, 4, 6]),
                rng.randint(0, 2), rng.random() < 0.5, sub_id)
        assert outcome(control.grant, *args) == outcome(ext.grant, *args), args
        assert ext.topic_filters(subs) == control.topic_filters(subs)


@needs_ext
def test_wanted_matches_pure() -> None:
    """Which granted filters' retained messages are looked up: the same with and
    without a store that can tell, for plain, $SYS and other $ filters."""
    rng = random.Random(5)
    pool = ["a", "a/#", "$SYS", "$SYS/#", "$SYSX/a", "$x/y", "#", "+/b"]
    records = [SubscriptionOptions(0, False, False, h) for h in (0, 1, 2)]
    for _ in range(1000):
        granted = [(rng.choice(pool), rng.choice(records), rng.random() < 0.5)
                   for _ in range(rng.randint(0, 10))]
        held = set(rng.sample(pool, 3))
        may = rng.choice([None, held.__contains__])
        plain, sys_ = rng.random() < 0.5, rng.random() < 0.5
        want = delivery.wanted(granted, may, plain, sys_)
        got = ext.wanted(granted, may, plain, sys_)
        assert [(f, o) for f, o in want] == [(f, o) for f, o in got]


def broker_run(compiled: bool, seed: int) -> Any:
    """Random v5 and v3 SUBSCRIBEs from three clients, under a quota and an
    authorizer: every byte written, the tree and the sessions' subscriptions."""
    _accel.use(compiled)
    try:
        from tests.test_subscribe_batch import DenySecret

        rng = random.Random(seed)
        broker, _ = make_broker(BrokerSettings(max_subscriptions=12, maximum_qos=1),
                                authorizer=DenySecret())
        clients = [FakeClient(broker, v) for v in (5, 5, 4)]
        for n, c in enumerate(clients):
            c.connect(f"c{n}")
        pool = ["a", "a/+", "a/#", "secret/x", "b/#/c", "$share/g/a", "$share/g/b/#",
                "c/d", "+/+", "#", "a/b/c", "x/+/y"]
        for k in range(60):
            c = rng.choice(clients)
            subs = random_subscriptions(rng, pool)
            if c.version == 4:
                subs = [Subscription(s.topic_filter, s.qos) for s in subs]
            else:
                subs = [s for s in subs if not (s.no_local and s.topic_filter[0] == "$")]
            props = {PropertyId.SUBSCRIPTION_IDENTIFIER: k + 1} if c.version == 5 and k % 3 else {}
            c.send_bytes(encode(Subscribe(k + 1, subs, props), c.version))
        written = [bytes(c.transport.written) for c in clients]
        sessions = {cid: [(f, o.as_tuple()) for f, o in s.subscriptions.items()]
                    for cid, s in broker.sessions.items()}
        return written, shape(broker.router.tree._root), sessions, sorted(
            (k, sorted((c, o.as_tuple()) for c, o in g.members.items()))
            for k, g in broker.router.shared_groups.items())
    finally:
        _accel.use_default()


@needs_ext
@pytest.mark.parametrize("seed", range(5))
def test_broker_ends_alike(seed: int) -> None:
    """Shares, no local, subscription ids, resubscriptions replacing options, denied
    filters and the quota: the same SUBACK bytes, tree and sessions either way."""
    assert broker_run(False, seed) == broker_run(True, seed)


def test_choice_follows_the_codec_and_the_environment() -> None:
    """Compiled by default where built; MQTT_TWISTED_PURE=1 and ``_accel.use(False)``
    bind the pure loops too."""
    program = ("from mqtt_twisted.core import _compiled, control; from mqtt_twisted.codec "
               "import _accel; a = _compiled.compiled_in_use(); _accel.use(False); "
               "print(a, _compiled.compiled_in_use(), control._grant is control.grant)")
    env = {k: v for k, v in os.environ.items() if k != "MQTT_TWISTED_PURE"}
    default = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
    assert default == [str(ext is not None), "False", "True"]
    pure = subprocess.run([sys.executable, "-c", program], env={**env, "MQTT_TWISTED_PURE": "1"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert pure == ["False", "False", "True"]


def test_missing_extension_falls_back_unless_required() -> None:
    """Without the extension the pure loops run and a SUBSCRIBE works; with
    MQTT_TWISTED_REQUIRE_EXT=1 the import fails with a one-line reason instead."""
    program = ("import sys; sys.modules['mqtt_twisted.core._subscribe'] = None\n"
               "from mqtt_twisted.testing import FakeClient, make_broker\n"
               "from mqtt_twisted.core import _compiled\n"
               "b, _ = make_broker(); c = FakeClient(b, 5); c.connect('c')\n"
               "assert c.subscribe('a/#', qos=1)[0].reason_codes == [1]\n"
               "print(_compiled.speedups, _compiled.compiled_in_use())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    fallback = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                              text=True)
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.split() == ["None", "False"]
    required = subprocess.run([sys.executable, "-c", program],
                              env={**env, "MQTT_TWISTED_REQUIRE_EXT": "1"},
                              capture_output=True, text=True)
    assert required.returncode != 0
    assert "the compiled SUBSCRIBE loops" in required.stderr


@needs_ext
def test_subscriptions_read_and_written_by_slot() -> None:
    """Both extensions reach a Subscription's fields by their slots (a change to the
    dataclass that moves them makes them use attribute lookups, and fails here); the
    compiled decoder's Subscriptions, atoms only, are off the collector's lists."""
    assert ext.SUBSCRIPTION_SLOTS_KNOWN
    if _accel.speedups is None:
        pytest.skip("the compiled codec is not built here")
    data = encode(Subscribe(3, [Subscription("a/+", 1, True, False, 2)]), 5)
    packet = _accel.speedups.decode_subscribe(0x02, data, 2, len(data), 5)
    (sub,) = packet.subscriptions
    assert sub == Subscription("a/+", 1, True, False, 2) and not gc.is_tracked(sub)
    assert ext.topic_filters(packet.subscriptions) == ["a/+"]
