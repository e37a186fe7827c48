"""The Redis store: sessions, retained messages and client locks in Redis, on txredisapi.

Selected with ``--store redis://[[user]:password@]host:port/db[?options]`` or
``rediss://...`` for TLS (see :func:`parse_url` and docs/stores.md).

Key layout (``P`` is the key prefix, ``mqtt`` by default; the braces are literal
Redis hash tags, so that every key of one client lands in one Redis Cluster slot)::

    P:sessions            set   client ids of the stored sessions
    P:session:{cid}       hash  v (format), expiry, willDelay, disconnectedAt, will
    P:subs:{cid}          hash  topic filter -> subscription options
    P:out:{cid}           hash  seq -> outbound record (queued or in flight) with its message
    P:qos2:{cid}          set   packet ids of inbound QoS 2 PUBLISHes awaiting PUBREL
    P:lock:{cid}          str   lock token, SET NX PX, deleted by compare-and-delete
    P:retained            hash  topic -> retained message
    P:rtrie:<path>        set   the retained-topic index: the child levels of a topic prefix

Every store call is one Redis command, either a plain one or a Lua script, so each
is atomic; another broker node on the same Redis sees a session, its
subscriptions, its queue and every retained message as soon as the call answers.
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
and reconnected.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgpack
import txredisapi
from twisted.internet.defer import Deferred, DeferredLock, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core.session import Outbound, SubscriptionOptions
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store.memory import StoredSession

log = Logger()

#: Version of the stored format, first in every record; readers refuse others.
FORMAT = 1

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
    connect_timeout: float = 10.0
    #: Prefix of every key, so that several brokers (or tests) can share a database.
    prefix: str = "mqtt"
    #: Seconds a client lock lives in Redis if its holder dies before releasing it.
    lock_lease: float = 10.0


_QUERY = {
    "pool": int, "timeout": float, "connect_timeout": float, "prefix": str,
    "lock_lease": float, "ca": str, "cert": str, "key": str,
}


def parse_url(url: str) -> RedisOptions:
    """``redis://[[user]:password@]host[:port][/db][?pool=4&timeout=5&prefix=mqtt...]``.

    ``rediss://`` uses TLS, verified against the system's CAs or ``?ca=FILE``;
    ``?cert=FILE&key=FILE`` present a client certificate.  Raises ValueError.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis URL starts with redis:// or rediss://, not {url!r}")
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
    if options.pool < 1:
        raise ValueError("Redis pool must be at least 1")
    if options.timeout <= 0 or options.connect_timeout <= 0 or options.lock_lease <= 0:
        raise ValueError("Redis timeouts must be positive")
    if (options.ca or options.cert or options.key) and not options.tls:
        raise ValueError("ca, cert and key need a rediss:// (TLS) URL")
    if bool(options.cert) != bool(options.key):
        raise ValueError("a client certificate needs both cert and key")
    return options


# --- serialization -----------------------------------------------------------------------
#
# msgpack arrays, the format version first.  A message is
#   [FORMAT, topic, payload, qos, retain, properties, received_at, sender]
# with properties a map of property id -> int | str | bytes | [[str, str], ...] | [int, ...];
# an outbound record is
#   [FORMAT, seq, qos, retain, subscription_ids, packet_id, state, group, message]
# and subscription options are [FORMAT, qos, no_local, retain_as_published,
# retain_handling, subscription_id].

_PROPERTY_IDS = {int(p): p for p in PropertyId}
_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _message_record(message: Message) -> list[Any]:
    return [FORMAT, message.topic, message.payload, message.qos, message.retain,
            message.properties, message.received_at, message.sender]


def encode_message(message: Message) -> bytes:
    """The stored form of a message (its per-hop packet id and wire cache are not kept)."""
    return _pack(_message_record(message))


def _properties(stored: dict[int, Any]) -> dict[int, Any]:
    props: dict[int, Any] = {}
    for key, value in stored.items():
        if type(value) is list and value and type(value[0]) is list:
            value = [tuple(pair) for pair in value]  # user properties: (name, value) pairs
        props[_PROPERTY_IDS.get(key, key)] = value
    return props


def _message_from(record: list[Any]) -> Message:
    if record[0] != FORMAT:
        raise StorageError(f"stored message has format {record[0]!r}, expected {FORMAT}")
    _, topic, payload, qos, retain, props, received_at, sender = record
    return Message(topic, payload, qos, retain, None, _properties(props) if props else None,
                   received_at, sender)


def decode_message(data: bytes) -> Message:
    return _message_from(_unpack(data))


def encode_outbound(out: Outbound, message_blob: bytes | None = None) -> bytes:
    sub_ids = list(out.subscription_ids) if out.subscription_ids else None
    return _pack([FORMAT, out.seq, out.qos, out.retain, sub_ids, out.packet_id, out.state,
                  out.group, message_blob if message_blob is not None
                  else encode_message(out.message)])


def decode_outbound(data: bytes) -> Outbound:
    record = _unpack(data)
    if record[0] != FORMAT:
        raise StorageError(f"stored outbound has format {record[0]!r}, expected {FORMAT}")
    _, seq, qos, retain, sub_ids, packet_id, state, group, message = record
    return Outbound(decode_message(message), qos, retain, tuple(sub_ids) if sub_ids else None,
                    packet_id, state, group, seq)


def encode_options(options: SubscriptionOptions) -> bytes:
    return _pack([FORMAT, *options.as_tuple()])


def decode_options(data: bytes) -> SubscriptionOptions:
    record = _unpack(data)
    if record[0] != FORMAT:
        raise StorageError(f"stored subscription has format {record[0]!r}, expected {FORMAT}")
    _, qos, no_local, rap, handling, sub_id = record
    return SubscriptionOptions(qos, no_local, rap, handling, sub_id)


def _number(value: float | None) -> bytes:
    if value is None:
        return b""
    return repr(value).encode() if isinstance(value, float) else str(int(value)).encode()


def _parse_number(data: bytes | None) -> float | None:
    if not data:
        return None
    text = data.decode()
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _session_fields(state: Any) -> list[bytes]:
    fields = [b"v", str(FORMAT).encode(), b"expiry", _number(state.expiryInterval),
              b"willDelay", _number(state.willDelay),
              b"disconnectedAt", _number(state.disconnectedAt)]
    if state.will is not None:
        fields += [b"will", encode_message(state.will)]
    return fields


def decode_session(client_id: str, data: bytes) -> StoredSession:
    """The reply of the load script: [session hash, subs hash, out hash, qos2 set]."""
    fields, subs, outbound, qos2 = msgpack.unpackb(data, raw=True)
    info = dict(zip(fields[::2], fields[1::2]))
    if info.get(b"v") != str(FORMAT).encode():
        raise StorageError(f"session {client_id!r} has format {info.get(b'v')!r}")
    state = StoredSession(client_id)
    state.expiryInterval = _parse_number(info.get(b"expiry"))
    state.willDelay = _parse_number(info.get(b"willDelay")) or 0
    state.disconnectedAt = _parse_number(info.get(b"disconnectedAt"))
    will = info.get(b"will")
    state.will = decode_message(will) if will else None
    state.subscriptions = {f.decode(): decode_options(o) for f, o in zip(subs[::2], subs[1::2])}
    state.outbound = sorted((decode_outbound(o) for o in outbound[1::2]), key=lambda o: o.seq)
    state.inboundQoS2 = {int(pid) for pid in qos2}
    return state


# --- Lua scripts -------------------------------------------------------------------------

#: A write to one of a session's keys, done only while the session exists, so that a
#: late write never resurrects a deleted session.  KEYS: session hash, target key;
#: ARGV: command, its arguments after the key.
_GUARDED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call(ARGV[1], KEYS[2], unpack(ARGV, 2))
"""

#: Replace a whole session.  KEYS: session, subs, out, qos2, sessions set; ARGV: client
#: id, then for each of the four keys a count followed by that many arguments.
_SAVE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local i = 2
for k = 1, 4 do
  local last = i + tonumber(ARGV[i])
  local cmd = 'HSET'
  if k == 4 then cmd = 'SADD' end
  local j = i + 1
  while j <= last do
    local upto = math.min(j + 999, last)
    redis.call(cmd, KEYS[k], unpack(ARGV, j, upto))
    j = upto + 1
  end
  i = last + 1
end
redis.call('SADD', KEYS[5], ARGV[1])
return 1
"""

_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return redis.call('SREM', KEYS[5], ARGV[1])
"""

#: One consistent snapshot of a session, packed into one reply (a single bulk string
#: parses far faster in txredisapi than a nested multi-bulk reply).
_LOAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return cmsgpack.pack({redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
                      redis.call('HGETALL', KEYS[3]), redis.call('SMEMBERS', KEYS[4])})
"""

_LIST = """
return cmsgpack.pack(redis.call('SMEMBERS', KEYS[1]))
"""

#: The node of a topic prefix of depth d is ARGV[1] .. '/' .. level1 .. '/' .. level d
#: (the root is ARGV[1] itself), a set of the next levels below it.
_SET_RETAINED = """
local topic = ARGV[2]
redis.call('HSET', KEYS[1], topic, ARGV[3])
local path = ''
local start = 1
while true do
  local slash = string.find(topic, '/', start, true)
  local level
  if slash then level = string.sub(topic, start, slash - 1) else level = string.sub(topic, start) end
  redis.call('SADD', ARGV[1] .. path, level)
  path = path .. '/' .. level
  if not slash then return 1 end
  start = slash + 1
end
"""

#: Delete a retained message and prune the index nodes nothing is below any more.
_DELETE_RETAINED = """
local topic = ARGV[2]
if redis.call('HDEL', KEYS[1], topic) == 0 then return 0 end
local paths = {''}
local levels = {}
local start = 1
while true do
  local slash = string.find(topic, '/', start, true)
  local level
  if slash then level = string.sub(topic, start, slash - 1) else level = string.sub(topic, start) end
  levels[#levels + 1] = level
  paths[#paths + 1] = paths[#paths] .. '/' .. level
  if not slash then break end
  start = slash + 1
end
for d = #levels, 1, -1 do
  local path = paths[d + 1]
  if redis.call('EXISTS', ARGV[1] .. path) == 1 then break end
  if d < #levels and redis.call('HEXISTS', KEYS[1], string.sub(path, 2)) == 1 then break end
  redis.call('SREM', ARGV[1] .. paths[d], levels[d])
end
return 1
"""

#: Every retained message matching a filter, walking only the index nodes that can
#: match [MQTT-4.7]; wildcards at the first level skip '$' topics [MQTT-4.7.2-1].
_MATCH_RETAINED = """
local prefix = ARGV[1]
local levels = {}
local start = 1
while true do
  local slash = string.find(ARGV[2], '/', start, true)
  if slash then
    levels[#levels + 1] = string.sub(ARGV[2], start, slash - 1)
  else
    levels[#levels + 1] = string.sub(ARGV[2], start)
    break
  end
  start = slash + 1
end
local out = {}
local function add(path)
  local value = redis.call('HGET', KEYS[1], string.sub(path, 2))
  if value then out[#out + 1] = value end
end
local function children(path, depth)
  local names = redis.call('SMEMBERS', prefix .. path)
  if depth > 1 then return names end
  local kept = {}
  for _, name in ipairs(names) do
    if string.sub(name, 1, 1) ~= '$' then kept[#kept + 1] = name end
  end
  return kept
end
local function subtree(path)
  add(path)
  for _, name in ipairs(redis.call('SMEMBERS', prefix .. path)) do
    subtree(path .. '/' .. name)
  end
end
local function walk(path, depth)
  if depth > #levels then
    add(path)
    return
  end
  local level = levels[depth]
  if level == '#' then
    if depth > 1 then add(path) end
    for _, name in ipairs(children(path, depth)) do subtree(path .. '/' .. name) end
  elseif level == '+' then
    for _, name in ipairs(children(path, depth)) do walk(path .. '/' .. name, depth + 1) end
  elseif redis.call('SISMEMBER', prefix .. path, level) == 1 then
    walk(path .. '/' .. level, depth + 1)
  end
end
walk('', 1)
return cmsgpack.pack(out)
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SCRIPTS = {
    "guarded": _GUARDED, "save": _SAVE, "delete": _DELETE, "load": _LOAD, "list": _LIST,
    "set_retained": _SET_RETAINED, "delete_retained": _DELETE_RETAINED,
    "match_retained": _MATCH_RETAINED, "release": _RELEASE,
}
_SHAS = {name: hashlib.sha1(body.encode()).hexdigest().encode()
         for name, body in _SCRIPTS.items()}


# --- connections ---------------------------------------------------------------------------


class _Call:
    """One command: its arguments, the caller's Deferred and when it gives up."""

    __slots__ = ("args", "deferred", "deadline", "done")

    def __init__(self, args: tuple[Any, ...], deadline: float) -> None:
        self.args = args
        self.deferred: Deferred[Any] = Deferred()
        self.deadline = deadline
        self.done = False


class _Factory(txredisapi.RedisFactory):
    """One reconnecting connection (txredisapi does the backoff) reporting to its link."""

    initialDelay = 0.1
    maxDelay = 5.0

    def __init__(self, link: _Link, options: RedisOptions) -> None:
        super().__init__(f"{options.host}:{options.port}", options.db, 1, isLazy=True,
                         charset=None, password=options.password, convertNumbers=False,
                         username=options.username)
        self.link = link

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        # txredisapi queues every new connection for its own handler; we do not use
        # that queue, so keep it from growing by one dead entry per reconnection.
        pending = self.connectionQueue.pending
        pending[:] = [c for c in pending if c.connected]
        if conn in self.pool:
            self.link.connected(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link.disconnected(conn)


class _Link:
    """One connection of the pool and the calls on it, answered in the order they were sent.

    Calls made while it is down wait (in order) until it is up again or their
    deadline passes.  One timer watches the oldest call: a sent call still
    unanswered at its deadline means the connection is stuck, so every call on
    it fails and the connection is dropped (txredisapi reconnects it).
    """

    def __init__(self, store: RedisStore, index: int) -> None:
        self.store = store
        self.index = index
        self.protocol: Any = None
        self.factory: _Factory | None = None
        self.waiting: deque[_Call] = deque()
        self.sent: deque[_Call] = deque()
        self.ready: Deferred[None] | None = Deferred()
        self._timer: Any = None
        self._drained: list[Deferred[None]] = []

    # --- connection events ---

    def start(self, endpoint: Any, options: RedisOptions) -> None:
        self.factory = _Factory(self, options)
        self.factory.deferred.addErrback(self._failed)
        self.factory.startConnecting(endpoint)

    def _failed(self, failure: Failure) -> None:
        # AUTH or SELECT was refused: txredisapi has stopped trying.  We are inside its
        # connection machinery, which must not be stopped reentrantly: report it next turn.
        error = StorageError(f"Redis refused the connection: {failure.getErrorMessage()}")
        self.store.reactor.callLater(0, self._refused, error)

    def _refused(self, error: StorageError) -> None:
        self._resolve_ready(error)
        self._fail(self.waiting, error)

    def _resolve_ready(self, error: Exception | None) -> None:
        ready, self.ready = self.ready, None
        if ready is not None and not ready.called:  # start() may have given up on it
            if error is None:
                ready.callback(None)
            else:
                ready.errback(error)

    def connected(self, protocol: Any) -> None:
        self.protocol = protocol
        self._load_scripts(protocol)  # ahead of anything waiting: Redis keeps the order
        waiting, self.waiting = self.waiting, deque()
        for call in waiting:
            if not call.done:
                self._send(protocol, call)
        self.store.link_up(self)
        self._resolve_ready(None)

    def _load_scripts(self, protocol: Any) -> None:
        for name, body in _SCRIPTS.items():
            protocol.execute_command("SCRIPT", "LOAD", body).addErrback(
                self._script_load_failed, name)

    def disconnected(self, protocol: Any) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.store.link_down(self)

    def _script_load_failed(self, failure: Failure, name: str) -> None:
        log.warn("Loading Redis script {name} failed: {error}", name=name,
                 error=failure.getErrorMessage())

    def stop(self) -> Deferred[Any]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._resolve_ready(StorageError("Redis store stopped"))
        self._fail(self.waiting, StorageError("Redis store stopped"))
        factory, self.factory = self.factory, None
        if factory is None:  # never started, or stopped already
            return succeed(None)
        # Not from inside txredisapi's connection machinery, which may be running us.
        return deferLater(self.store.reactor, 0, factory.disconnect)

    # --- calls ---

    def call(self, args: tuple[Any, ...]) -> Deferred[Any]:
        store = self.store
        call = _Call(args, store.reactor.seconds() + store.options.timeout)
        protocol = self.protocol
        if protocol is not None:
            self._send(protocol, call)
        else:
            self.waiting.append(call)
        if self._timer is None:
            self._arm()
        return call.deferred

    def _send(self, protocol: Any, call: _Call) -> None:
        self.sent.append(call)
        try:
            reply = protocol.execute_command(*call.args)
        except Exception:
            self._settle(Failure(), call)
            return
        reply.addBoth(self._settle, call)

    def _settle(self, result: Any, call: _Call) -> None:
        sent = self.sent
        if sent and sent[0] is call:
            sent.popleft()
        if call.done:
            return  # it timed out before; the late reply has nowhere to go
        call.done = True
        if isinstance(result, Failure):
            if result.check(txredisapi.ResponseError) and str(result.value).startswith(
                    "NOSCRIPT") and self.protocol is not None:
                self._load_scripts(self.protocol)  # Redis lost its scripts: load them again
            result = Failure(StorageError(f"Redis: {result.getErrorMessage()}"))
        call.deferred.callback(result)
        if self._drained and not sent and not self.waiting:
            self._fire_drained()

    # --- deadlines ---

    def _arm(self) -> None:
        heads = [q[0].deadline for q in (self.waiting, self.sent) if q]
        if heads:
            reactor = self.store.reactor
            delay = max(0.0, min(heads) - reactor.seconds())
            self._timer = reactor.callLater(delay, self._sweep)
        else:
            self._timer = None

    def _sweep(self) -> None:
        now = self.store.reactor.seconds()
        waiting = self.waiting
        while waiting and (waiting[0].done or waiting[0].deadline <= now):
            call = waiting.popleft()
            if not call.done:
                call.done = True
                call.deferred.errback(StorageError(
                    f"Redis unreachable for {self.store.options.timeout}s"))
        sent = self.sent
        while sent and sent[0].done:
            sent.popleft()
        if sent and sent[0].deadline <= now:
            self._fail(sent, StorageError(
                f"no reply from Redis in {self.store.options.timeout}s"))
            protocol = self.protocol
            if protocol is not None and protocol.transport is not None:
                log.warn("Redis connection {n} stuck; reconnecting", n=self.index)
                protocol.transport.abortConnection()
        self._arm()
        if self._drained and not self.sent and not self.waiting:
            self._fire_drained()

    def _fail(self, calls: deque[_Call], error: Exception) -> None:
        while calls:
            call = calls.popleft()
            if not call.done:
                call.done = True
                call.deferred.errback(error)

    def drained(self) -> Deferred[None]:
        """Fires once every call made so far is answered or has failed."""
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        if not self.sent and not self.waiting:
            self._fire_drained()
        return d

    def _fire_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for d in waiters:
            d.callback(None)


# --- the store ------------------------------------------------------------------------------


@implementer(ILock)
class _RedisLock:
    """A client lock held in Redis (and locally, so that local waiters queue in order)."""

    def __init__(self, store: RedisStore, client_id: str, token: bytes,
                 local: DeferredLock) -> None:
        self._store = store
        self._client_id = client_id
        self._token = token
        self._local: DeferredLock | None = local

    def release(self) -> Deferred[None]:
        local = self._local
        if local is None:
            return succeed(None)
        self._local = None
        store = self._store
        cid = store._cid(self._client_id)
        # Sent before the next local waiter's SET on the same connection, so it goes first.
        d = store._script(store._link(cid), "release", (store._key(b"lock", cid),),
                          (self._token,))
        store._release_local(self._client_id, local)
        d.addCallbacks(lambda _: None, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        log.warn("Releasing the Redis lock of {client} failed (it expires by itself): "
                 "{error}", client=self._client_id, error=failure.getErrorMessage())


@implementer(IStore)
class RedisStore:
    """Sessions, retained messages and client locks in Redis (see the module docstring)."""

    name = "redis"
    persistsMessages = True

    log = log

    def __init__(self, reactor: Any, options: RedisOptions | None = None) -> None:
        self.reactor = reactor
        self.options = options or RedisOptions()
        prefix = self.options.prefix.encode()
        self._prefix = prefix
        self._sessions_key = prefix + b":sessions"
        self._retained_key = prefix + b":retained"
        self._trie_prefix = prefix + b":rtrie:"
        self._links = [_Link(self, i) for i in range(self.options.pool)]
        self._up = 0
        self._outage_logged = False
        self._locks: dict[str, DeferredLock] = {}
        self._last_message: Message | None = None
        self._last_blob = b""

    @classmethod
    def fromURL(cls, reactor: Any, url: str) -> RedisStore:
        return cls(reactor, parse_url(url))

    def __repr__(self) -> str:
        o = self.options
        return f"<RedisStore {'rediss' if o.tls else 'redis'}://{o.host}:{o.port}/{o.db}>"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect every link; fails with StorageError if Redis does not answer in time."""
        endpoint = self._endpoint()
        for link in self._links:
            link.start(endpoint, self.options)
        ready = gatherResults([link.ready for link in self._links], consumeErrors=True)
        ready.addTimeout(self.options.connect_timeout, self.reactor)

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, Exception) and hasattr(error, "subFailure"):
                error = error.subFailure.value  # type: ignore[union-attr]
            if not isinstance(error, StorageError):
                error = StorageError(f"Redis at {self.options.host}:{self.options.port} did "
                                     f"not answer in {self.options.connect_timeout}s")
            d = gatherResults([link.stop() for link in self._links], consumeErrors=True)
            d.addBoth(lambda _: Failure(error))
            return d  # type: ignore[return-value]

        ready.addCallbacks(lambda _: self.log.info("Redis store connected: {store!r}",
                                                   store=self), failed)
        return ready

    def _endpoint(self) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        o = self.options
        endpoint = HostnameEndpoint(self.reactor, o.host, o.port, timeout=o.connect_timeout)
        if not o.tls:
            return endpoint
        from twisted.internet import ssl

        trust = None
        if o.ca:
            with open(o.ca, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        client = None
        if o.cert:
            with open(o.cert, "rb") as f, open(o.key, "rb") as k:  # type: ignore[arg-type]
                client = ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())
        creator = ssl.optionsForClientTLS(o.host, trustRoot=trust, clientCertificate=client)
        return wrapClientTLS(creator, endpoint)

    def stop(self) -> Deferred[None]:
        """Wait for the calls under way (each ends by its deadline), then disconnect."""
        d = gatherResults([link.drained() for link in self._links])
        d.addCallback(lambda _: gatherResults([link.stop() for link in self._links],
                                              consumeErrors=True))
        d.addCallback(lambda _: None)
        return d

    def link_up(self, link: _Link) -> None:
        self._up += 1
        if self._outage_logged and self._up == len(self._links):
            self._outage_logged = False
            self.log.info("Redis reachable again")

    def link_down(self, link: _Link) -> None:
        self._up -= 1
        if not self._outage_logged:
            self._outage_logged = True
            self.log.warn("Lost a Redis connection; reconnecting (store calls wait up to "
                          "{t}s, then fail)", t=self.options.timeout)

    # --- plumbing -----------------------------------------------------------------------

    @staticmethod
    def _cid(client_id: str) -> bytes:
        return client_id.encode("utf-8")

    def _key(self, kind: bytes, cid: bytes) -> bytes:
        return b"%s:%s:{%s}" % (self._prefix, kind, cid)

    def _session_keys(self, cid: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        return (self._key(b"session", cid), self._key(b"subs", cid), self._key(b"out", cid),
                self._key(b"qos2", cid))

    def _link(self, cid: bytes) -> _Link:
        links = self._links
        return links[zlib.crc32(cid) % len(links)] if len(links) > 1 else links[0]

    def _script(self, link: _Link, name: str, keys: tuple[bytes, ...],
                args: tuple[Any, ...] | list[Any]) -> Deferred[Any]:
        return link.call(("EVALSHA", _SHAS[name], len(keys), *keys, *args))

    def _guarded(self, cid: bytes, kind: bytes, *command: Any) -> Deferred[None]:
        d = self._script(self._link(cid), "guarded",
                         (self._key(b"session", cid), self._key(kind, cid)), command)
        d.addCallback(_none)
        return d

    def _plain(self, cid: bytes, *command: Any) -> Deferred[None]:
        d = self._link(cid).call(command)
        d.addCallback(_none)
        return d

    # --- sessions ----------------------------------------------------------------------

    def loadSession(self, clientId: str) -> Deferred[StoredSession | None]:
        cid = self._cid(clientId)
        d = self._script(self._link(cid), "load", self._session_keys(cid), ())
        d.addCallback(lambda data: decode_session(clientId, data) if data else None)
        return d

    def saveSession(self, state: Any) -> Deferred[None]:
        cid = self._cid(state.clientId)
        fields = _session_fields(state)
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
        d = self._script(self._link(cid), "save",
                         (*self._session_keys(cid), self._sessions_key), args)
        d.addCallback(_none)
        return d

    def deleteSession(self, clientId: str) -> Deferred[None]:
        cid = self._cid(clientId)
        d = self._script(self._link(cid), "delete",
                         (*self._session_keys(cid), self._sessions_key), (cid,))
        d.addCallback(_none)
        return d

    def listSessions(self) -> Deferred[list[str]]:
        d = self._script(self._links[0], "list", (self._sessions_key,), ())
        d.addCallback(lambda data: [c.decode("utf-8") for c in msgpack.unpackb(data, raw=True)])
        return d

    def addSubscription(self, clientId: str, topicFilter: str, options: Any) -> Deferred[None]:
        cid = self._cid(clientId)
        return self._guarded(cid, b"subs", b"HSET", topicFilter.encode("utf-8"),
                             encode_options(options))

    def removeSubscription(self, clientId: str, topicFilter: str) -> Deferred[None]:
        cid = self._cid(clientId)
        return self._plain(cid, b"HDEL", self._key(b"subs", cid), topicFilter.encode("utf-8"))

    def storeOutbound(self, clientId: str, outbound: Any) -> Deferred[None]:
        cid = self._cid(clientId)
        message = outbound.message
        # A message fanned out to many sessions is serialized once: the broker stores
        # its copies one after the other.
        if message is not self._last_message:
            self._last_message = message
            self._last_blob = encode_message(message)
        return self._guarded(cid, b"out", b"HSET", str(outbound.seq).encode(),
                             encode_outbound(outbound, self._last_blob))

    def removeOutbound(self, clientId: str, seq: int) -> Deferred[None]:
        cid = self._cid(clientId)
        return self._plain(cid, b"HDEL", self._key(b"out", cid), str(seq).encode())

    def addInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        cid = self._cid(clientId)
        return self._guarded(cid, b"qos2", b"SADD", str(packetId).encode())

    def removeInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        cid = self._cid(clientId)
        return self._plain(cid, b"SREM", self._key(b"qos2", cid), str(packetId).encode())

    # --- retained ------------------------------------------------------------------------
    # All on the first link, so that they are applied in the order the broker made them.

    def setRetained(self, message: Message) -> Deferred[None]:
        if not message.payload:
            return self.deleteRetained(message.topic)
        d = self._script(self._links[0], "set_retained", (self._retained_key,),
                         (self._trie_prefix, message.topic.encode("utf-8"),
                          encode_message(message)))
        d.addCallback(_none)
        return d

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        d = self._links[0].call((b"HGET", self._retained_key, topic.encode("utf-8")))
        d.addCallback(lambda data: decode_message(data) if data else None)
        return d

    def deleteRetained(self, topic: str) -> Deferred[None]:
        d = self._script(self._links[0], "delete_retained", (self._retained_key,),
                         (self._trie_prefix, topic.encode("utf-8")))
        d.addCallback(_none)
        return d

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        d = self._script(self._links[0], "match_retained", (self._retained_key,),
                         (self._trie_prefix, topicFilter.encode("utf-8")))
        d.addCallback(lambda data: [decode_message(m) for m in msgpack.unpackb(data, raw=True)])
        return d

    def countRetained(self) -> Deferred[int]:
        return self._links[0].call((b"HLEN", self._retained_key))

    # --- locks ------------------------------------------------------------------------------

    def acquireLock(self, clientId: str, timeout: float) -> Deferred[ILock]:
        """SET NX PX with a random token, retried until ``timeout``; local waiters queue
        in order first, so only one of them polls Redis at a time."""
        reactor = self.reactor
        deadline = reactor.seconds() + timeout
        local = self._locks.get(clientId)
        if local is None:
            local = self._locks[clientId] = DeferredLock()
        waiting = local.acquire()
        if not waiting.called:
            call = reactor.callLater(timeout, waiting.cancel)
            waiting.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        result: Deferred[ILock] = Deferred()

        def locally_held(_: Any) -> None:
            self._redis_lock(clientId, local, deadline, 0.005, result)

        def timed_out(failure: Failure) -> None:
            result.errback(StorageError(f"lock for {clientId!r} not acquired in {timeout}s"))

        waiting.addCallbacks(locally_held, timed_out)
        return result

    def _redis_lock(self, client_id: str, local: DeferredLock, deadline: float, delay: float,
                    result: Deferred[ILock]) -> None:
        cid = self._cid(client_id)
        token = os.urandom(16).hex().encode()
        lease = str(int(self.options.lock_lease * 1000)).encode()
        d = self._link(cid).call((b"SET", self._key(b"lock", cid), token, b"NX", b"PX", lease))

        def answered(reply: Any) -> None:
            if reply is not None:
                result.callback(_RedisLock(self, client_id, token, local))
                return
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:  # another node holds it
                self._release_local(client_id, local)
                result.errback(StorageError(f"lock for {client_id!r} held elsewhere"))
                return
            self.reactor.callLater(min(delay, remaining), self._redis_lock, client_id, local,
                                   deadline, min(delay * 2, 0.1), result)

        def failed(failure: Failure) -> None:
            self._release_local(client_id, local)
            result.errback(failure)

        d.addCallbacks(answered, failed)

    def _release_local(self, client_id: str, local: DeferredLock) -> None:
        local.release()
        if not local.locked and not local.waiting and self._locks.get(client_id) is local:
            del self._locks[client_id]


def _none(_: Any) -> None:
    return None
