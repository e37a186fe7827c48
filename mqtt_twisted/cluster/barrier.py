"""Order across a handover: the new node holds direct deliveries until the old node's
forwarded backlog has been drained (a barrier through the old node's stream).

A session moves from node O to node N (``moved.py``).  A publisher on node P sent
its messages for the session to O's stream until P heard that N has the session's
filters; from then on P sends them to N directly.  O forwards what was in its stream
for the session (directed entries, in O's stream order), but O's reader may be far
behind (held back by the very subscriber that left): without care, N delivers P's
later messages (direct) before P's earlier ones (forwarded by O).

Per publisher's node P, N puts a *barrier* behind P's messages in O's stream:

- the first time N is about to deliver a QoS 1/2 message from P to the session
  (directly, not forwarded), it holds it and appends a barrier request
  (``c`` client id, ``b`` P) to O's stream.  Redis runs P's commands in order, and
  P's entries of one turn for several nodes in one MULTI/EXEC (``batch.py``), so
  every message P had appended to O's stream is already there when N reads P's
  first direct one: they are all before the barrier.
- O answers the barrier when its reader reaches it (``a`` P, into N's stream), after
  forwarding everything before it: every message of P that O forwards for the
  session is in N's stream before the answer.
- N delivers what it held for P, in order, and P's later messages directly.

O tells N when it stops forwarding for the session (``e``: the window is over), and a
barrier that does not come back within :data:`BARRIER_TIMEOUT` (O died) releases what
it held.  What was held goes to the session under flow control: no faster than its
client takes it (the queue below its high-water mark; the stream reader that brings
more for it held back meanwhile), else a small ``--max-queued`` would drop the oldest.
Messages held are not acknowledged in N's stream until delivered and stored (a node
that dies meanwhile leaves them to its adopter); a local publisher's PUBACK waits the
same way.  QoS 0 is not forwarded, so it is not held; nor are share
group copies (each goes to one member, not forwarded either).  O's own publishers'
messages are not held: O forwards them as it routes them and sends them to N
directly afterwards, on the same connection, in order.

**Message identity.**  When N had a subscriber of the session's filter before the
session came, P sent every message to both O and N: N's stream may hold messages O
delivered to the session before letting it go (in the snapshot N loads), and N's
reader may have passed, before the session arrived, messages that O had not
delivered yet.  So every QoS 1/2 message has an identity shared by every stream it is
in: its origin node and that node's sequence number (``ClusterRouter.seq``; ``s`` in a
batch, ``i`` in a directed entry).  O answers the release with how far it had
delivered each origin's messages (``ClusterNode.delivered``, and its own counter);
O forwards a matching message even when N got it directly, until N's barrier request
for its origin says N delivers that origin's messages itself (``moved.py``); and N
gives the session each identity once, in order: a copy numbered at or below the last
one it delivered from that origin (``_Window.last``, starting from O's answer) is a
copy the session has had.  Per origin, every stream has the messages in the order of
their numbers, so "at or below the last" is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.errors import StorageError

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: Seconds N holds a publisher node's messages for a barrier that does not come back.
BARRIER_TIMEOUT = 30.0
#: Seconds a window stays open at most when the old node never says it is over.
WINDOW_LIMIT = 300.0
#: Seconds between looks at a session whose queue is at its high-water mark.
POLL = 0.05


class _Window:
    """One arriving session: its old node and, per publisher node, what is held (a
    list; in ``answered`` once its barrier is back and it is being delivered) or that
    its messages go straight through (None)."""

    __slots__ = ("old", "origins", "answered", "timers", "call", "ended", "throttled",
                 "last")

    def __init__(self, old: str, delivered: dict[str, int] | None = None) -> None:
        self.old = old
        #: origin node -> the number of its last message the session has had (from the
        #: old node's answer, then what is delivered here): identities at or below it
        #: are copies it has had.
        self.last: dict[str, int] = dict(delivered or {})
        self.origins: dict[str, list[tuple[Any, ...]] | None] = {}
        self.answered: set[str] = set()
        self.timers: dict[str, Any] = {}
        self.call: Any = None
        self.ended = False
        #: Stream readers held back while what was held is delivered.
        self.throttled: set[Any] = set()

    def fresh(self, origin: str, seq: int) -> bool:
        """Whether the session has not had ``origin``'s message ``seq`` (0: unknown,
        taken as new); it has from now on."""
        if not seq:
            return True
        if seq <= self.last.get(origin, 0):
            return False
        self.last[origin] = seq
        return True


class Barriers:
    """The new node's windows (sessions that arrived lately), and the old node's
    answers to barrier requests (``entry``)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        #: client id -> its window; empty: nothing is held (the usual case).
        self.windows: dict[str, _Window] = {}
        #: The node a message being delivered came from (set around a stream entry's
        #: delivery by ``inbox.deliver_items``); None: published here.
        self.origin: str | None = None
        #: That message's number at ``origin`` (set with it; 0: unknown).
        self.seq = 0
        self._real: Any = None
        self.held = 0  # messages held for a barrier, in all

    # --- N: windows ---

    def open(self, client_id: str, old: str,
             delivered: dict[str, int] | None = None) -> None:
        """``client_id``'s session came here from ``old``, which forwards its backlog;
        ``delivered``: how far ``old`` had delivered each origin's messages to it."""
        self.flush(client_id)
        window = self.windows[client_id] = _Window(old, delivered)
        window.call = self.node.reactor.callLater(WINDOW_LIMIT, self.end, client_id)
        local = self.node.router.local
        if self._real is None:
            self._real = local.deliver
            local.deliver = self._deliver

    def end(self, client_id: str) -> None:
        """The old node forwards nothing more: what is held goes (paced), then the
        window closes."""
        window = self.windows.get(client_id)
        if window is None:
            return
        window.ended = True
        for origin, held in list(window.origins.items()):
            if held and origin not in window.answered:
                self._answered(client_id, window, origin)
        self._maybe_closed(client_id, window)

    def flush(self, client_id: str) -> None:
        """The session leaves this node: everything held goes into it now, in order."""
        window = self.windows.get(client_id)
        if window is None:
            return
        for origin in list(window.origins):
            self._pump(client_id, window, origin, paced=False)
        window.ended = True
        self._maybe_closed(client_id, window)

    def _maybe_closed(self, client_id: str, window: _Window) -> None:
        if not window.ended or any(window.origins.values()):
            return
        if self.windows.get(client_id) is window:
            del self.windows[client_id]
        for timer in [window.call, *window.timers.values()]:
            if timer is not None and timer.active():
                timer.cancel()
        self._unthrottle(window)
        if not self.windows and self._real is not None:
            local = self.node.router.local
            if local.deliver == self._deliver:
                local.deliver = self._real
                self._real = None

    def clear(self) -> None:
        """Fenced: nothing held is delivered here, nor acknowledged (still pending in
        this node's stream, read again by its next reader)."""
        windows, self.windows = self.windows, {}
        for window in windows.values():
            for timer in [window.call, *window.timers.values()]:
                if timer is not None and timer.active():
                    timer.cancel()
            for held in window.origins.values():
                for *_, d in held or ():
                    d.errback(Failure(StorageError("fenced: a held message is left")))
        if self._real is not None:
            local = self.node.router.local
            if local.deliver == self._deliver:
                local.deliver = self._real
            self._real = None

    def _deliver(self, session: Any, message: Any, qos: int, retain: bool,
                 subscription_ids: Any, group: str | None = None) -> None:
        """The local router's ``deliver`` while a window is open."""
        window = self.windows.get(session.clientId)
        if window is None or not message.qos or group is not None:
            self._real(session, message, qos, retain, subscription_ids, group)
            return
        origin = self.origin
        if origin is None:  # published here
            origin, seq = self.node.name, self.node.router.ident
        else:
            seq = self.seq
        if seq and seq <= window.last.get(origin, 0):
            return  # the old node delivered it before it let the session go, or forwarded it
        if origin == window.old:
            if origin not in window.origins:
                # Not held (see above); but the old node forwards its own messages
                # until it hears that they come here directly.
                window.origins[origin] = None
                d = self.node.link.barrier(window.old, session.clientId, b"b", origin)
                d.addErrback(self.node._failed, f"telling {window.old} of a handover")
            window.fresh(origin, seq)
            self._real(session, message, qos, retain, subscription_ids, group)
            return
        held = window.origins.get(origin, ())
        if held is None:  # its barrier is back and what it held is delivered
            window.fresh(origin, seq)
            self._real(session, message, qos, retain, subscription_ids, group)
            return
        if not held:
            held = window.origins[origin] = []
            self._request(session.clientId, window, origin)
        elif origin in window.answered:
            # Being delivered at the client's pace: hold back the reader bringing more.
            publisher = self.node.broker.publisher
            if self.origin is not None and publisher is not None:  # a stream's reader
                publisher.throttle()
                window.throttled.add(publisher)
        d: Deferred[None] = Deferred()
        held.append((seq, message, qos, retain, subscription_ids, d))
        self.held += 1
        # Acknowledged (in this node's stream, or to a local publisher) once delivered.
        self.node.broker.journal.persist(d)

    def _request(self, client_id: str, window: _Window, origin: str) -> None:
        node = self.node
        d = node.link.barrier(window.old, client_id, b"b", origin)
        d.addErrback(node._failed, f"asking {window.old} for a barrier")
        window.timers[origin] = node.reactor.callLater(
            BARRIER_TIMEOUT, self._timed_out, client_id, window, origin)

    def _timed_out(self, client_id: str, window: _Window, origin: str) -> None:
        window.timers.pop(origin, None)
        if (self.windows.get(client_id) is window and window.origins.get(origin)
                and origin not in window.answered):
            log.warn("cluster {name}: node {old} did not answer a barrier for {client} "
                     "in {s} s; delivering what waited for it", name=self.node.name,
                     old=window.old, client=client_id, s=BARRIER_TIMEOUT)
            self._answered(client_id, window, origin)

    def _answered(self, client_id: str, window: _Window, origin: str) -> None:
        """The barrier of ``origin`` is back: what was held goes to the session."""
        window.answered.add(origin)
        timer = window.timers.pop(origin, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._pump(client_id, window, origin)

    def _pump(self, client_id: str, window: _Window, origin: str,
              paced: bool = True) -> None:
        """Deliver what ``origin`` held, in order, while the session has room (all of
        it if not ``paced``); look again in :data:`POLL` seconds if some is left."""
        held = window.origins.get(origin)
        if self.windows.get(client_id) is not window or held is None:
            return
        broker = self.node.broker
        session = broker.sessions.get(client_id)
        count = len(held)
        if paced and session is not None and session.connection is not None:
            room = broker.delivery.high_water - len(session.queue)
            count = min(count, max(0, room))
        if count:
            batch, held[:count] = held[:count], []
            _, writes = broker.journal.writes_of(self._deliver_held, session, batch,
                                                 self._real, window, origin)
            done = gatherResults(writes, consumeErrors=True) if writes else succeed(None)
            done.addBoth(_fire, batch)
        if held:
            self.node.reactor.callLater(POLL, self._pump, client_id, window, origin)
            return
        window.origins[origin] = None
        window.answered.discard(origin)
        if not any(window.origins.values()):
            self._unthrottle(window)
        self._maybe_closed(client_id, window)

    @staticmethod
    def _unthrottle(window: _Window) -> None:
        throttled, window.throttled = window.throttled, set()
        for publisher in throttled:
            publisher.unthrottle()

    @staticmethod
    def _deliver_held(session: Any, held: list[tuple[Any, ...]], real: Any,
                      window: _Window, origin: str) -> None:
        if session is None:
            return  # the session ended meanwhile: nothing to deliver to
        for seq, message, qos, retain, subscription_ids, _ in held:
            if window.fresh(origin, seq):  # (else forwarded by the old node meanwhile)
                real(session, message, qos, retain, subscription_ids, None)

    def first_time(self, client_id: str, ident: bytes) -> bool:
        """Whether a message forwarded to ``client_id``'s session (``ident``:
        ``b"SEQ ORIGIN"``) is new to it; it is not new from now on."""
        window = self.windows.get(client_id)
        if window is None:
            return True
        seq, _, origin = ident.partition(b" ")
        try:
            return window.fresh(origin.decode("utf-8"), int(seq))
        except ValueError:
            return True

    # --- both sides: barrier entries (no message) in a stream ---

    def entry(self, client_id: str, record: dict[bytes, bytes]) -> None:
        """A barrier entry read from this node's stream (or a dead node's)."""
        node = self.node
        sender = record[b"o"].decode("utf-8")
        if b"b" in record:  # O: a request; answered behind what is forwarded so far
            origin = record[b"b"].decode("utf-8")
            node.moved.direct_from(client_id, sender, origin)
            node.broker.journal.persist(node.link.barrier(sender, client_id, b"a", origin))
            return
        window = self.windows.get(client_id)
        if window is None or window.old != sender:
            return
        if b"a" in record:  # N: the answer
            origin = record[b"a"].decode("utf-8")
            if window.origins.get(origin) and origin not in window.answered:
                self._answered(client_id, window, origin)
        elif b"e" in record:  # N: the old node stopped forwarding
            self.end(client_id)


def _fire(result: Any, batch: list[tuple[Any, ...]]) -> None:
    """Held messages delivered and stored (or not): their acknowledgements go on."""
    for *_, d in batch:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)
