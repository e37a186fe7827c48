"""The Redis store's key layout (the table is in :mod:`mqtt_twisted.store.redis`).

Every key of one client carries its client id in literal braces, a Redis hash tag,
so that they all land in one Redis Cluster slot.
"""

from __future__ import annotations


class KeyLayout:
    """The names of the store's keys under one prefix (``mqtt`` by default)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        #: The set of the stored sessions' client ids.
        self.sessions = self.prefix + b":sessions"
        #: The hash of retained messages by topic.
        self.retained = self.prefix + b":retained"
        #: What the retained-topic index's node names start with (the scripts add the path).
        self.trie = self.prefix + b":rtrie:"

    @staticmethod
    def cid(client_id: str) -> bytes:
        """A client id as it goes into key names and script arguments."""
        return client_id.encode("utf-8")

    def key(self, kind: bytes, cid: bytes) -> bytes:
        """``P:kind:{cid}``: one of a client's keys (session, subs, out, qos2, lock)."""
        return b"%s:%s:{%s}" % (self.prefix, kind, cid)

    def session(self, cid: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """The four keys of a client's session: its fields, subscriptions, outbound
        records and inbound QoS 2 packet ids, in the order the scripts take them."""
        return (self.key(b"session", cid), self.key(b"subs", cid), self.key(b"out", cid),
                self.key(b"qos2", cid))
