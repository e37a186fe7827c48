"""The cluster router: the local router, plus forwarding to the peer nodes.

It wraps :class:`~mqtt_twisted.core.router.LocalRouter` on the router seam
(``dispatch(message, origin)``).  A message published on this node (origin
:data:`~mqtt_twisted.core.router.LOCAL`) is matched against the route table and
handed to the link once per peer node with a matching filter, then delivered
locally; a message from a peer (``receive``) is delivered locally only, never sent
on, and not retained again (the node that got it from its publisher did that, in
the shared store).

The index stays in the local router; this one keeps a count per routed filter of
its local subscribers, so that the link registers a filter in Redis on its first
local subscriber and removes it after the last.  A ``$share/group/filter``
subscription routes by its inner filter.

Sans-IO: the link (``node.ClusterLink``) does the Redis side.  A QoS 1/2 forward
returns a Deferred that the broker's journal collects (``persist``), so the
publisher's PUBACK/PUBREC waits until Redis has the entry, exactly as it waits for
the store writes of local deliveries (``core/journal.py``, ``writes_of``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from mqtt_twisted.cluster.routes import RouteTable
from mqtt_twisted.codec.topics import SHARE_PREFIX, parse_shared_filter
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.shared import Strategy
from mqtt_twisted.interfaces import IRouter
from mqtt_twisted.message import Message
from mqtt_twisted.records import Outbound
from mqtt_twisted.store.redis import encode_message


def routed_filter(topic_filter: str) -> str:
    """The filter a subscription is routed by: a share group's inner filter."""
    if topic_filter.startswith(SHARE_PREFIX):
        return parse_shared_filter(topic_filter)[1]  # type: ignore[index,no-any-return]
    return topic_filter


@implementer(IRouter)
class ClusterRouter:
    """Local dispatch, and one forward per peer node with a matching filter."""

    def __init__(self, local: LocalRouter, name: str, link: Any,
                 persist: Callable[[Any], None]) -> None:
        self.local = local
        self.name = name
        #: ``register(filter)``, ``unregister(filter)``, ``publish(node, blob)`` (QoS 0)
        #: and ``append(node, blob)`` (QoS 1/2, a Deferred fired once Redis has it).
        self.link = link
        self.persist = persist
        self.routes = RouteTable(name)
        #: routed filter -> the (client id, filter) pairs of local subscribers behind it.
        self.subscribers: dict[str, set[tuple[str, str]]] = {}
        #: Copies sent to peer nodes (one per destination node), and messages from peers.
        self.forwarded = 0
        self.received = 0
        #: routed filter -> holds on its registration beyond the local subscribers (a
        #: session that just left, still forwarded to: ``moved.py``).
        self.held: dict[str, int] = {}
        #: ``moved.Moved`` (set by the node) and its sessions that left lately.
        self.moved: Any = None
        self.leaving: dict[str, Any] = {}

    # --- the index: the local router's, and the registrations in Redis ---

    def add(self, clientId: str, topicFilter: str, options: Any) -> None:
        self.local.add(clientId, topicFilter, options)
        key = routed_filter(topicFilter)
        members = self.subscribers.get(key)
        if members is None:
            members = self.subscribers[key] = set()
            if key not in self.held:
                self.link.register(key)
        members.add((clientId, topicFilter))

    def remove(self, clientId: str, topicFilter: str) -> None:
        self.local.remove(clientId, topicFilter)
        key = routed_filter(topicFilter)
        members = self.subscribers.get(key)
        if members is None or (clientId, topicFilter) not in members:
            return
        members.discard((clientId, topicFilter))
        if not members:
            del self.subscribers[key]
            if key not in self.held:
                self.link.unregister(key)

    def hold(self, key: str) -> None:
        """Keep ``key`` registered even once no local subscriber has it."""
        self.held[key] = self.held.get(key, 0) + 1
        if key not in self.subscribers and self.held[key] == 1:
            self.link.register(key)

    def unhold(self, key: str) -> None:
        count = self.held.get(key, 0) - 1
        if count > 0:
            self.held[key] = count
            return
        self.held.pop(key, None)
        if key not in self.subscribers:
            self.link.unregister(key)

    def count(self) -> int:
        return self.local.count()

    def match(self, topic: str, sender: str | None = None) -> list[Any]:
        return self.local.match(topic, sender)

    def filters(self) -> list[str]:
        """The routed filters this node has local subscribers for."""
        return list(self.subscribers)

    # --- dispatch ---

    def dispatch(self, message: Message, origin: str = LOCAL) -> int:
        """Forward a local message to each peer node with a match, then deliver it here."""
        nodes = None
        if origin == LOCAL and self.routes.by_node and not message.topic.startswith("$SYS"):
            nodes = self.routes.nodes_for(message.topic)
            if nodes:
                self._forward(message, nodes)
        if self.leaving and message.qos and origin == LOCAL:
            self.moved.forward(message, nodes or ())
        return self.local.dispatch(message, origin)

    def _forward(self, message: Message, nodes: set[str]) -> None:
        blob = encode_message(message)
        link = self.link
        self.forwarded += len(nodes)
        if not message.qos:
            for node in nodes:
                link.publish(node, blob)
            return
        # Every destination, in each entry: moved.py forwards only what its session's
        # new node did not get directly.
        destinations = ",".join(nodes).encode("utf-8")
        for node in nodes:
            # Collected by the journal when a publisher waits for its acknowledgement.
            self.persist(link.append(node, blob, destinations))

    def receive(self, message: Message, origin: str, destinations: bytes = b"") -> int:
        """A peer's message: delivered to the local sessions only (and forwarded to a
        session that left lately, unless its new node got it too: ``moved.py``)."""
        self.received += 1
        if self.leaving and message.qos:
            self.moved.forward(message, destinations.decode("utf-8").split(","))
        return self.local.dispatch(message, origin)

    def sys_values(self) -> dict[str, str]:
        """This node's cluster topics under ``$SYS/broker/`` (core/systopics.py asks)."""
        return {
            "cluster/node": self.name,
            "cluster/messages/forwarded": str(self.forwarded),
            "cluster/messages/received": str(self.received),
            "cluster/routes": str(len(self.routes)),
        }

    # --- what the broker uses beyond IRouter (plugins.md, "The router seam") ---

    def hand_over(self, out: Outbound, leaving: str) -> None:
        self.local.hand_over(out, leaving)

    @property
    def shared_strategy(self) -> Strategy:
        return self.local.shared_strategy

    @shared_strategy.setter
    def shared_strategy(self, strategy: Strategy) -> None:
        self.local.shared_strategy = strategy
