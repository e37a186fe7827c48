"""The wills of a node's clients whose sessions are not stored, kept in Redis.

A persistent session is stored with its will, so a survivor that adopts a dead
node restores it and publishes the will (after its delay).  A clean session (MQTT 5:
session expiry 0) is stored nowhere, and its will died with its node.  So each node
keeps the will of every such client while it is connected, in its own hash
``P:cluster:wills:NODE`` (client id -> ``[will, owner]``): one ``HSET`` once the
client is connected, one ``HDEL`` when its connection ends (whatever the end: the
will is then published, or suppressed, by the node itself).  Its delay needs no
keeping: a session that ends with its connection sends its will at once
[MQTT-3.1.3-9].

The survivor that adopts a dead node takes the hash and deletes it in one script,
then publishes each will once (:func:`publish_wills`); a node that starts again under
its name does the same with what its earlier run left, if nobody adopted it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mqtt_twisted.core.session import Session
from mqtt_twisted.store.redis import decode_message, encode_message

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

log = Logger()

#: The whole hash, deleted in the same step: each will is published by one node.
_TAKE = b"""
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""


class WillKeeper:
    """``broker.wills`` on a cluster node (see the module docstring)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.prefix = node.keys.prefix + b"wills:"

    def key(self, node: str) -> bytes:
        return self.prefix + node.encode("utf-8")

    def kept(self, session: Session) -> None:
        node = self.node
        record = msgpack.packb([encode_message(session.will), session.owner],
                               use_bin_type=True)
        node.broker.journal.persist(node.commands.command(
            b"HSET", self.key(node.name), session.clientId.encode("utf-8"), record))

    def ended(self, session: Session) -> None:
        node = self.node
        node.commands.command(b"HDEL", self.key(node.name),
                              session.clientId.encode("utf-8")).addErrback(
            node._failed, "forgetting a will")

    def take(self, owner: str) -> Deferred[int]:
        """Publish, once, the wills ``owner`` (a dead node, or this one's earlier run)
        kept; fires with how many."""
        node = self.node
        d = node.commands.command(b"EVAL", _TAKE, 1, self.key(owner))
        d.addCallback(lambda flat: publish_wills(node.broker, flat))
        return d


def publish_wills(broker: Any, flat: list[bytes]) -> int:
    """The wills of a ``HGETALL`` reply, published here: each as if its client's
    connection had just ended (authorized against its owner, as a restored session's)."""
    published = 0
    for i in range(0, len(flat), 2):
        client_id = flat[i].decode("utf-8")
        try:
            blob, owner = msgpack.unpackb(flat[i + 1], raw=False)
            will = decode_message(blob)
        except Exception as e:
            log.warn("cluster: the kept will of {client} could not be read: {error}",
                     client=client_id, error=e)
            continue
        session = Session(client_id, 1)
        session.owner = session.identity = owner
        broker.refresh_read_check(session)
        broker.lifecycle.publish_will(session, will)
        published += 1
    return published
