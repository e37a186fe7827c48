"""The handover window: what reaches the old node for a session that has just left.

When a session moves from node O to node N (``handover.py``), the peers learn that N
has its filters only once N has restored it and registered them, and O's stream may
still hold entries for it that O has not read.  Without care, a message in that window
is delivered to nothing on O.  So:

- **O keeps forwarding** (:meth:`Moved.left`): O keeps the session's filters
  registered for a while (the router's ``hold``) and, for :data:`GRACE` seconds after
  the last message it forwarded, sends every QoS 1/2 message it routes (its own
  publishers' and its stream's) that the session's subscriptions match on to N, as a
  *directed* entry of N's stream (field ``c``: the client id), unless N was among the
  message's destinations already (the ``d`` field of a stream entry; the route table
  for a local message): then N has it directly, and nothing is delivered twice.
- **N takes the directed entries** (:meth:`Moved.directed`): delivered to that client's
  session only, by its own subscriptions.  While a session is being asked for
  (:meth:`Moved.expect`) and is not here yet, N's stream reader stops at the first
  entry directed to it (:meth:`Moved.waiting_for`) and goes on once the session is
  restored and its connection attached (:meth:`Moved.arrived`): the entries wait in
  Redis, then go through flow control like any other, after what the snapshot held.

QoS 0 is not forwarded (at most once).  Order: a publisher's node switches from O to N
while O may still have earlier entries unread; N holds the later, direct ones until O
has forwarded the earlier ones (``barrier.py``; O answers N's barrier requests and
says when it stops forwarding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mqtt_twisted.codec.topics import SHARE_PREFIX, topic_matches
from mqtt_twisted.core.topic_tree import TopicTree
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds O keeps forwarding after the last message it forwarded for a session.
GRACE = 10.0


def deliveries_for(client_id: str, subscriptions: dict[str, Any],
                   message: Message) -> tuple[int, bool, tuple[int, ...] | None] | None:
    """What one session's (non-shared) subscriptions make of ``message``: the QoS, retain
    as published and subscription ids of its one delivery, or None [MQTT-3.3.4-2]."""
    qos = -1
    rap = False
    ids: list[int] = []
    topic = message.topic
    for topic_filter, options in subscriptions.items():
        if topic_filter.startswith(SHARE_PREFIX) or not topic_matches(topic_filter, topic):
            continue
        if options.no_local and message.sender == client_id:
            continue
        if options.qos > qos:
            qos = options.qos
        rap = rap or options.retain_as_published
        if options.subscription_id:
            ids.append(options.subscription_id)
    if qos < 0:
        return None
    return min(qos, message.qos), message.retain and rap, tuple(ids) or None


class _Departure:
    __slots__ = ("to", "subscriptions", "filters", "shares", "call", "forwarded", "direct")

    def __init__(self, to: str, subscriptions: dict[str, Any], filters: set[str],
                 shares: set[str]) -> None:
        self.to = to
        self.subscriptions = subscriptions
        self.filters = filters
        #: Its share groups, whose registrations are held here meanwhile.
        self.shares = shares
        self.call: Any = None
        self.forwarded = 0
        #: The origin nodes whose messages the new node delivers to the session
        #: directly (it asked for their barrier): not forwarded when it got them too.
        self.direct: set[str] = set()


class Moved:
    """Sessions that left this node lately (forwarded to), and those arriving."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        #: client id -> where its session went, with its subscriptions (O's side).
        self.leaving: dict[str, _Departure] = {}
        #: Their filters, by client id: a message looks up the departures it matches
        #: (a reconnect storm lets thousands go at once, and a scan of them all per
        #: message made the adopter's drain turns last a second).
        self._filters: TopicTree[bool] = TopicTree()
        #: client id -> what waits for its session to be here (N's side).
        self.pending: dict[str, list[Callable[[], Any]]] = {}
        self.forwarded = 0
        #: Client ids not forwarded the message being delivered: a drain's, for the
        #: sessions the dead node had delivered it into (their marks: ``drain.py``).
        self.skip: set[str] = set()

    # --- the old node ---

    def left(self, client_id: str, to: str, subscriptions: dict[str, Any]) -> None:
        """``client_id``'s session goes to node ``to``: hold its filters' registrations
        and forward what matches them there (before the session is let go)."""
        self.stop_forwarding(client_id)
        router = self.node.router
        filters = {f for f in subscriptions if not f.startswith(SHARE_PREFIX)}
        for key in filters:
            router.hold(key)
            self._filters.add(key, client_id, True)
        # Its groups stay registered here (weight 0) while the peers learn that `to`
        # has them: a copy for a group whose only members are on their way is
        # forwarded to them (``forward_share``) instead of going to nobody.
        shares = {f for f in subscriptions if f.startswith(SHARE_PREFIX)}
        for key in shares:
            router.hold(key, share=True)
        departure = self.leaving[client_id] = _Departure(to, dict(subscriptions), filters,
                                                         shares)
        departure.call = self.node.reactor.callLater(GRACE, self._quiet, client_id)

    def _quiet(self, client_id: str) -> None:
        """Nothing forwarded for GRACE seconds: stop, unless this node's stream reader
        is still behind (a backlog, held back, or its last batch was full), or a dead
        node's stream is (``failover.delivering``)."""
        departure = self.leaving.get(client_id)
        if departure is None:
            return
        # (Nor while a dead node's stream is still to be delivered here: a session
        # released during its adoption has its messages there; the window closed
        # before the drain began, and 345 of a storm's 5,000 were lost.)
        if self.node.inbox.behind() or self.node.failover.delivering():
            departure.call = self.node.reactor.callLater(GRACE, self._quiet, client_id)
            return
        self.stop_forwarding(client_id)

    def stop_forwarding(self, client_id: str) -> None:
        departure = self.leaving.pop(client_id, None)
        if departure is None:
            return
        if departure.call is not None and departure.call.active():
            departure.call.cancel()
        for key in departure.filters:
            self.node.router.unhold(key)
            self._filters.remove(key, client_id)
        for key in departure.shares:
            self.node.router.unhold(key, share=True)
        # Behind every forward: the new node holds nothing more for it (barrier.py).
        d = self.node.link.barrier(departure.to, client_id, b"e", "")
        d.addErrback(self.node._failed, "ending a handover window")
        log.info("cluster {name}: {n} messages forwarded to {to} for {client}, whose "
                 "session went there", name=self.node.name, n=departure.forwarded,
                 to=departure.to, client=client_id)

    def forward(self, message: Message, destinations: Any, origin: str = "",
                seq: int = 0) -> None:
        """A QoS 1/2 message routed here (``seq`` its number at node ``origin``): on to
        each departed session it matches, unless its new node got it directly
        (``destinations``: the nodes it was sent to) *and* delivers ``origin``'s
        messages to the session itself (it asked for their barrier): before that, it
        may have passed this message before the session arrived, so it is forwarded
        and the new node drops the copy it has twice (by identity, ``barrier.py``)."""
        node = self.node
        leaving = self.leaving
        for client_id in {c for c, _ in self._filters.match(message.topic)}:
            if client_id in self.skip:
                continue
            departure = leaving[client_id]  # type: ignore[index]
            if departure.to in destinations and (not seq or origin in departure.direct):
                continue
            if deliveries_for(client_id, departure.subscriptions, message) is None:
                continue
            self.forwarded += 1
            departure.forwarded += 1
            node.broker.journal.persist(node.link.direct(
                departure.to, client_id, message,
                b"%d %s" % (seq, origin.encode("utf-8")) if seq else b""))
            departure.call.reset(GRACE)

    def forward_share(self, key: str, message: Message) -> bool:
        """A copy for group ``key``, which has no member here any more: to a member
        that left here lately, as a directed entry naming the group; False if none."""
        for client_id, departure in self.leaving.items():
            if key in departure.shares:
                self.forwarded += 1
                departure.forwarded += 1
                node = self.node
                node.broker.journal.persist(node.link.direct(
                    departure.to, client_id, message, b"", key))
                departure.call.reset(GRACE)
                return True
        return False

    def direct_from(self, client_id: str, to: str, origin: str) -> None:
        """Node ``to`` (where ``client_id``'s session went) delivers ``origin``'s
        messages to it directly from now on (its barrier request, ``barrier.py``)."""
        departure = self.leaving.get(client_id)
        if departure is not None and departure.to == to:
            departure.direct.add(origin)

    def clear(self) -> None:
        for client_id in list(self.leaving):
            self.stop_forwarding(client_id)
        self.pending.clear()

    # --- the new node ---

    def expect(self, client_id: str) -> None:
        """``client_id``'s session is being asked for: what is directed to it waits."""
        self.pending.setdefault(client_id, [])

    def waiting_for(self, fields: list[Any], resume: Callable[[], Any]) -> bool:
        """Whether a stream entry is directed to a session that is expected and not
        here yet; then ``resume`` is called once it is (or is not coming)."""
        if len(fields) < 6 or fields[4] != b"c" or not self.pending:
            return False
        client_id = fields[5].decode("utf-8", "replace")
        waiting = self.pending.get(client_id)
        if waiting is None or client_id in self.node.broker.sessions:
            return False
        waiting.append(resume)
        return True

    def arrived(self, client_id: str) -> None:
        """Its session is restored here (or is not coming): next turn, once the CONNECT
        has attached its connection, what waited for it goes on."""
        waiting = self.pending.pop(client_id, None)
        for resume in waiting or ():
            self.node.reactor.callLater(0, resume)

    def directed(self, client_id: str, message: Message, ident: bytes | None = None,
                 groups: list[str] | None = None) -> None:
        """A directed entry from the node the session left: into that session only,
        unless it is a copy the session has had already (``ident``: ``b"SEQ ORIGIN"``);
        a share group's copy (``groups``) into its ``$share`` subscription (or, gone
        from it, to the group as a copy sent on)."""
        broker = self.node.broker
        session = broker.sessions.get(client_id)
        if groups:
            for key in groups:
                options = session.subscriptions.get(key) if session is not None else None
                if options is None:
                    self.node.router.receive(message, self.node.name, [key], True)
                    continue
                broker.deliver(session, message, min(options.qos, message.qos),
                               message.retain and options.retain_as_published,
                               (options.subscription_id,) if options.subscription_id
                               else None, key)
            return
        if session is None:
            log.info("cluster: a message forwarded for {client}, whose session is not "
                     "here, is dropped", client=client_id)
            return
        found = deliveries_for(client_id, session.subscriptions, message)
        if found is not None and (not ident or self.node.barriers.first_time(client_id,
                                                                            ident)):
            qos, retain, ids = found
            broker.deliver(session, message, qos, retain, ids)
