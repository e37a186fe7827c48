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

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store import _etcdhttp as op
from mqtt_twisted.store._etcdhttp import Away, EtcdHTTP
from mqtt_twisted.store._etcdlanes import Lanes
from mqtt_twisted.store._etcdlock import EtcdLocks, NodeLease
from mqtt_twisted.store._etcdrecords import (
    Keys,
    decode_session,
    escape,
    in_turn,
    replacement,
    session_record,
    unescape,
)
from mqtt_twisted.store._etcdretained import EtcdRetained
from mqtt_twisted.store._redisformat import encode_message, encode_options, encode_outbound
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
        self._keys = Keys(o.prefix)
        self.outage = OutageLog(reactor, self.log, f"etcd at {o.host}:{o.port}")
        self._http = EtcdHTTP(reactor, o, self.outage)
        self._lanes = Lanes(reactor, self._http, o.max_txn_ops)
        self._lease = NodeLease(reactor, self._http, o.lock_lease, self.log)
        self._locks = EtcdLocks(reactor, self._http, self._lease, self._keys.lock, self.log)
        self._retained = EtcdRetained(self._keys, self._lanes, self._http, o.max_txn_ops)
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
        d.addCallback(lambda _: self._http.drained())  # lock and retained calls too
        d.addCallback(lambda _: self._lease.stop())
        d.addCallback(lambda _: self._http.close())
        d.addCallback(lambda _: None)
        return d

    # --- sessions ----------------------------------------------------------------------

    def _client(self, client_id: str) -> tuple[tuple[str, str], bytes]:
        """The client's lane and the escaped id its keys use."""
        return ("s", client_id), escape(client_id)

    def loadSession(self, clientId: str) -> Deferred[StoredSession | None]:
        lane, cid = self._client(clientId)
        k = self._keys

        def load() -> Deferred[StoredSession | None]:
            d = self._http.call("kv/txn", {"success": [
                op.get(k.sessions + cid), op.get_prefix(k.sub + cid + b"/"),
                op.get_prefix(k.out + cid + b"/"), op.get_prefix(k.qos2 + cid + b"/")]},
                write=False)
            d.addCallback(decode_session, k, clientId, cid)
            return d

        return self._lanes.call(lane, load, write=False)

    def saveSession(self, state: Any) -> Deferred[None]:
        """Replace the session: read its record keys, then delete the stale ones and put
        the new ones, in one transaction when they fit, else in several with the session
        record last (a crash in between can leave some old records beside new ones)."""
        lane, cid = self._client(state.clientId)
        k = self._keys
        new: dict[bytes, bytes] = {}
        for topic_filter, options in state.subscriptions.items():
            new[k.sub + cid + b"/" + topic_filter.encode("utf-8")] = encode_options(options)
        for out in state.outbound:
            new[k.out + cid + b"/%020d" % out.seq] = encode_outbound(out)
        for pid in state.inboundQoS2:
            new[k.qos2 + cid + b"/%d" % pid] = b""
        record = session_record(state)

        def save() -> Deferred[None]:
            d = self._http.call("kv/txn", {"success": [
                op.get_prefix(prefix + cid + b"/", keys_only=True)
                for prefix in (k.sub, k.out, k.qos2)]})
            d.addCallback(lambda reply: in_turn(self._http, replacement(
                reply, new, k.sessions + cid, record, self.options.max_txn_ops,
                self._lanes.max_bytes)))
            return d

        return self._lanes.call(lane, save)

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
        d.addCallback(lambda reply: [unescape(key[len(prefix):]) for key, _ in op.kvs(reply)])
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
    # One key per topic and an index by depth (_etcdretained).

    def setRetained(self, message: Message) -> Deferred[None]:
        if not message.payload:
            return self._retained.delete(message.topic)
        return self._retained.set(message)

    def deleteRetained(self, topic: str) -> Deferred[None]:
        return self._retained.delete(topic)

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        return self._retained.get(topic)

    def countRetained(self) -> Deferred[int]:
        return self._retained.count()

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        return self._retained.match(topicFilter)

    # --- locks ------------------------------------------------------------------------------

    def acquireLock(self, clientId: str, timeout: float) -> Deferred[ILock]:
        """A key on the broker's lease, created only while absent; local waiters queue in
        order first, so only one of them polls etcd at a time (``_etcdlock``)."""
        return self._locks.acquire(clientId, timeout)
