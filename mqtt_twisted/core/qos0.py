"""The plain QoS 0 PUBLISH, forwarded as the bytes it came in, with no Message (sans-IO).

Most PUBLISHes of a busy broker are the plain kind: QoS 0, not retained, no
properties, an ordinary topic, to MQTT clients that can take them now.  For those the
general path (``inbound.on_publish``: a ``Message``, ``router.dispatch``, the tree's
match, ``delivery.deliver``, ``send_publish``, ``wire.publish_bytes``, the write) ends
in writing ``Publish.raw`` to every receiver, eight Python calls to get there.  This
handler goes straight there, and hands every other PUBLISH to ``inbound.on_publish``
unchanged, before it has done anything: the fast path is taken exactly when the
general path would have written the received bytes to every receiver at once.

What each message checks (all attribute reads, no call):

- the packet: ``raw`` set by the decoder (QoS 0, not retained, no DUP), no
  properties (v5: no alias, expiry or anything a receiver's copy would change), a
  topic no longer than the topic limits' short length and not a ``$`` topic, debug
  logging off, no authorizer or this client's cached grant for the topic;
- the router: this node's own (``LocalRouter``: a cluster router forwards, so it
  takes the general path), delivering with the broker's own ``deliver`` (a cluster
  swaps it at times), with no share group at all;
- every receiver (its sessions' merged subscriptions, cached by topic below): an MQTT
  connection of the publisher's own class and wire format (v5 or not), nothing queued,
  not paused (flow control then decides), no per-topic read check, no outbound topic
  aliases, no subscription identifier for a v5 receiver, the packet within its
  maximum packet size, and no no-local subscription of the publisher's own that would
  drop only some of its subscriptions.

The receivers of a topic are cached per router (``LocalRouter.qos0_routes``): the client
ids with the merged no-local and subscription-identifier state of their
subscriptions, keyed by topic and tied to the very list the topic tree's match cache
holds for it.  The tree makes a new list after any change to the subscriptions
(it clears its cache), so an entry is used only with the match it was made from.
Sessions and their connections are looked up per message, so a reconnect, a
takeover or a session's end is seen at once.

``core/_qos0.pyx`` compiles this very file (``include``) where a C compiler works;
``core/fastpath.py`` chooses.  The counters are those of the general path:
``messages_received`` (and the top-topics sample), ``deliveries``, ``messages_sent``
and ``bytes_sent``.
"""

# (No ``from __future__ import annotations``: Cython's ``include`` wants none, so the two
# names only a type checker sees are quoted.)
from typing import TYPE_CHECKING, Any

from mqtt_twisted.core import inbound
from mqtt_twisted.core.router import LocalRouter
from mqtt_twisted.core.stats import TOPIC_SAMPLE
from mqtt_twisted.logs import DEBUG

if TYPE_CHECKING:
    from mqtt_twisted.codec.packets import Publish
    from mqtt_twisted.core.connection import MQTTConnection

#: A receiver's subscriptions that match a topic: none, all or some of them no-local
#: (the publisher's own copy is dropped, or, for some, made from the others).
NL_NONE, NL_ALL, NL_SOME = 0, 1, 2
#: Topics whose receivers a router keeps (emptied when full, as the tree's cache).
ROUTES_CACHED = 4096

_general = inbound.on_publish


def on_publish(conn: "MQTTConnection", packet: "Publish") -> None:
    """A client's PUBLISH: the plain QoS 0 kind written to its receivers here, any other
    handed to ``inbound.on_publish``."""
    raw = packet.raw
    broker = conn.broker
    router = broker.router
    topic = packet.topic
    if (raw is None or packet.properties or router.__class__ is not LocalRouter
            or router.shared_groups or router.deliver != broker.deliver
            or len(topic) > broker.short_topic
            or topic[:1] == "$" or DEBUG.on):
        _general(conn, packet)
        return
    if broker.authorizer is not None:
        grants = conn.publish_grants
        if grants is None or grants.get(topic) is not True:
            _general(conn, packet)
            return
    tree = router.tree
    matches = tree._cache.get(topic)  # (TopicTree.match's own cache, without the call)
    if matches is None:
        matches = tree.match(topic)
    routes = router.qos0_routes
    entry = routes.get(topic)
    if entry is None or entry[0] is not matches:
        entry = receivers_of(routes, topic, matches)
    size = len(raw)
    v5 = conn.version == 5
    sender = conn.client_id
    sessions = router.sessions
    cls = conn.__class__
    targets: list[Any] = []
    for client_id, no_local, ids in entry[1]:
        if no_local and client_id == sender:
            if no_local == NL_ALL:
                continue  # [MQTT-3.8.3-3] not back to its publisher
            _general(conn, packet)
            return
        session = sessions[client_id]
        link = session.connection
        if (link is None or link.__class__ is not cls or session.queue or link.paused
                or session.read_check is not None or link._aliases_out is not None
                or (link.version == 5) is not v5 or (ids and v5)
                or (link.max_send_size and size > link.max_send_size)):
            _general(conn, packet)
            return
        targets.append(link)
    stats = broker.stats
    stats.messages_received += 1
    if not stats.messages_received & (TOPIC_SAMPLE - 1):  # 1 in 16: top topics
        stats.topics.note(topic)
    count = len(targets)
    if count:
        stats.deliveries += count
        stats.messages_sent += count
        stats.bytes_sent += count * size
        for link in targets:
            link.transport.write(raw)


def receivers_of(routes: dict[str, Any], topic: str,
                 matches: list[Any]) -> tuple[list[Any], tuple[tuple[str, int, bool], ...]]:
    """Cache and return ``(matches, receivers)``: one ``(client id, no-local state,
    any subscription id)`` per client in ``matches`` (``TopicTree.match``'s), in its
    order, as ``LocalRouter.match`` merges them."""
    merged: dict[str, list[Any]] = {}
    for client_id, options in matches:
        nl = NL_ALL if options.no_local else NL_NONE
        has_id = bool(options.subscription_id)
        seen = merged.get(client_id)
        if seen is None:
            merged[client_id] = [nl, has_id]
        else:
            if seen[0] != nl:
                seen[0] = NL_SOME
            seen[1] = seen[1] or has_id
    entry = (matches, tuple((c, nl, has_id) for c, (nl, has_id) in merged.items()))
    if len(routes) >= ROUTES_CACHED:
        routes.clear()
    routes[topic] = entry
    return entry
