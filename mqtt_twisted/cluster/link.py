"""What a cluster node tells Redis for its router: its filters and share groups (the
route table every node keeps), and the copies of messages for its peers (QoS 0 over pub/sub,
QoS 1/2 into the destination node's stream), gathered per destination over a reactor
turn (``batch.py``).  ``ClusterRouter.link``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtt_twisted.cluster.batch import Outbox
from mqtt_twisted.cluster.routes import ADD, REMOVE, SHARE, encode_change
from mqtt_twisted.cluster.shared import encode_groups
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import encode_message

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

#: Entries kept in a node's stream (XADD MAXLEN ~): what a node that is down for a
#: while can catch up on when it comes back under the same name.  An entry is a
#: batch (``batch.py``): one message at light load, up to ``MAX_BATCH`` under load.
INBOX_MAXLEN = 100_000

_REGISTER = b"""
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""
#: KEYS[1]: the node's filters; ARGV: the routes channel, then (filter, change) pairs.
_REGISTER_MANY = b"""
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then redis.call('PUBLISH', ARGV[1], ARGV[i + 1]) end
end
return 1
"""
#: Filters one ``_REGISTER_MANY`` call registers at most (its ARGV stays small).
_REGISTER_BATCH = 1000
_UNREGISTER = b"""
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""
_SHARE = b"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
_UNSHARE = b"""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""


class NodeLink:
    """The router's link to Redis (``router.py``'s ``link``), for one node."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.outbox = Outbox(node.reactor, node.name, self._add, self._push,
                             self._transaction)
        #: ``append(to, message, destinations=b"", groups=None, resent=0, seq=0)``:
        #: QoS 1/2, in this turn's stream entry for ``to`` (``Outbox.append``), a write
        #: that fires once the entry is in node ``to``'s stream.  ``destinations``:
        #: every node the message was sent to (``moved.py`` reads it); the share groups
        #: ``to`` gives it to and the copy's kind (sent on, or ``to`` is this node:
        #: ``shared.OWN``), only when there are some (``router.py``); ``seq`` its
        #: number at this node (its identity, with this node's name: ``barrier.py``).
        #: The outbox's own method, an attribute: no call in between, and no method of
        #: the class under the same name, which kept CPython 3.11 from specializing the
        #: router's ``link.append`` lookup (0.38k instructions a crossing message,
        #: ``bench/crossing_callgrind.py``).
        self.append = self.outbox.append

    def _script(self, script: bytes, key: bytes, *args: Any, change: bytes,
                what: str) -> None:
        """``script`` on ``key`` with ``args``, then the routes channel and ``change``
        (published there when the script changed something)."""
        node = self.node
        node.commands.command(b"EVAL", script, 1, key, *args, node.keys.routes,
                              change).addErrback(node._failed, what)

    def register(self, topic_filter: str) -> None:
        node = self.node
        self._script(_REGISTER, node.keys.filters(node.name), topic_filter.encode("utf-8"),
                     change=encode_change(ADD, node.name, topic_filter),
                     what="registering a filter")

    def register_many(self, topic_filters: list[str]) -> None:
        """:meth:`register` for each of ``topic_filters`` (one SUBSCRIBE's new ones), in
        one script call: one Redis write a packet, one change published per filter
        that was not registered yet (the same notifications as one by one)."""
        node = self.node
        for i in range(0, len(topic_filters), _REGISTER_BATCH):
            args = []
            for topic_filter in topic_filters[i:i + _REGISTER_BATCH]:
                args += (topic_filter.encode("utf-8"),
                         encode_change(ADD, node.name, topic_filter))
            node.commands.command(b"EVAL", _REGISTER_MANY, 1, node.keys.filters(node.name),
                                  node.keys.routes, *args).addErrback(
                node._failed, "registering filters")

    def unregister(self, topic_filter: str) -> None:
        node = self.node
        self._script(_UNREGISTER, node.keys.filters(node.name), topic_filter.encode("utf-8"),
                     change=encode_change(REMOVE, node.name, topic_filter),
                     what="removing a filter")

    def share(self, key: str, weight: int) -> None:
        node = self.node
        self._script(_SHARE, node.keys.shared(node.name), key.encode("utf-8"), weight,
                     change=encode_change(SHARE, node.name, key, weight),
                     what="registering a share group")

    def unshare(self, key: str) -> None:
        node = self.node
        self._script(_UNSHARE, node.keys.shared(node.name), key.encode("utf-8"),
                     change=encode_change(REMOVE, node.name, key),
                     what="removing a share group")

    def publish(self, to: str, message: Message, groups: list[str] | None = None,
                resent: bool = False) -> None:
        """QoS 0: at most once, like QoS 0 itself (SPUBLISH where Redis has it), in this
        turn's pub/sub message for ``to``.  ``groups``: the share groups node ``to``
        gives it to (``router.py``); ``resent``: it is not sent on again."""
        self.outbox.publish(to, message, groups, resent)

    def direct(self, to: str, client_id: str, message: Any,
               ident: bytes = b"", group: str | None = None) -> Deferred[Any]:
        """A QoS 1/2 message for one session that left here for ``to`` (``moved.py``),
        after what this turn has for ``to`` already; ``ident``: ``b"SEQ ORIGIN"``, the
        message's identity (``barrier.py``); ``group``: a share group's copy, for the
        session's ``$share`` subscription (field ``g``, as in a batch)."""
        self.outbox.flush_entries(to)
        fields = (b"m", encode_message(message), b"c", client_id.encode("utf-8"))
        if ident:
            fields += (b"i", ident)
        if group is not None:
            fields += (b"g", encode_groups([group], False))
        return self._add(to, *fields)

    def barrier(self, to: str, client_id: str, field: bytes, value: str) -> Deferred[Any]:
        """A barrier entry for ``client_id``'s handover (``barrier.py``): ``b`` asks the
        old node ``to`` for one, ``a`` answers it, ``e`` says forwarding is over; after
        what this turn has for ``to`` already, as ``direct()``."""
        self.outbox.flush_entries(to)
        return self._add(to, b"c", client_id.encode("utf-8"), field, value.encode("utf-8"))

    def _push(self, to: str, data: bytes) -> None:
        node = self.node
        node.commands.command(node.publish_command, node.keys.inbox0(to),
                              data).addErrback(_ignored)

    def _add(self, to: str, *fields: Any) -> Deferred[Any]:
        """XADD to ``to``'s stream; with ``?wait=N``, fires once N replicas have it."""
        node = self.node
        d = node.commands.command(b"XADD", node.keys.inbox(to), b"MAXLEN", b"~",
                                  INBOX_MAXLEN, b"*", b"o", node._origin, *fields)
        return d if node._replicas is None else node._replicas.gate(d)

    def _transaction(self, adds: list[tuple[str, tuple[Any, ...]]]) -> Deferred[Any]:
        """XADD each of ``adds`` (destination, fields) in one MULTI/EXEC (``batch.py``,
        "Order"): a Deferred of EXEC's reply, each entry's id (or error) in order.
        One Deferred for the lot: the replies to MULTI and the XADDs (``OK``,
        ``QUEUED``) say nothing EXEC's does not (an XADD Redis refused to queue makes
        EXEC fail: ``EXECABORT``)."""
        node = self.node
        inbox = node.keys.inbox
        origin = node._origin
        commands: list[tuple[Any, ...]] = [(b"MULTI",)]
        commands += [(b"XADD", inbox(to), b"MAXLEN", b"~", INBOX_MAXLEN, b"*", b"o", origin,
                      *fields) for to, fields in adds]
        commands.append((b"EXEC",))
        d = node.commands.pipeline(commands)
        return d if node._replicas is None else node._replicas.gate(d)


def _ignored(failure: Failure) -> None:
    """A QoS 0 forward that failed is a QoS 0 message lost, as QoS 0 allows."""
    failure.trap(StorageError)
