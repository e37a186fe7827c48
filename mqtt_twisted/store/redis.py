"""The Redis store: sessions, retained messages and client locks in Redis, on txredisapi.

Selected with ``--store redis://[[user]:password@]host:port/db[?options]`` or
``rediss://...`` for TLS (see :func:`parse_url` and docs/stores.md).

Key layout (``P`` is the key prefix, ``mqtt`` by default; the braces are literal
Redis hash tags, so that every key of one client lands in one Redis Cluster slot)::

    P:sessions            set   client ids of the stored sessions
    P:session:{cid}       hash  v (format), expiry, willDelay, disconnectedAt, will, owner
                                (a cluster's m:STREAM marks too: kept by saveSession),
                                sent (the highest seq sent: _redisbatch.py)
    P:subs:{cid}          hash  topic filter -> subscription options
    P:out:{cid}           hash  seq -> outbound record (queued or in flight) with its message
    P:qos2:{cid}          set   packet ids of inbound QoS 2 PUBLISHes awaiting PUBREL
    P:lock:{cid}          str   lock token, SET NX PX, deleted by compare-and-delete
    P:retained            hash  topic -> retained message
    P:rtrie:<path>        set   the retained-topic index: the child levels of a topic prefix

Every store call is one Redis command, either a plain one or a Lua script, so each
is atomic, but for the outbound-record writes: those of one reactor turn on one
connection are one script call (``_redisbatch.py``).  Another broker node on the
same Redis sees a session, its subscriptions, its queue and every retained message
as soon as the call answers.
Retained messages are matched by walking the ``rtrie`` index inside Redis (a Lua
script), so a SUBSCRIBE visits only the topic levels that can match, on every
node, with no copy of the index in the broker.

Connections: ``pool`` connections, each reconnecting with exponential backoff.  A
client's calls always use the same connection (chosen by a hash of the client
id), because Redis runs the commands of one connection in order: a removeOutbound
can never overtake the storeOutbound it follows.  Calls never wait for earlier
replies, so the writes of one reactor turn leave in one TCP write and come back
in one round trip (pipelining, with the reactor batching the writes).

Every call fails with :class:`~mqtt_twisted.errors.StorageError` after ``timeout``
seconds (default 5): calls made while Redis is unreachable wait for the
connection that long, and a connection whose oldest reply is overdue is dropped
and reconnected.  An outage is logged once when it starts and once when it ends
(:class:`~mqtt_twisted.store.outage.OutageLog`); the calls failing meanwhile fail
with :class:`~mqtt_twisted.errors.StoreUnavailable`, which the broker does not log.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgpack
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import IBatchedOutboundStore, ILock, ISessionInfoStore, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store._redisbatch import OutboundBatches
from mqtt_twisted.store._redisformat import (
    FORMAT,
    decode_message,
    decode_options,
    decode_outbound,
    decode_session,
    encode_message,
    encode_options,
    encode_outbound,
    message_from_record,
    session_fields,
    with_records,
)
from mqtt_twisted.store._rediskeys import KeyLayout
from mqtt_twisted.store._redislink import Link, endpoint
from mqtt_twisted.store._redislock import RedisLocks
from mqtt_twisted.store._redisscripts import FENCED, call_script
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.store.outage import OutageLog

__all__ = [
    "FORMAT", "RedisOptions", "RedisStore", "decode_message", "decode_options",
    "decode_outbound", "decode_session", "encode_message", "encode_options",
    "encode_outbound", "message_from_record", "parse_url", "with_records",
]

log = Logger()

# --- options ---------------------------------------------------------------------------


@dataclass
class RedisOptions:
    """Where and how to reach Redis; built from a URL by :func:`parse_url`."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    #: PEM file of the CA that signed the server's certificate (default: the system's).
    ca: str | None = None
    #: PEM files of a client certificate and its key, for servers that ask for one.
    cert: str | None = None
    key: str | None = None
    #: Connections to Redis; a client's calls always use the same one.
    pool: int = 4
    #: Seconds a store call may take (including waiting for a connection) before it fails.
    timeout: float = 5.0
    #: Seconds start() waits for Redis before the broker gives up starting.
    connect_timeout: float = 5.0
    #: Prefix of every key, so that several brokers (or tests) can share a database.
    prefix: str = "mqtt"
    #: Seconds a client lock lives in Redis if its holder dies before releasing it.
    lock_lease: float = 10.0
    #: Replicas that must have a write before it counts as stored (``WAIT``; 0: do not
    #: wait), and how long to wait for them (store/replicas.py).
    wait: int = 0
    wait_timeout: float = 1.0
    #: Behind Sentinel (``redis+sentinel://``): the sentinels' addresses, the master's
    #: service name, and the sentinels' own credentials (store/sentinel.py).
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    service: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: What the store and the cluster share for these options (the Sentinel endpoint).
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def where(self) -> str:
        """The server as logs name it."""
        if self.sentinels:
            return f"Redis master {self.service} (Sentinel)"
        return f"Redis at {self.host}:{self.port}"


_QUERY = {
    "pool": int, "timeout": float, "connect_timeout": float, "prefix": str,
    "lock_lease": float, "ca": str, "cert": str, "key": str, "wait": int,
    "wait_timeout": float,
}


def parse_url(url: str) -> RedisOptions:
    """``redis://[[user]:password@]host[:port][/db][?pool=4&timeout=5&prefix=mqtt...]``.

    ``rediss://`` uses TLS, verified against the system's CAs or ``?ca=FILE``;
    ``?cert=FILE&key=FILE`` present a client certificate.
    ``redis+sentinel://HOST:26379,HOST2/SERVICE/DB`` finds the master through Sentinel
    (``store/sentinel.py``); ``rediss+sentinel://`` talks TLS to the sentinels and to
    the master, with the same ``?ca=&cert=&key=`` as ``rediss://``.  Raises ValueError.
    """
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        from mqtt_twisted.store.sentinel import parse_sentinel_url

        options = RedisOptions(tls=url.startswith("rediss+"))
        return _checked(parse_sentinel_url(url, options, _QUERY))
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis URL starts with redis://, rediss://, redis+sentinel:// "
                         f"or rediss+sentinel://, not {url!r}")
    options = RedisOptions(tls=parts.scheme == "rediss")
    try:
        if parts.hostname:
            options.host = parts.hostname
        if parts.port is not None:
            options.port = parts.port
    except ValueError as e:
        raise ValueError(f"bad host or port in Redis URL {url!r}: {e}") from None
    if parts.username:
        options.username = unquote(parts.username)
    if parts.password is not None:
        options.password = unquote(parts.password)
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError(f"the Redis database in {url!r} must be a number")
        options.db = int(path)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _QUERY.get(name)
        if kind is None:
            known = ", ".join(sorted(_QUERY))
            raise ValueError(f"unknown Redis URL option {name!r} (known: {known})")
        try:
            setattr(options, name, kind(value))
        except ValueError:
            raise ValueError(f"bad value for Redis URL option {name}: {value!r}") from None
    return _checked(options)


def _checked(options: RedisOptions) -> RedisOptions:
    if options.pool < 1:
        raise ValueError("Redis pool must be at least 1")
    if options.wait < 0:
        raise ValueError("Redis wait (replicas) must not be negative")
    if (options.timeout <= 0 or options.connect_timeout <= 0 or options.lock_lease <= 0
            or options.wait_timeout <= 0):
        raise ValueError("Redis timeouts must be positive")
    if (options.ca or options.cert or options.key) and not options.tls:
        raise ValueError("ca, cert and key need a rediss:// or rediss+sentinel:// (TLS) URL")
    if bool(options.cert) != bool(options.key):
        raise ValueError("a client certificate needs both cert and key")
    return options


# --- the store ------------------------------------------------------------------------------


@implementer(IStore, ISessionInfoStore, IBatchedOutboundStore)
class RedisStore(OutboundBatches):
    """Sessions, retained messages and client locks in Redis (see the module docstring).

    Its helpers, in private modules: the key names (``_rediskeys.KeyLayout``), the
    connections (``_redislink.Link``), the Lua scripts (``_redisscripts``), the
    batches of outbound-record writes (``_redisbatch``) and the client locks
    ``acquireLock`` hands out (``_redislock.RedisLocks``).
    """

    name = "redis"
    persistsMessages = True

    log = log

    def __init__(self, reactor: Any, options: RedisOptions | None = None) -> None:
        self.reactor = reactor
        self.options = options or RedisOptions()
        self._keys = KeyLayout(self.options.prefix)
        self._links = [Link(self, i) for i in range(self.options.pool)]
        self.outage = OutageLog(reactor, self.log, self.options.where)
        self._endpoint: Any = None
        self._locks = RedisLocks(reactor, self.options, self._keys, self._link, self.log)
        self._last_message: Message | None = None
        self._last_blob = b""
        #: A cluster node's fence (``cluster/fence.py``): ``(home hash, epoch key, node,
        #: epoch)``; when set, every write to a client's keys is made only while the
        #: client's home is that node and the node's epoch is current.  None alone.
        self.fence: tuple[bytes, bytes, bytes, bytes] | None = None
        #: While a cluster node delivers one entry of its stream: ``(b"m:" + stream,
        #: entry id)``, and the index of the message in it, written with each outbound
        #: record it makes (as ``entry id`` or ``entry id.INDEX``), so that the node
        #: adopting it does not deliver that entry into that session again.  The mark
        #: is made from these two only for a record written (a persistent session's),
        #: not for every message delivered.
        self.mark: tuple[bytes, bytes] | None = None
        self.mark_index = 0

    @classmethod
    def fromURL(cls, reactor: Any, url: str) -> RedisStore:
        return cls(reactor, parse_url(url))

    def __repr__(self) -> str:
        o = self.options
        if o.sentinels:
            sentinels = ",".join(f"{h}:{p}" for h, p in o.sentinels)
            scheme = "rediss+sentinel" if o.tls else "redis+sentinel"
            return f"<RedisStore {scheme}://{sentinels}/{o.service}/{o.db}>"
        return f"<RedisStore {'rediss' if o.tls else 'redis'}://{o.host}:{o.port}/{o.db}>"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect every link; fails with StorageError if Redis does not answer in time."""
        to_redis = self._endpoint = endpoint(self.reactor, self.options)
        hold = getattr(to_redis, "hold", None)
        if hold is not None:
            hold()  # Sentinel: watch for a new master while the store runs
        for link in self._links:
            link.start(to_redis, self.options)
        ready = gatherResults([link.ready for link in self._links], consumeErrors=True)
        ready.addTimeout(self.options.connect_timeout, self.reactor)

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, Exception) and hasattr(error, "subFailure"):
                error = error.subFailure.value  # type: ignore[union-attr]
            if not isinstance(error, StorageError):
                error = StorageError(f"{self.options.where} did "
                                     f"not answer in {self.options.connect_timeout}s")
            d = gatherResults([link.stop() for link in self._links], consumeErrors=True)
            d.addBoth(lambda _: _release(self))
            d.addBoth(lambda _: Failure(error))
            return d  # type: ignore[return-value]

        ready.addCallbacks(lambda _: self.log.info("Redis store connected: {store!r}",
                                                   store=self), failed)
        return ready

    def stop(self) -> Deferred[None]:
        """Wait for the calls under way (each ends by its deadline), then disconnect."""
        d = gatherResults([link.drained() for link in self._links])
        d.addCallback(lambda _: gatherResults([link.stop() for link in self._links],
                                              consumeErrors=True))
        d.addCallback(lambda _: _release(self))
        d.addCallback(lambda _: None)
        return d

    # --- plumbing -----------------------------------------------------------------------

    def _link(self, cid: bytes) -> Link:
        links = self._links
        return links[zlib.crc32(cid) % len(links)] if len(links) > 1 else links[0]

    def _write(self, cid: bytes, name: str, keys: tuple[bytes, ...],
               args: tuple[Any, ...] | list[Any], reply: bool = False) -> Deferred[Any]:
        """A write script on one client's keys, fenced when the store is a cluster's;
        its Deferred fires with None, or with the script's reply if ``reply``."""
        fence = self.fence
        if fence is None:
            d = call_script(self._link(cid), name, keys, args)
        else:
            home, epoch_key, node, epoch = fence
            d = call_script(self._link(cid), FENCED[name], (home, epoch_key, *keys),
                            (cid, node, epoch, *args))
        if not reply:
            d.addCallback(_none)
        return d

    def _plain(self, cid: bytes, *command: Any) -> Deferred[None]:
        if self.fence is not None:  # command: (name, key, args...)
            return self._write(cid, "plain", (command[1],), (command[0], *command[2:]))
        d = self._link(cid).call(command)
        d.addCallback(_none)
        return d

    # --- sessions ----------------------------------------------------------------------

    def loadSession(self, clientId: str) -> Deferred[StoredSession | None]:
        cid = self._keys.cid(clientId)
        d = call_script(self._link(cid), "load", self._keys.session(cid), (), write=False)
        d.addCallback(lambda data: decode_session(clientId, data) if data else None)
        return d

    def saveSession(self, state: Any) -> Deferred[None]:
        cid = self._keys.cid(state.clientId)
        fields = session_fields(state)
        subs: list[bytes] = []
        for topic_filter, options in state.subscriptions.items():
            subs += (topic_filter.encode("utf-8"), encode_options(options))
        outbound: list[bytes] = []
        for out in state.outbound:
            outbound += (str(out.seq).encode(), encode_outbound(out))
        qos2 = [str(pid).encode() for pid in state.inboundQoS2]
        args: list[Any] = [cid]
        for group in (fields, subs, outbound, qos2):
            args.append(str(len(group)).encode())
            args.extend(group)
        return self._write(cid, "save", (*self._keys.session(cid), self._keys.sessions), args)

    def saveSessionInfo(self, state: Any) -> Deferred[None]:
        cid = self._keys.cid(state.clientId)
        keys = self._keys
        d = self._write(cid, "info", (keys.key(b"session", cid), keys.sessions),
                        (cid, *session_fields(state)), reply=True)
        d.addCallback(lambda stored: None if stored else self.saveSession(state))
        return d

    def deleteSession(self, clientId: str) -> Deferred[None]:
        cid = self._keys.cid(clientId)
        return self._write(cid, "delete", (*self._keys.session(cid), self._keys.sessions),
                           (cid,))

    def listSessions(self) -> Deferred[list[str]]:
        d = call_script(self._links[0], "list", (self._keys.sessions,), (), write=False)
        d.addCallback(lambda data: [c.decode("utf-8") for c in msgpack.unpackb(data, raw=True)])
        return d

    def addSubscription(self, clientId: str, topicFilter: str, options: Any) -> Deferred[None]:
        cid = self._keys.cid(clientId)
        return _guarded(self, cid, b"subs", b"HSET", topicFilter.encode("utf-8"),
                             encode_options(options))

    def addSubscriptions(self, clientId: str, subscriptions: dict[str, Any]) -> Deferred[None]:
        """One SUBSCRIBE's subscriptions in one HSET (optional, see the memory store);
        past _HSET_FILTERS filters, one HSET each that many (the script unpacks its
        arguments onto Lua's stack, which holds about 8,000)."""
        cid = self._keys.cid(clientId)
        fields: list[bytes] = []
        for topic_filter, options in subscriptions.items():
            fields += (topic_filter.encode("utf-8"), encode_options(options))
        step = 2 * _HSET_FILTERS
        if len(fields) <= step:
            return _guarded(self, cid, b"subs", b"HSET", *fields)
        writes = [_guarded(self, cid, b"subs", b"HSET", *fields[i:i + step])
                  for i in range(0, len(fields), step)]
        done = gatherResults(writes, consumeErrors=True)
        done.addCallbacks(lambda _: None, lambda f: f.value.subFailure)
        return done

    def removeSubscription(self, clientId: str, topicFilter: str) -> Deferred[None]:
        cid = self._keys.cid(clientId)
        return self._plain(cid, b"HDEL", self._keys.key(b"subs", cid), topicFilter.encode("utf-8"))

    # storeOutbound, removeOutbound and the batched record writes: _redisbatch.py.

    def addInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        cid = self._keys.cid(clientId)
        return _guarded(self, cid, b"qos2", b"SADD", str(packetId).encode())

    def removeInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        cid = self._keys.cid(clientId)
        return self._plain(cid, b"SREM", self._keys.key(b"qos2", cid), str(packetId).encode())

    # --- retained ------------------------------------------------------------------------
    # All on the first link, so that they are applied in the order the broker made them.

    def setRetained(self, message: Message) -> Deferred[None]:
        if not message.payload:
            return self.deleteRetained(message.topic)
        d = call_script(self._links[0], "set_retained", (self._keys.retained,),
                        (self._keys.trie, message.topic.encode("utf-8"),
                         encode_message(message)))
        d.addCallback(_none)
        return d

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        d = self._links[0].call((b"HGET", self._keys.retained, topic.encode("utf-8")),
                                write=False)
        d.addCallback(lambda data: decode_message(data) if data else None)
        return d

    def deleteRetained(self, topic: str) -> Deferred[None]:
        d = call_script(self._links[0], "delete_retained", (self._keys.retained,),
                        (self._keys.trie, topic.encode("utf-8")))
        d.addCallback(_none)
        return d

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        d = call_script(self._links[0], "match_retained", (self._keys.retained,),
                        (self._keys.trie, topicFilter.encode("utf-8")), write=False)
        d.addCallback(lambda data: [decode_message(m) for m in msgpack.unpackb(data, raw=True)])
        return d

    def countRetained(self) -> Deferred[int]:
        return self._links[0].call((b"HLEN", self._keys.retained), write=False)

    # --- locks ------------------------------------------------------------------------------

    def acquireLock(self, clientId: str, timeout: float) -> Deferred[ILock]:
        """SET NX PX with a random token, retried until ``timeout``; local waiters queue
        in order first, so only one of them polls Redis at a time."""
        return self._locks.acquire(clientId, timeout)


def _none(_: Any) -> None:
    return None


def _release(store: RedisStore) -> Any:
    """Let the store's endpoint go (Sentinel: stop watching for a new master)."""
    to_redis, store._endpoint = store._endpoint, None
    release = getattr(to_redis, "release", None)
    return release() if release is not None else None


#: Filters one HSET of ``addSubscriptions`` stores at most.
_HSET_FILTERS = 1000


def _guarded(store: RedisStore, cid: bytes, kind: bytes, *command: Any) -> Deferred[None]:
    """A write to one of a session's keys, done only while the session exists (the
    "guarded" script): a late write never brings a deleted session back."""
    keys = store._keys
    return store._write(cid, "guarded", (keys.key(b"session", cid), keys.key(kind, cid)),
                        command)
