"""Redis behind Sentinel: ask the sentinels where the master is, follow it when it moves.

Selected with ``--store redis+sentinel://[[user]:password@]host[:port][,host[:port]...]
/SERVICE[/db][?options]`` (the form of the Redis-Sentinel-Url package that redisvl and
Prefect also read: the sentinels, comma-separated, port 26379 by default; the master's
service name; the database).  The user and password are the master's, as in
``redis://``; ``?sentinel_username=&sentinel_password=`` are the sentinels' own.
``rediss+sentinel://`` talks TLS to the sentinels and to the master they name (Redis's
``tls-port`` on both), verified against ``?ca=FILE`` (default: the system's CAs), with
a client certificate from ``?cert=&key=`` when they ask for one: the options of
``rediss://``, for every connection.

The seam is one Twisted client endpoint, :class:`SentinelEndpoint`, which both the
store's connections (txredisapi) and the cluster's (``cluster/client.py``) reconnect
through: before every connection attempt it asks the sentinels in turn
(``SENTINEL get-master-addr-by-name``) and connects to the answer.  Connections to a
master that is not one any more are dropped, so that they reconnect to the new one:

* a watch connection to one sentinel at a time, subscribed to ``+switch-master``
  (and asking the address on every reconnection, for a switch it missed), drops every
  connection the endpoint made to another address as soon as the sentinels switch;
* a connection that gets ``-READONLY`` (a demoted master: a write refused) is dropped
  by its client (``_redislink.Link`` and ``cluster.client.RedisProtocol``), the
  safety net when the watch is late or cut off.

The watch runs while someone holds the endpoint (``hold``/``release``: the store and the
cluster node, from their start to their stop).  Writes a master acknowledged and had
not yet sent to the replica that replaces it are lost: Redis replication is
asynchronous (docs/stores.md, "Redis Sentinel").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.cluster import resp
from mqtt_twisted.cluster.resp import Parser, ReplyError, RespProtocolError
from mqtt_twisted.errors import StorageError

log = Logger()

SCHEME = "redis+sentinel"
TLS_SCHEME = "rediss+sentinel"
#: The URL options that only a TLS URL takes.
_TLS_ONLY = ("ca", "cert", "key")
DEFAULT_PORT = 26379
#: The pub/sub channel on which a sentinel announces a new master:
#: ``"<service> <old ip> <old port> <new ip> <new port>"``.
SWITCH_MASTER = b"+switch-master"


def parse_sentinels(netloc: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """``user:password@host:port,host2`` -> (user, password, [(host, port), ...])."""
    user = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        name, colon, secret = auth.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for member in netloc.split(","):
        member = member.strip()
        if not member:
            raise ValueError("an empty sentinel address in the Redis Sentinel URL")
        if member.startswith("["):  # [::1]:26379
            host, bracket, rest = member[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"bad sentinel address {member!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = member.partition(":")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"bad sentinel port in {member!r}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad sentinel address {member!r}")
        sentinels.append((host, port))
    return user, password, sentinels


def parse_sentinel_url(url: str, options: Any, query: dict[str, type]) -> Any:
    """Fill ``options`` (RedisOptions) from a ``redis+sentinel://`` URL; ValueError if bad.
    ``query`` is the Redis URL's own options, which apply here too."""
    tls = url.startswith(TLS_SCHEME + "://")
    rest = url[len(TLS_SCHEME if tls else SCHEME) + 3:]
    netloc, _, path = rest.partition("/")
    path, _, query_text = path.partition("?")
    options.username, options.password, options.sentinels = parse_sentinels(netloc)
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"a Redis Sentinel URL names the master's service: "
                         f"redis+sentinel://HOST:26379,.../mymaster/0, not {url!r}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"a Redis Sentinel URL's path is /SERVICE[/DB], not /{path}")
    options.service = unquote(parts[0])
    options.db = int(parts[1]) if len(parts) == 2 else 0
    kinds = {**query, "sentinel_username": str, "sentinel_password": str}
    for name, value in parse_qsl(query_text, keep_blank_values=True):
        kind = kinds.get(name)
        if kind is None or (name in _TLS_ONLY and not tls):
            known = ", ".join(sorted(k for k in kinds if tls or k not in _TLS_ONLY))
            hint = " (ca, cert and key need rediss+sentinel://)" if name in _TLS_ONLY else ""
            raise ValueError(f"unknown Redis Sentinel URL option {name!r}{hint} "
                             f"(known: {known})")
        try:
            setattr(options, name, kind(value))
        except ValueError:
            raise ValueError(f"bad value for Redis URL option {name}: {value!r}") from None
    return options


# --- asking a sentinel ------------------------------------------------------------------


class _Ask(Protocol):
    """One short connection to a sentinel: commands out, the last reply back."""

    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands
        self.parser = Parser()
        self.replies: list[Any] = []
        self.answer: Deferred[Any] = Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(resp.encode_commands(self.commands))

    def dataReceived(self, data: bytes) -> None:
        try:
            self.replies += self.parser.feed(data)
        except RespProtocolError as e:
            self._done(e)
            return
        if len(self.replies) >= len(self.commands):
            errors = [r for r in self.replies if isinstance(r, ReplyError)]
            self._done(errors[0] if errors else self.replies[-1])

    def _done(self, result: Any) -> None:
        self.transport.loseConnection()
        if not self.answer.called:
            if isinstance(result, Exception):
                self.answer.errback(result)
            else:
                self.answer.callback(result)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.errback(StorageError("the sentinel closed the connection"))


class _OneShot(Factory):
    """connectProtocol's factory without its two log lines per connection."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_


def _auth(username: str | None, password: str | None) -> list[tuple[Any, ...]]:
    if password is None:
        return []
    return [(b"AUTH", username, password) if username else (b"AUTH", password)]


def _address(reply: Any) -> tuple[str, int] | None:
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    return reply[0].decode("ascii"), int(reply[1])


# --- the endpoint --------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master the sentinels name now (see the module docstring)."""

    def __init__(self, reactor: Any, options: Any) -> None:
        self.reactor = reactor
        self.options = options
        #: The sentinels, the last one that answered first (as redis-py orders them).
        self.sentinels = list(options.sentinels)
        self.service = options.service.encode("utf-8")
        #: The master's address as last learned, and the connections made to it.
        self.master: tuple[str, int] | None = None
        self._made: list[tuple[tuple[str, int], Any]] = []
        self._holders = 0
        self._watch: Any = None
        self._sentinel_turn = 0

    def __repr__(self) -> str:
        return f"<SentinelEndpoint {self.options.service} via {self.sentinels}>"

    # --- IStreamClientEndpoint ---

    def connect(self, protocolFactory: Factory) -> Deferred[Any]:
        d = self.locate()
        d.addCallback(self._connect, protocolFactory)
        return d

    @inlineCallbacks
    def _connect(self, address: tuple[str, int], factory: Factory) -> Any:
        from mqtt_twisted.store._redislink import plain_endpoint

        protocol = yield plain_endpoint(self.reactor, self.options, *address).connect(factory)
        self._made = [(a, p) for a, p in self._made if _alive(p)]
        self._made.append((address, protocol))
        return protocol

    # --- where the master is ---

    @inlineCallbacks
    def locate(self) -> Any:
        """The master's (host, port), from the first sentinel that knows it; fails with
        StorageError when none does."""
        from mqtt_twisted.store._redislink import plain_endpoint

        o = self.options
        asks = [*_auth(o.sentinel_username, o.sentinel_password),
                (b"SENTINEL", b"get-master-addr-by-name", self.service)]
        errors = []
        for sentinel in list(self.sentinels):
            host, port = sentinel
            ask = _Ask(asks)
            try:
                to = plain_endpoint(self.reactor, o, host, port,
                                    timeout=min(2.0, o.connect_timeout))
                yield to.connect(_OneShot(ask))
                ask.answer.addTimeout(min(2.0, o.timeout), self.reactor)
                reply = yield ask.answer
            except Exception as e:  # the next sentinel may know
                errors.append(f"{host}:{port}: {e}")
                continue
            address = _address(reply)
            if address is None:
                errors.append(f"{host}:{port}: no master named {o.service}")
                continue
            if self.sentinels[0] != sentinel:  # ask this one first next time
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
            self.learned(address)
            return address
        raise StorageError(f"no sentinel named the master of {o.service}: "
                           + "; ".join(errors))

    def learned(self, address: tuple[str, int]) -> None:
        """The master is at ``address`` now: drop connections made to any other."""
        if address == self.master:
            return
        if self.master is not None:
            log.info("Redis Sentinel: master {service} moved from {old} to {new}",
                     service=self.options.service, old=_show(self.master),
                     new=_show(address))
        self.master = address
        stale = [p for a, p in self._made if a != address and _alive(p)]
        self._made = [(a, p) for a, p in self._made if a == address and _alive(p)]
        for protocol in stale:
            protocol.transport.abortConnection()

    # --- the +switch-master watch ---

    def hold(self) -> None:
        """A user (the store, a cluster node) starts: watch for switches."""
        self._holders += 1
        if self._holders == 1:
            self._start_watch()

    def release(self) -> Deferred[Any]:
        """A user stops; the last one stops the watch."""
        self._holders = max(0, self._holders - 1)
        watch, self._watch = (self._watch, None) if self._holders <= 0 else (None, None)
        if watch is None:
            d: Deferred[Any] = Deferred()
            d.callback(None)
            return d
        return watch.stop()  # type: ignore[no-any-return]

    def _start_watch(self) -> None:
        from mqtt_twisted.cluster.client import RedisClient

        self._watch = RedisClient(self.reactor, _RotatingEndpoint(self), timeout=5.0,
                                  on_connect=self._watching, on_push=self._switched,
                                  name=f"sentinel watch of {self.options.service}")
        self._watch.start()

    def _watching(self, client: Any) -> None:
        o = self.options
        for command in _auth(o.sentinel_username, o.sentinel_password):
            client.command(*command).addErrback(_quiet)
        d = client.command(b"SENTINEL", b"get-master-addr-by-name", self.service)
        d.addCallback(lambda reply: _address(reply) and self.learned(_address(reply)))
        d.addErrback(_quiet)
        client.command(b"SUBSCRIBE", SWITCH_MASTER).addErrback(_quiet)

    def _switched(self, push: list[Any]) -> None:
        if push[1] != SWITCH_MASTER:
            return
        fields = push[2].split()
        if len(fields) == 5 and fields[0] == self.service:
            self.learned((fields[3].decode("ascii"), int(fields[4])))


@implementer(IStreamClientEndpoint)
class _RotatingEndpoint:
    """The sentinels in turn: each (re)connection of the watch tries the next one."""

    def __init__(self, owner: SentinelEndpoint) -> None:
        self.owner = owner

    def connect(self, protocolFactory: Factory) -> Deferred[Any]:
        from mqtt_twisted.store._redislink import plain_endpoint

        owner = self.owner
        host, port = owner.sentinels[owner._sentinel_turn % len(owner.sentinels)]
        owner._sentinel_turn += 1
        return plain_endpoint(owner.reactor, owner.options, host, port,  # type: ignore[no-any-return]
                              timeout=2.0).connect(protocolFactory)


def _alive(protocol: Any) -> bool:
    transport = getattr(protocol, "transport", None)
    return transport is not None and bool(getattr(transport, "connected", True)) and not (
        getattr(transport, "disconnected", False))


def _show(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _quiet(failure: Any) -> None:
    """The watch is an accelerator: its failures are its connection's, retried."""
    return None
