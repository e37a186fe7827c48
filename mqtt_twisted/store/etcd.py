"""The etcd store: sessions, retained messages and client locks in etcd v3.

Selected with ``--store etcd://HOST:2379[/prefix][?options]`` (see :func:`parse_url`
and docs/stores.md).  It talks to etcd's JSON gateway (``/v3/kv/...``,
``/v3/lease/...``) through Twisted's ``Agent`` (``_etcdhttp``).

Key layout (``P`` is the prefix, ``mqtt`` by default; ``<cid>`` is the client id
with ``%`` and ``/`` percent-encoded, so that one client's keys never fall under
another client's prefix)::

    P/session/<cid>              the session's own fields (msgpack)
    P/sub/<cid>/<filter>         subscription options
    P/out/<cid>/<seq, 20 digits> an outbound record (queued or in flight) with its message
    P/qos2/<cid>/<packet id>     an inbound QoS 2 packet id awaiting PUBREL (empty value)
    P/lock/<cid>                 the client lock: a key on the broker's lease
    P/retained/<topic>           a retained message
    P/rdepth/<levels, 5 digits>/<topic>  index of retained topics by number of levels

Records are those of the Redis store (``_redisformat``: msgpack arrays, the format
version first).  Keys are ordered in etcd, so a client's records are one prefix
range, ``loadSession`` is one transaction of four ranges (one revision: a
consistent snapshot), and a retained filter reads the prefix range of its literal
levels (``a/b/#``: the topic ``a/b`` and the range ``a/b/``); a filter whose first
level is ``+`` (and has no ``#``) reads the depth index of its number of levels
instead of every retained topic.  Calls of one client stay in order and the
writes queued behind a request in flight leave as one transaction (``_etcdlanes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgpack
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.codec.topics import topic_matches
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store import _etcdhttp as op
from mqtt_twisted.store._etcdhttp import Away, EtcdHTTP
from mqtt_twisted.store._etcdlanes import Lanes
from mqtt_twisted.store._etcdlock import EtcdLocks, NodeLease
from mqtt_twisted.store._redisformat import (
    FORMAT,
    decode_message,
    decode_options,
    decode_outbound,
    encode_message,
    encode_options,
    encode_outbound,
)
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.store.outage import OutageLog

__all__ = ["EtcdOptions", "EtcdStore", "parse_url"]

log = Logger()

# --- options ---------------------------------------------------------------------------


@dataclass
class EtcdOptions:
    """Where and how to reach etcd; built from a URL by :func:`parse_url`."""

    host: str = "127.0.0.1"
    port: int = 2379
    #: First part of every key, so that several brokers or tenants can share one etcd.
    prefix: str = "mqtt"
    #: HTTP connections to etcd, and requests in flight at most.
    pool: int = 8
    #: Seconds a store call may take (waiting for its turn included) before it fails.
    timeout: float = 5.0
    #: Seconds start() waits for etcd before the broker gives up starting.
    connect_timeout: float = 5.0
    #: TTL of the broker's lease: how long its client locks outlive it if it dies.
    lock_lease: float = 10.0
    #: Operations per transaction: etcd's --max-txn-ops (128 unless raised there).
    max_txn_ops: int = 128


_QUERY = {"pool": int, "timeout": float, "connect_timeout": float, "lock_lease": float,
          "max_txn_ops": int}


def parse_url(url: str) -> EtcdOptions:
    """``etcd://host[:port][/prefix][?pool=8&timeout=5&connect_timeout=5&lock_lease=10
    &max_txn_ops=128]``.  Raises ValueError naming the bad part."""
    parts = urlsplit(url)
    if parts.scheme != "etcd":
        raise ValueError(f"an etcd URL starts with etcd://, not {url!r}")
    options = EtcdOptions()
    try:
        if parts.hostname:
            options.host = parts.hostname
        if parts.port is not None:
            options.port = parts.port
    except ValueError as e:
        raise ValueError(f"bad host or port in etcd URL {url!r}: {e}") from None
    if parts.username or parts.password:
        raise ValueError("etcd user names and passwords are not supported (etcd auth off, "
                         "or a proxy in front of it)")
    path = parts.path.strip("/")
    if path:
        options.prefix = path
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _QUERY.get(name)
        if kind is None:
            known = ", ".join(sorted(_QUERY))
            raise ValueError(f"unknown etcd URL option {name!r} (known: {known})")
        try:
            setattr(options, name, kind(value))
        except ValueError:
            raise ValueError(f"bad value for etcd URL option {name}: {value!r}") from None
    if options.pool < 1:
        raise ValueError("etcd pool must be at least 1")
    if options.timeout <= 0 or options.connect_timeout <= 0 or options.lock_lease < 2:
        raise ValueError("etcd timeouts must be positive, lock_lease at least 2 seconds")
    if options.max_txn_ops < 4:
        raise ValueError("etcd max_txn_ops must be at least 4")
    return options


# --- keys and records -----------------------------------------------------------------


def _escape(client_id: str) -> bytes:
    return client_id.replace("%", "%25").replace("/", "%2F").encode("utf-8")


def _unescape(data: bytes) -> str:
    return data.decode("utf-8").replace("%2F", "/").replace("%25", "%")


class _Keys:
    def __init__(self, prefix: str) -> None:
        p = prefix.encode("utf-8") + b"/"
        self.sessions = p + b"session/"
        self.sub, self.out, self.qos2 = p + b"sub/", p + b"out/", p + b"qos2/"
        self.lock_prefix = p + b"lock/"
        self.retained = p + b"retained/"
        self.depth = p + b"rdepth/"

    def lock(self, client_id: str) -> bytes:
        return self.lock_prefix + _escape(client_id)

    def depth_key(self, topic: bytes) -> bytes:
        return self.depth + b"%05d/" % (topic.count(b"/") + 1) + topic


def _session_record(state: Any) -> bytes:
    will = encode_message(state.will) if state.will is not None else None
    return msgpack.packb([FORMAT, state.expiryInterval, state.willDelay, state.disconnectedAt,
                          will, getattr(state, "owner", None)], use_bin_type=True)


def _session_from(client_id: str, record: bytes) -> StoredSession:
    fields = msgpack.unpackb(record, raw=False)
    if fields[0] != FORMAT:
        raise StorageError(f"session {client_id!r} has format {fields[0]!r}, expected {FORMAT}")
    _, expiry, will_delay, disconnected_at, will, owner = fields
    state = StoredSession(client_id)
    state.expiryInterval = expiry
    state.willDelay = will_delay
    state.disconnectedAt = disconnected_at
    state.will = decode_message(will) if will else None
    state.owner = owner
    return state


# --- the store ------------------------------------------------------------------------------


@implementer(IStore)
class EtcdStore:
    """Sessions, retained messages and client locks in etcd (see the module docstring)."""

    name = "etcd"
    persistsMessages = True

    log = log

    def __init__(self, reactor: Any, options: EtcdOptions | None = None) -> None:
        self.reactor = reactor
        self.options = o = options or EtcdOptions()
        self._keys = _Keys(o.prefix)
        self.outage = OutageLog(reactor, self.log, f"etcd at {o.host}:{o.port}")
        self._http = EtcdHTTP(reactor, o, self.outage)
        self._lanes = Lanes(reactor, self._http, o.max_txn_ops)
        self._lease = NodeLease(reactor, self._http, o.lock_lease, self.log)
        self._locks = EtcdLocks(reactor, self._http, self._lease, self._keys.lock, self.log)
        self._last_message: Message | None = None
        self._last_blob = b""

    @classmethod
    def fromURL(cls, reactor: Any, url: str) -> EtcdStore:
        return cls(reactor, parse_url(url))

    def __repr__(self) -> str:
        o = self.options
        return f"<EtcdStore etcd://{o.host}:{o.port}/{o.prefix}>"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Ask etcd's status until it answers (``connect_timeout``), then take a lease."""
        d = self._probe(self.reactor.seconds() + self.options.connect_timeout)
        d.addCallback(lambda _: self._lease.start())
        d.addCallback(lambda _: self.log.info("etcd store connected: {store!r}", store=self))
        return d

    def _probe(self, deadline: float) -> Deferred[None]:
        remaining = deadline - self.reactor.seconds()
        d = self._http.call("maintenance/status", {}, write=False, track=False,
                            timeout=max(remaining, 0.05))

        def away(failure: Any) -> Any:
            failure.trap(Away)
            if self.reactor.seconds() + 0.1 >= deadline:
                o = self.options
                raise StorageError(f"etcd at {o.host}:{o.port} did not answer in "
                                   f"{o.connect_timeout}s")
            return deferLater(self.reactor, 0.1, self._probe, deadline)

        d.addCallbacks(lambda _: None, away)
        return d

    def stop(self) -> Deferred[None]:
        """Finish the calls queued (each ends by its deadline), revoke the lease (every lock
        left on it goes), then close the connections."""
        d = self._lanes.idle()
        d.addCallback(lambda _: self._lease.stop())
        d.addCallback(lambda _: self._http.close())
        d.addCallback(lambda _: None)
        return d

    # --- sessions ----------------------------------------------------------------------

    def _client(self, client_id: str) -> tuple[tuple[str, str], bytes]:
        """The client's lane and the escaped id its keys use."""
        return ("s", client_id), _escape(client_id)

    def loadSession(self, clientId: str) -> Deferred[StoredSession | None]:
        lane, cid = self._client(clientId)
        k = self._keys

        def load() -> Deferred[StoredSession | None]:
            d = self._http.call("kv/txn", {"success": [
                op.get(k.sessions + cid), op.get_prefix(k.sub + cid + b"/"),
                op.get_prefix(k.out + cid + b"/"), op.get_prefix(k.qos2 + cid + b"/")]},
                write=False)
            d.addCallback(self._decode_session, clientId, cid)
            return d

        return self._lanes.call(lane, load, write=False)

    def _decode_session(self, reply: dict[str, Any], client_id: str,
                        cid: bytes) -> StoredSession | None:
        session, subs, outs, qos2 = (op.kvs(r) for r in op.txn_ranges(reply))
        if not session:
            return None
        state = _session_from(client_id, session[0][1])
        cut = len(self._keys.sub) + len(cid) + 1
        state.subscriptions = {key[cut:].decode("utf-8"): decode_options(value)
                               for key, value in subs}
        state.outbound = sorted((decode_outbound(value) for _, value in outs),
                                key=lambda o: o.seq)
        cut = len(self._keys.qos2) + len(cid) + 1
        state.inboundQoS2 = {int(key[cut:]) for key, _ in qos2}
        return state

    def saveSession(self, state: Any) -> Deferred[None]:
        """Replace the session: read its record keys, then delete the stale ones and put
        the new ones, in one transaction when they fit, else in several with the session
        record last (a crash in between leaves records no loadSession sees)."""
        lane, cid = self._client(state.clientId)
        k = self._keys
        new: dict[bytes, bytes] = {}
        for topic_filter, options in state.subscriptions.items():
            new[k.sub + cid + b"/" + topic_filter.encode("utf-8")] = encode_options(options)
        for out in state.outbound:
            new[k.out + cid + b"/%020d" % out.seq] = encode_outbound(out)
        for pid in state.inboundQoS2:
            new[k.qos2 + cid + b"/%d" % pid] = b""
        record = _session_record(state)

        def save() -> Deferred[None]:
            d = self._http.call("kv/txn", {"success": [
                op.get_prefix(prefix + cid + b"/", keys_only=True)
                for prefix in (k.sub, k.out, k.qos2)]})
            d.addCallback(lambda reply: self._replace(reply, new, k.sessions + cid, record))
            return d

        return self._lanes.call(lane, save)

    def _replace(self, reply: dict[str, Any], new: dict[bytes, bytes], session_key: bytes,
                 record: bytes) -> Deferred[None]:
        stale = [key for r in op.txn_ranges(reply) for key, _ in op.kvs(r) if key not in new]
        ops = [op.delete(key) for key in stale]
        sizes = [len(key) for key in stale]
        for key, value in new.items():
            ops.append(op.put(key, value))
            sizes.append(len(key) + len(value))
        ops.append(op.put(session_key, record))
        sizes.append(len(session_key) + len(record))
        batches: list[list[dict[str, Any]]] = [[]]
        size = 0
        for one, n in zip(ops, sizes):
            if batches[-1] and (len(batches[-1]) >= self.options.max_txn_ops
                                or size + n > self._lanes.max_bytes):
                batches.append([])
                size = 0
            batches[-1].append(one)
            size += n
        return self._in_turn(batches)

    def _in_turn(self, batches: list[list[dict[str, Any]]]) -> Deferred[None]:
        d = self._http.call("kv/txn", {"success": batches[0]})
        if len(batches) > 1:
            d.addCallback(lambda _: self._in_turn(batches[1:]))
        else:
            d.addCallback(lambda _: None)
        return d

    def deleteSession(self, clientId: str) -> Deferred[None]:
        lane, cid = self._client(clientId)
        k = self._keys
        body = {"success": [op.delete(k.sessions + cid), op.delete_prefix(k.sub + cid + b"/"),
                            op.delete_prefix(k.out + cid + b"/"),
                            op.delete_prefix(k.qos2 + cid + b"/")]}
        d = self._lanes.call(lane, lambda: self._http.call("kv/txn", body))
        d.addCallback(lambda _: None)
        return d

    def listSessions(self) -> Deferred[list[str]]:
        prefix = self._keys.sessions
        d = self._lanes.quiet("s")
        d.addCallback(lambda _: self._http.call(
            "kv/range", op.get_prefix(prefix, keys_only=True)["requestRange"], write=False))
        d.addCallback(lambda reply: [_unescape(key[len(prefix):]) for key, _ in op.kvs(reply)])
        return d

    def _write(self, client_id: str, key_prefix: bytes, tail: bytes,
               value: bytes | None) -> Deferred[None]:
        """One guarded write to a client's record (``value`` None: delete it)."""
        lane, cid = self._client(client_id)
        key = key_prefix + cid + b"/" + tail
        if value is None:
            one = (key, op.delete(key), len(key))
        else:
            one = (key, op.put(key, value), len(key) + len(value))
        return self._lanes.write(lane, [one], guard=self._keys.sessions + cid)

    def addSubscription(self, clientId: str, topicFilter: str, options: Any) -> Deferred[None]:
        return self._write(clientId, self._keys.sub, topicFilter.encode("utf-8"),
                           encode_options(options))

    def removeSubscription(self, clientId: str, topicFilter: str) -> Deferred[None]:
        return self._write(clientId, self._keys.sub, topicFilter.encode("utf-8"), None)

    def storeOutbound(self, clientId: str, outbound: Any) -> Deferred[None]:
        message = outbound.message
        # A message fanned out to many sessions is serialized once.
        if message is not self._last_message:
            self._last_message = message
            self._last_blob = encode_message(message)
        return self._write(clientId, self._keys.out, b"%020d" % outbound.seq,
                           encode_outbound(outbound, self._last_blob))

    def removeOutbound(self, clientId: str, seq: int) -> Deferred[None]:
        return self._write(clientId, self._keys.out, b"%020d" % seq, None)

    def addInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        return self._write(clientId, self._keys.qos2, b"%d" % packetId, b"")

    def removeInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        return self._write(clientId, self._keys.qos2, b"%d" % packetId, None)

    # --- retained ------------------------------------------------------------------------
    # Writes share one lane (batched across topics, in the order made); reads wait for the
    # writes queued before them, then run side by side.

    _RETAINED = ("r", "")

    def setRetained(self, message: Message) -> Deferred[None]:
        if not message.payload:
            return self.deleteRetained(message.topic)
        topic = message.topic.encode("utf-8")
        key, depth = self._keys.retained + topic, self._keys.depth_key(topic)
        blob = encode_message(message)
        return self._lanes.write(self._RETAINED, [(key, op.put(key, blob), len(key) + len(blob)),
                                                  (depth, op.put(depth, b""), len(depth))])

    def deleteRetained(self, topic: str) -> Deferred[None]:
        t = topic.encode("utf-8")
        key, depth = self._keys.retained + t, self._keys.depth_key(t)
        return self._lanes.write(self._RETAINED, [(key, op.delete(key), len(key)),
                                                  (depth, op.delete(depth), len(depth))])

    def _read_retained(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        d = self._lanes.quiet("r")
        d.addCallback(lambda _: self._http.call(path, body, write=False))
        return d

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        key = self._keys.retained + topic.encode("utf-8")
        d = self._read_retained("kv/range", op.get(key)["requestRange"])
        d.addCallback(lambda reply: (decode_message(op.kvs(reply)[0][1])
                                     if reply.get("kvs") else None))
        return d

    def countRetained(self) -> Deferred[int]:
        body = dict(op.get_prefix(self._keys.retained)["requestRange"], count_only=True)
        d = self._read_retained("kv/range", body)
        d.addCallback(lambda reply: int(reply.get("count", 0)))
        return d

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        levels = topicFilter.split("/")
        wild = next((i for i, level in enumerate(levels) if level in ("+", "#")), None)
        base = self._keys.retained
        if wild is None:
            ranges = [op.get(base + topicFilter.encode("utf-8"))]
        elif wild == 0 and "#" not in levels:
            return self._match_by_depth(topicFilter, len(levels))
        else:
            literal = "/".join(levels[:wild]).encode("utf-8")
            ranges = [op.get_prefix(base + literal + b"/" if wild else base)]
            if levels[wild] == "#" and wild:
                ranges.append(op.get(base + literal))  # a/# matches a [MQTT-4.7.1-2]
        d = self._read_retained("kv/txn", {"success": ranges})
        d.addCallback(self._matching, topicFilter)
        return d

    def _matching(self, reply: dict[str, Any], topic_filter: str) -> list[Message]:
        cut = len(self._keys.retained)
        return [decode_message(value) for r in op.txn_ranges(reply) for key, value in op.kvs(r)
                if topic_matches(topic_filter, key[cut:].decode("utf-8"))]

    def _match_by_depth(self, topic_filter: str, depth: int) -> Deferred[list[Message]]:
        """``+/...`` without ``#``: the topics of that many levels (keys only), then the
        messages of those that match, in transactions of ``max_txn_ops`` reads."""
        prefix = self._keys.depth + b"%05d/" % depth
        d = self._read_retained("kv/range", op.get_prefix(prefix, keys_only=True)["requestRange"])

        def fetch(reply: dict[str, Any]) -> Any:
            topics = [key[len(prefix):] for key, _ in op.kvs(reply)]
            keys = [self._keys.retained + t for t in topics
                    if topic_matches(topic_filter, t.decode("utf-8"))]
            n = self.options.max_txn_ops
            reads = [self._http.call("kv/txn", {"success": [op.get(k) for k in keys[i:i + n]]},
                                     write=False) for i in range(0, len(keys), n)]
            g = gatherResults(reads, consumeErrors=True)
            g.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)
            g.addCallback(lambda replies: [decode_message(value) for one in replies
                                           for r in op.txn_ranges(one)
                                           for _, value in op.kvs(r)])
            return g

        d.addCallback(fetch)
        return d

    # --- locks ------------------------------------------------------------------------------

    def acquireLock(self, clientId: str, timeout: float) -> Deferred[ILock]:
        """A key on the broker's lease, created only while absent; local waiters queue in
        order first, so only one of them polls etcd at a time (``_etcdlock``)."""
        return self._locks.acquire(clientId, timeout)
