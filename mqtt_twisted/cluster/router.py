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
local subscriber and removes it after the last.

Share groups get one message per group cluster-wide (``shared.py``): the node of a
local message picks one node per matching group, by the nodes' weights (online
members), and names the groups in the copy it sends there; a copy from a peer is
given to the local members of the groups it names only (and to the plain
subscriptions).  A group named in a copy that has no member here any more is sent on
to a node that has one, once.

The count ``dispatch`` returns (MQTT 5's PUBACK 0x10, the HTTP bridge's
``"subscribers"``) is the local deliveries plus one per peer node the message was
sent to: every such node had a matching filter or group member.

Sans-IO: the link (``node.ClusterLink``) does the Redis side.  A QoS 1/2 forward
returns a Deferred that the broker's journal collects (``persist``), so the
publisher's PUBACK/PUBREC waits until Redis has the entry, exactly as it waits for
the store writes of local deliveries (``core/journal.py``, ``writes_of``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from zope.interface import implementer

from mqtt_twisted.cluster.routes import RouteTable
from mqtt_twisted.cluster.shared import OWN, HeldCopies, has_clean_member, online_members
from mqtt_twisted.codec.topics import SHARE_PREFIX, topic_matches
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.shared import Strategy
from mqtt_twisted.core.stats import LATENCY_SAMPLE
from mqtt_twisted.interfaces import IRouter
from mqtt_twisted.message import Message
from mqtt_twisted.records import Outbound
from mqtt_twisted.writes import SharedWrite


@implementer(IRouter)
class ClusterRouter:
    """Local dispatch, and one forward per peer node with a matching filter."""

    def __init__(self, local: LocalRouter, name: str, link: Any,
                 persist: Callable[[Any], None]) -> None:
        self.local = local
        self.name = name
        #: ``register(filter)``, ``unregister(filter)``, ``share(key, weight)``,
        #: ``unshare(key)``, ``publish(node, message, groups, resent)`` (QoS 0) and
        #: ``append(node, message, destinations, groups, resent)`` (QoS 1/2, a
        #: Deferred-like write fired once Redis has it).
        self.link = link
        self.persist = persist
        #: The plain QoS 0 PUBLISHes' lanes to peer nodes (``rawlane.py``; None: a link
        #: without them, every message takes :meth:`dispatch`).
        self.raw_lanes = getattr(getattr(link, "outbox", None), "lanes", None)
        self.routes = RouteTable(name)
        #: routed filter -> the (client id, filter) pairs of local subscribers behind it.
        self.subscribers: dict[str, set[tuple[str, str]]] = {}
        #: share group key -> the weight registered for it (its online members here).
        self.shared_weights: dict[str, int] = {}
        #: share group key -> holds on its registration beyond its members here (its
        #: members just left for another node: ``moved.py``).
        self.held_shares: dict[str, int] = {}
        #: Copies sent to peer nodes (one per destination node), and messages from peers.
        self.forwarded = 0
        self.received = 0
        #: Cluster totals for $SYS (``sysstats.ClusterStats.sys_values``, set by the node).
        self.totals: Callable[[], dict[str, str]] = dict
        #: routed filter -> holds on its registration beyond the local subscribers (a
        #: session that just left, still forwarded to: ``moved.py``).
        self.held: dict[str, int] = {}
        #: ``moved.Moved`` (set by the node) and its sessions that left lately.
        self.moved: Any = None
        self.leaving: dict[str, Any] = {}
        #: The last sequence number given to a local QoS 1/2 message that went to peers
        #: or to a session that left: with this node's name, the message's identity in
        #: every stream (``barrier.py``); and the one being delivered here (0: none).
        self.seq = 0
        self.ident = 0
        #: Whether the share copies made now come from a peer's stream (``receive``):
        #: one given to a clean member keeps its entry unacknowledged (``hold_copy``).
        self.holding = False
        #: A departing member's copy's hold, for the copy that replaces it (``hand_over``).
        self.handing: Any = None
        #: The copies held for the stream delivery under way (``shared.HeldCopies``),
        #: and the journal whose collections tell one delivery from the next.
        self.copies: HeldCopies | None = None
        #: The journal whose ``persist`` that is, if it is one (a node's): the journal
        #: whose collections tell one delivery from the next, and whose usual case of
        #: ``persist`` :meth:`dispatch` does itself.
        self.journal: Any = getattr(persist, "__self__", None)

    # --- the index: the local router's, and the registrations in Redis ---

    def add(self, clientId: str, topicFilter: str, options: Any) -> None:
        if topicFilter.startswith(SHARE_PREFIX):
            was = self._is_member(clientId, topicFilter)
            self.local.add(clientId, topicFilter, options)
            if not was:
                self._member_changed(topicFilter, clientId, 1)
            return
        self.local.add(clientId, topicFilter, options)
        key = topicFilter
        members = self.subscribers.get(key)
        if members is None:
            members = self.subscribers[key] = set()
            if key not in self.held:
                self.link.register(key)
        members.add((clientId, topicFilter))

    def add_many(self, clientId: str, items: Collection[tuple[str, Any]]) -> None:
        """:meth:`add` for one SUBSCRIBE's ``(filter, options)``: the filters that are
        new on this node are registered together, one Redis write (the link's
        ``register_many``; ``register`` each with a link that has none)."""
        plain = []
        for topicFilter, options in items:
            if topicFilter.startswith(SHARE_PREFIX):
                self.add(clientId, topicFilter, options)
            else:
                plain.append((topicFilter, options))
        self.local.add_many(clientId, plain)
        subscribers, held = self.subscribers, self.held
        new: list[str] = []
        for topicFilter, _ in plain:
            members = subscribers.get(topicFilter)
            if members is None:
                members = subscribers[topicFilter] = set()
                if topicFilter not in held:
                    new.append(topicFilter)
            members.add((clientId, topicFilter))
        if not new:
            return
        register_many = getattr(self.link, "register_many", None)
        if register_many is not None:
            register_many(new)
        else:
            for topicFilter in new:
                self.link.register(topicFilter)

    def remove(self, clientId: str, topicFilter: str) -> None:
        if topicFilter.startswith(SHARE_PREFIX):
            was = self._is_member(clientId, topicFilter)
            self.local.remove(clientId, topicFilter)
            if was:
                self._member_changed(topicFilter, clientId, -1)
            return
        self.local.remove(clientId, topicFilter)
        key = topicFilter
        members = self.subscribers.get(key)
        if members is None or (clientId, topicFilter) not in members:
            return
        members.discard((clientId, topicFilter))
        if not members:
            del self.subscribers[key]
            if key not in self.held:
                self.link.unregister(key)

    def hold(self, key: str, share: bool = False) -> None:
        """Keep ``key`` registered even once nothing here has it: a filter without a
        local subscriber, or with ``share`` a share group (weight 0) without a member
        here, its members moving to another node (``moved.py``)."""
        held = self.held_shares if share else self.held
        held[key] = held.get(key, 0) + 1
        if share:
            self._weigh(key)
        elif key not in self.subscribers and held[key] == 1:
            self.link.register(key)

    def unhold(self, key: str, share: bool = False) -> None:
        held = self.held_shares if share else self.held
        count = held.get(key, 0) - 1
        if count > 0:
            held[key] = count
            return
        held.pop(key, None)
        if share:
            self._weigh(key)
        elif key not in self.subscribers:
            self.link.unregister(key)

    def count(self) -> int:
        return self.local.count()

    def match(self, topic: str, sender: str | None = None) -> list[Any]:
        return self.local.match(topic, sender)

    def filters(self) -> list[str]:
        """The routed filters this node has local subscribers for."""
        return list(self.subscribers)

    def _is_member(self, client_id: str, key: str) -> bool:
        group = self.local.shared_groups.get(key)
        return group is not None and client_id in group.members

    def _member_changed(self, key: str, client_id: str, delta: int) -> None:
        """A member joined (+1) or left (-1): a new group is registered and an empty
        one removed at once; the weight moves by one if its client is online (O(1):
        thousands of members restored at once must not count each other; the tick
        counts them exactly, :meth:`refresh_weights`)."""
        weight = self.shared_weights.get(key)
        if weight is None or key not in self.local.shared_groups:
            self._weigh(key)
            return
        session = self.local.sessions.get(client_id)
        if session is not None and session.connection is not None:
            self.shared_weights[key] = weight = max(0, weight + delta)
            self.link.share(key, weight)

    def _weigh(self, key: str) -> None:
        """Register ``key``'s weight here if it changed; unregister a group left empty."""
        group = self.local.shared_groups.get(key)
        if group is None or not group.members:
            if key in self.held_shares:  # its members are on their way elsewhere
                if self.shared_weights.get(key) != 0:
                    self.shared_weights[key] = 0
                    self.link.share(key, 0)
            elif self.shared_weights.pop(key, None) is not None:
                self.link.unshare(key)
            return
        weight = online_members(group, self.local.sessions)
        if self.shared_weights.get(key) != weight:
            self.shared_weights[key] = weight
            self.link.share(key, weight)

    def refresh_weights(self) -> None:
        """Members' clients came and went: register the weights that changed (each
        tick; membership changes register at once)."""
        for key in list(self.shared_weights):
            self._weigh(key)

    # --- dispatch ---

    def dispatch(self, message: Message, origin: str = LOCAL) -> int:
        """Forward a local message to each peer node with a match, then deliver it here;
        how many sessions here and nodes elsewhere it went to."""
        if origin != LOCAL:
            return self.local.dispatch(message, origin)
        # A $SYS topic stays here: the route table routes it to no node (route), and
        # it is no share group's below.  (The broker publishes them at QoS 0.)
        routes = self.routes
        if self.shared_weights or routes.shared.groups:
            if message.topic.startswith("$SYS"):
                return self.local.dispatch(message, origin)
            return self._dispatch_groups(message)
        if not routes.by_node and not self.leaving:
            return self.local.dispatch(message, origin)
        nodes, destinations = routes.cache.get(message.topic) or routes.route(message.topic)
        if not message.qos:
            if nodes:
                self.forwarded += len(nodes)
                link = self.link
                for node in nodes:
                    link.publish(node, message)
            return len(nodes) + self.local.dispatch(message, origin)
        # QoS 1/2: a number here, with this node's name its identity (barrier.py).
        self.seq = seq = self.seq + 1
        if nodes:
            # _forward inline (no share groups, nothing resent): on every crossing message.
            self.forwarded += len(nodes)
            append = self.link.append
            journal = self.journal
            if journal is None:
                for node in nodes:
                    self.persist(append(node, message, destinations, None, False, seq))
            else:
                # Journal.persist's usual case inline (a publisher collecting its writes,
                # the batch's write pending, not the one write in LATENCY_SAMPLE timed):
                # no call on every crossing message (docs/cluster.md, "Benchmarks").
                collecting = journal._collecting
                stats = journal.stats
                for node in nodes:
                    write = append(node, message, destinations, None, False, seq)
                    if (type(write) is SharedWrite and collecting is not None
                            and not write.called
                            and (stats.store_writes + 1) & (LATENCY_SAMPLE - 1)):
                        stats.store_writes += 1
                        if not collecting or collecting[-1] is not write:
                            collecting.append(write)
                    else:
                        journal.persist(write)
        if self.leaving:
            self.moved.forward(message, nodes, self.name, seq)
        local = self.local
        if nodes and not local.shared_groups and local.tree._cache.get(message.topic) == []:
            # Nobody here (the topic tree's cached answer): no call to the local router,
            # on most crossing messages (docs/cluster.md, "Benchmarks").
            return len(nodes)
        self.ident = seq
        try:
            return len(nodes) + self.local.dispatch(message, origin)
        finally:
            self.ident = 0

    def _dispatch_groups(self, message: Message) -> int:
        """With share groups about: one node per matching group (``shared.py``)."""
        local = self.local
        routes = self.routes
        candidates = {key: dict(nodes) for key, nodes in routes.shared.match(message.topic)}
        for key, _ in local.shared_tree.match(message.topic):
            candidates.setdefault(key, {})[self.name] = self.shared_weights.get(key, 0)  # type: ignore[call-overload,index]
        for key in self.held_shares:  # (a handover under way: rare, and a few keys)
            if key not in local.shared_groups and topic_matches(key.split("/", 2)[2],
                                                                 message.topic):
                candidates.setdefault(key, {})[self.name] = 0
        mine: list[str] = []
        own: list[str] = []  # for a clean member here: through this node's stream
        picks: dict[str, list[str]] = {}
        for key, nodes in candidates.items():
            node = routes.shared.choose(key, nodes)
            if node == self.name:
                # A copy for a clean member here would be in this node's memory only:
                # it goes through this node's own stream (shared.has_clean_member).
                group = local.shared_groups.get(key)
                if message.qos and group is not None and has_clean_member(group, local.sessions):
                    own.append(key)
                else:
                    mine.append(key)
            elif node is not None:
                picks.setdefault(node, []).append(key)
        dests = routes.nodes_for(message.topic) if routes.by_node else set()
        dests.update(picks)
        seq = 0
        if message.qos:
            self.seq = seq = self.seq + 1
        if dests:
            self._forward(message, dests, picks, False, seq)
        if own:
            self.persist(self.link.append(self.name, message, b"", own, OWN, seq))
        if self.leaving and seq:
            self.moved.forward(message, dests, self.name, seq)
        self.ident = seq
        try:
            delivered = local.dispatch_plain(message)
        finally:
            self.ident = 0
        for key in mine:
            group = local.shared_groups.get(key)
            if group is not None:
                delivered += local.deliver_shared(key, group, message)
            elif message.qos and self.moved.forward_share(key, message):
                delivered += 1  # held: its members left for another node
        return delivered + len(dests) + len(own)

    def _forward(self, message: Message, nodes: set[str],
                 picks: dict[str, list[str]] | None = None, resent: bool = False,
                 seq: int = 0) -> None:
        """One copy per node; ``picks`` names the share groups each node serves; ``seq``
        the message's number here (its identity, QoS 1/2)."""
        link = self.link
        self.forwarded += len(nodes)
        if not message.qos:
            for node in nodes:
                link.publish(node, message, picks.get(node) if picks else None, resent)
            return
        # Every destination, in each entry: moved.py forwards only what its session's
        # new node did not get directly.
        destinations = ",".join(sorted(nodes)).encode("utf-8")
        for node in nodes:
            # Collected by the journal when a publisher waits for its acknowledgement.
            write = link.append(node, message, destinations,
                                picks.get(node) if picks else None, resent, seq)
            if self.handing is not None:  # a departing member's copy, sent on (hand_over)
                handing, self.handing = self.handing, None
                write.addBoth(_passing, handing)
            self.persist(write)

    def receive(self, message: Message, origin: str, groups: list[str] | None = None,
                resent: int = 0, destinations: bytes = b"", seq: int = 0) -> int:
        """A peer's message: delivered to the local plain subscriptions, and to one
        member of each share group it names (another node's if none is left here);
        forwarded to a session that left lately, unless its new node got it too
        (``moved.py``).  ``seq``: its number at ``origin`` (0: unknown).  ``resent``:
        sent on (1), or (:data:`~mqtt_twisted.cluster.shared.OWN`) this node's own
        copy for its groups, or a dead node's drained here, which the plain subscribers
        had already and the sessions that left were forwarded already."""
        own = resent == OWN
        if own:
            resent = False  # (it may be sent on, once)
        else:
            self.received += 1
            if self.leaving and message.qos:
                self.moved.forward(message, destinations.decode("utf-8").split(","),
                                   origin, seq)
        local = self.local
        if not groups:
            return local.dispatch_plain(message) if local.shared_groups else \
                local.dispatch(message, origin)
        # A copy sent on (``_send_on``), or one of this node's own, is for the groups it
        # names only: the plain subscribers had the message's own copy, if they match.
        delivered = 0 if resent or own else local.dispatch_plain(message)
        # A copy given to a clean member is in this node's memory only: its stream
        # entry waits for it (``hold_copy``), so that this node's adopter finds it pending.
        self.holding = message.qos > 0
        try:
            for key in groups:
                group = local.shared_groups.get(key)
                if group is not None and group.members and (
                        resent or self.shared_weights.get(key)
                        or not self._online_elsewhere(key)):
                    delivered += local.deliver_shared(key, group, message)
                elif (message.qos and key in self.held_shares
                      and self.moved.forward_share(key, message)):
                    delivered += 1  # to its members, which left for another node
                elif not resent:
                    # None here (any more), or none online here while another node has
                    # one (a dead node's stream delivered by its adopter, say).
                    delivered += self._send_on(key, message)
        finally:
            self.holding = False
        return delivered

    def hold_copy(self, session: Any, out: Outbound) -> None:
        """A share copy is made (``Delivery.hold``): one from a peer's stream, for a
        clean session, counts in a write that fires once it and the entry's other
        such copies are done with (acknowledged, handed to another member, given up:
        ``delivery.release_held``), collected by the journal like a store write, so
        that the stream entry is acknowledged (XACK) only then; one that replaces a
        departing member's copy takes over that copy's place.  A persistent
        session's copy is stored: it needs none."""
        handing = self.handing
        if handing is not None and out.qos:
            self.handing = None
            out.held = handing
        elif self.holding and out.qos and not session.persistent:
            journal = self.journal
            collecting = journal.collecting() if journal is not None else None
            copies = self.copies
            if (copies is None or copies.owner is not collecting or collecting is None
                    or copies.write.called):
                copies = self.copies = HeldCopies(collecting)
                self.persist(copies.write)
            copies.left += 1
            out.held = copies

    def plain_receiver(self) -> Callable[[Message, str], int] | None:
        """What :meth:`receive` comes down to for a peer's message that names no share
        group, while no share group has members here and no session is leaving: the
        local router's dispatch, which the inbox calls directly for each message of a
        stream entry (adding them to ``received``); None otherwise."""
        if self.leaving or self.local.shared_groups:
            return None
        return self.local.dispatch

    def _online_elsewhere(self, key: str) -> bool:
        """Whether a peer has an online member of ``key`` (by its last weight)."""
        return any(w > 0 for w in self.routes.shared.groups.get(key, {}).values())

    def _send_on(self, key: str, message: Message) -> int:
        """A group with no member here: its message goes to another node that has one
        (once; a copy sent on is not sent on again)."""
        node = self.routes.shared.choose(key, self.routes.shared.groups.get(key, {}))
        if node is None:
            return 0
        self._forward(message, {node}, {node: [key]}, resent=True)
        return 1

    def sys_values(self) -> dict[str, str]:
        """This node's cluster topics under ``$SYS/broker/`` (core/systopics.py asks)."""
        values = {
            "cluster/node": self.name,
            "cluster/peers/messages/forwarded": str(self.forwarded),
            "cluster/peers/messages/received": str(self.received),
            "cluster/routes": str(len(self.routes)),
        }
        values.update(self.totals())
        return values

    # --- what the broker uses beyond IRouter (plugins.md, "The router seam") ---

    def hand_over(self, out: Outbound, leaving: str) -> None:
        """A departing member's unacknowledged shared message goes to another member:
        one here if there is, else one on another node."""
        key = out.group
        group = self.local.shared_groups.get(key)  # type: ignore[arg-type]
        # What waited for the departing copy waits for its replacement (``hold_copy``, or
        # the entry that sends it on: ``_forward``), or goes on if there is none.
        held, out.held = out.held, None
        self.handing = held
        try:
            if (group is not None and any(c != leaving for c in group.members)) or key is None:
                self.local.hand_over(out, leaving)
            else:
                self._send_on(key, out.message)
        finally:
            if self.handing is not None:
                self.handing = None
                held.fire(None)  # type: ignore[union-attr]

    @property
    def shared_strategy(self) -> Strategy:
        return self.local.shared_strategy

    @shared_strategy.setter
    def shared_strategy(self, strategy: Strategy) -> None:
        self.local.shared_strategy = strategy


def _passing(result: Any, held: Any) -> Any:
    """``held`` gets a write's result, which goes on to the write's next waiter."""
    held.fire(result)
    return result
