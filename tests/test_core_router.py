"""The router against the codec's reference matcher, and its dispatch seam.

Hypothesis builds random subscription sets over a small alphabet of levels (so
that filters and topics actually meet, ``$`` topics and empty levels included) and
checks that ``LocalRouter.match`` gives exactly what a brute force over
``codec.topics.topic_matches`` gives, merged per client as MQTT 5 §3.3.5 says.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from mqtt_twisted.codec.topics import topic_matches
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.session import Session, SubscriptionOptions
from mqtt_twisted.interfaces import IRouter
from mqtt_twisted.message import Message

LEVELS = st.sampled_from(["a", "b", "", "$x", "c"])
CLIENTS = st.sampled_from(["c1", "c2", "c3", "c4"])


@st.composite
def topic_filters(draw: Any) -> str:
    levels = draw(st.lists(st.one_of(LEVELS, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@st.composite
def topics(draw: Any) -> str:
    return "/".join(draw(st.lists(LEVELS, min_size=1, max_size=5)))


@st.composite
def subscriptions(draw: Any) -> list[tuple[str, str, SubscriptionOptions]]:
    entries = draw(st.lists(st.tuples(
        CLIENTS, topic_filters(), st.integers(0, 2), st.booleans(), st.booleans(),
        st.one_of(st.none(), st.integers(1, 50))), max_size=25))
    return [(client, topic_filter, SubscriptionOptions(qos, no_local, rap, 0, sub_id))
            for client, topic_filter, qos, no_local, rap, sub_id in entries]


def reference(subs: list[tuple[str, str, SubscriptionOptions]], topic: str,
              sender: str | None) -> dict[str, tuple[int, bool, list[int]]]:
    """Brute force: every (client, filter) pair checked with topic_matches; the last
    options given for a (client, filter) win, as a re-SUBSCRIBE replaces them."""
    latest: dict[tuple[str, str], SubscriptionOptions] = {}
    for client, topic_filter, options in subs:
        latest[(client, topic_filter)] = options
    merged: dict[str, tuple[int, bool, list[int]]] = {}
    for (client, topic_filter), options in latest.items():
        if not topic_matches(topic_filter, topic):
            continue
        if options.no_local and client == sender:
            continue
        qos, rap, ids = merged.get(client, (0, False, []))
        merged[client] = (max(qos, options.qos), rap or options.retain_as_published,
                          ids + ([options.subscription_id] if options.subscription_id else []))
    return merged


def router_with(subs: list[tuple[str, str, SubscriptionOptions]]) -> LocalRouter:
    router = LocalRouter({}, lambda *args: None)
    for client, topic_filter, options in subs:
        router.add(client, topic_filter, options)
    return router


@settings(max_examples=400, deadline=None)
@given(subs=subscriptions(), topic=topics(), sender=st.one_of(st.none(), CLIENTS))
def test_match_agrees_with_topic_matches(subs: Any, topic: str, sender: str | None) -> None:
    got = {client: (qos, rap, sorted(ids or ()))
           for client, qos, rap, ids in router_with(subs).match(topic, sender)}
    want = {client: (qos, rap, sorted(ids))
            for client, (qos, rap, ids) in reference(subs, topic, sender).items()}
    assert got == want


@settings(max_examples=200, deadline=None)
@given(subs=subscriptions(), removed=st.lists(st.tuples(CLIENTS, topic_filters()), max_size=10),
       topic=topics())
def test_remove_agrees_with_topic_matches(subs: Any, removed: Any, topic: str) -> None:
    router = router_with(subs)
    for client, topic_filter in removed:
        router.remove(client, topic_filter)
    gone = set(removed)
    kept = [s for s in subs if (s[0], s[1]) not in gone]
    assert {c for c, *_ in router.match(topic)} == set(reference(kept, topic, None))


def test_dispatch_merges_caps_qos_and_skips_no_local() -> None:
    """One delivery per client at min(subscription QoS, message QoS), retain only with
    retain-as-published, and the sender's no-local subscription skipped."""
    sessions = {c: Session(c) for c in ("a", "b", "sender")}
    calls: list[tuple[Any, ...]] = []
    router = LocalRouter(sessions, lambda *args: calls.append(args))
    router.add("a", "t/#", SubscriptionOptions(2, subscription_id=7))
    router.add("a", "t/+", SubscriptionOptions(0, retain_as_published=True))
    router.add("b", "t/x", SubscriptionOptions(0))
    router.add("sender", "t/x", SubscriptionOptions(1, no_local=True))
    message = Message("t/x", b"", 1, True, None, {}, 0.0, "sender")
    assert router.dispatch(message, LOCAL) == 2
    got = {args[0].clientId: args[2:] for args in calls}
    assert got == {"a": (1, True, (7,), None), "b": (0, False, None, None)}


def test_shared_group_gets_one_delivery_and_counts() -> None:
    sessions = {c: Session(c) for c in ("m1", "m2")}
    calls: list[tuple[Any, ...]] = []
    router = LocalRouter(sessions, lambda *args: calls.append(args))
    router.add("m1", "$share/g/s/+", SubscriptionOptions(1))
    router.add("m2", "$share/g/s/+", SubscriptionOptions(1))
    assert router.count() == 2
    for _ in range(4):
        router.dispatch(Message("s/1", b"", 1, False, None, {}, 0.0, None), "peer-node")
    assert sorted(args[0].clientId for args in calls) == ["m1", "m1", "m2", "m2"]
    assert {args[5] for args in calls} == {"$share/g/s/+"}
    router.remove("m1", "$share/g/s/+")
    router.remove("m2", "$share/g/s/+")
    assert router.count() == 0 and router.shared_groups == {}


def test_provides_irouter() -> None:
    assert verifyObject(IRouter, LocalRouter({}, lambda *args: None))
