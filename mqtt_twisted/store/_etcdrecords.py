"""The etcd store's keys and session records (the layout is in ``etcd.py``'s docstring).

Records are the Redis store's (``_redisformat``: msgpack arrays, the format version
first); a session's own fields are one more such array.  A client id is
percent-encoded (``%`` and ``/``) in keys, so that the prefix of one client's
records never holds another client's.
"""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet.defer import Deferred

from mqtt_twisted.errors import StorageError
from mqtt_twisted.store import _etcdhttp as op
from mqtt_twisted.store._redisformat import (
    FORMAT,
    decode_message,
    decode_options,
    decode_outbound,
    encode_message,
)
from mqtt_twisted.store.memory import StoredSession


def escape(client_id: str) -> bytes:
    return client_id.replace("%", "%25").replace("/", "%2F").encode("utf-8")


def unescape(data: bytes) -> str:
    return data.decode("utf-8").replace("%2F", "/").replace("%25", "%")


class Keys:
    """The key prefixes under the store's prefix ``P``."""

    def __init__(self, prefix: str) -> None:
        p = prefix.encode("utf-8") + b"/"
        self.sessions = p + b"session/"
        self.sub, self.out, self.qos2 = p + b"sub/", p + b"out/", p + b"qos2/"
        self.lock_prefix = p + b"lock/"
        self.retained = p + b"retained/"
        self.depth = p + b"rdepth/"

    def lock(self, client_id: str) -> bytes:
        return self.lock_prefix + escape(client_id)

    def depth_key(self, topic: bytes) -> bytes:
        """The key of ``topic`` in the index of retained topics by number of levels."""
        return self.depth + b"%05d/" % (topic.count(b"/") + 1) + topic


def session_record(state: Any) -> bytes:
    will = encode_message(state.will) if state.will is not None else None
    return msgpack.packb([FORMAT, state.expiryInterval, state.willDelay, state.disconnectedAt,
                          will, getattr(state, "owner", None)], use_bin_type=True)


def decode_session(reply: dict[str, Any], keys: Keys, client_id: str,
                   cid: bytes) -> StoredSession | None:
    """The reply of loadSession's transaction: [session, subs, outbound, qos2] ranges."""
    session, subs, outs, qos2 = (op.kvs(r) for r in op.txn_ranges(reply))
    if not session:
        return None
    fields = msgpack.unpackb(session[0][1], raw=False)
    if fields[0] != FORMAT:
        raise StorageError(f"session {client_id!r} has format {fields[0]!r}, expected {FORMAT}")
    _, expiry, will_delay, disconnected_at, will, owner = fields
    state = StoredSession(client_id)
    state.expiryInterval = expiry
    state.willDelay = will_delay
    state.disconnectedAt = disconnected_at
    state.will = decode_message(will) if will else None
    state.owner = owner
    cut = len(keys.sub) + len(cid) + 1
    state.subscriptions = {key[cut:].decode("utf-8"): decode_options(value)
                           for key, value in subs}
    state.outbound = sorted((decode_outbound(value) for _, value in outs), key=lambda o: o.seq)
    cut = len(keys.qos2) + len(cid) + 1
    state.inboundQoS2 = {int(key[cut:]) for key, _ in qos2}
    return state


def replacement(reply: dict[str, Any], new: dict[bytes, bytes], session_key: bytes,
                record: bytes, max_ops: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """The transactions replacing a session whose record keys ``reply`` lists: stale keys
    deleted, ``new`` put, the session record last; split to fit ``max_ops`` keys and about
    ``max_bytes`` each (etcd refuses a put and a delete of one key in one transaction,
    hence no prefix delete here)."""
    stale = [key for r in op.txn_ranges(reply) for key, _ in op.kvs(r) if key not in new]
    ops = [(op.delete(key), len(key)) for key in stale]
    ops += [(op.put(key, value), len(key) + len(value)) for key, value in new.items()]
    ops.append((op.put(session_key, record), len(session_key) + len(record)))
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for one, n in ops:
        if batches[-1] and (len(batches[-1]) >= max_ops or size + n > max_bytes):
            batches.append([])
            size = 0
        batches[-1].append(one)
        size += n
    return batches


def in_turn(http: op.EtcdHTTP, batches: list[list[dict[str, Any]]]) -> Deferred[None]:
    """Send the transactions one after the other."""
    d = http.call("kv/txn", {"success": batches[0]})
    if len(batches) > 1:
        d.addCallback(lambda _: in_turn(http, batches[1:]))
    else:
        d.addCallback(lambda _: None)
    return d
