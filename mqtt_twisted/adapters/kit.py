"""The adapter kit: what every adapter needs and used to write for itself.

- :class:`ConnectionLimit` counts a listener's open connections and refuses beyond
  ``maxConnections``, with one log line naming the listener and the broker's
  ``connections_refused`` counted; each adapter keeps the refusal its protocol allows
  (a closed socket for MQTT, 503 before a WebSocket handshake).
- :class:`ConnectionRate` (inside ``ConnectionLimit.admit``) refuses a source address
  that opens more than the listener's ``maxConnectionRate`` connections a second
  (loopback exempt).
- :func:`origin_of` says where a client comes from (:class:`Origin`: peer text, TLS
  certificate identity, adapter, listener), for the broker and the authenticator.
- :func:`check_listener` checks a listener while the command line is parsed: the
  endpoint as the adapter declares it (stream by default, ``udp:`` for datagram
  adapters, or the adapter's own ``checkEndpoint``), then its ``checkListener``.
- :func:`access_log` is the HTTP access log of the ``http=``, ``ws=`` and ``auto=``
  sites: one debug line per request (twisted.web's default is an info line each).
- :func:`parse_udp` and :class:`DatagramListener` serve a datagram adapter's
  ``udp:PORT[:interface=HOST]`` endpoint (Twisted has no ``udp:`` endpoint parser).

Typed listener keys are in :mod:`mqtt_twisted.adapters.options` (re-exported here).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted import logs
from mqtt_twisted._strings import split_colons
from mqtt_twisted.adapters.listener import check_endpoint
from mqtt_twisted.adapters.options import AdapterOption, declare, option_values
from mqtt_twisted.adapters.udpbatch import BatchedPort
from mqtt_twisted.interfaces import IReloadableListener

__all__ = ["AdapterOption", "ConnectionLimit", "access_log", "ConnectionRate", "DatagramListener", "Origin", "check_listener",
           "declare", "listener_name", "option_values", "origin_of", "parse_udp", "peer_text"]

log = Logger()
_access = Logger(namespace="mqtt_twisted.adapters.access")


def access_log(request: Any) -> None:
    """One debug line per HTTP request (a Site's ``log``), with its fields; nothing
    built at all above debug."""
    if not logs.debugging():
        return
    user_agent = request.getHeader(b"user-agent")
    _access.debug('{peer} "{method} {path}" {status} {size}', action="http_request",
                  peer=peer_text(request.getClientAddress()),
                  method=request.method.decode("ascii", "replace"),
                  path=request.uri.decode("utf-8", "replace"), status=request.code,
                  size=request.sentLength,
                  user_agent=user_agent.decode("utf-8", "replace") if user_agent else None)


def peer_text(address: Any) -> str:
    """``host:port`` of a Twisted address (a UNIX socket's has no port: ``path:``)."""
    return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"


def listener_name(listener: Any) -> str:
    """How logs name a listener: ``adapter=endpoint`` with its keys, as its service."""
    describe = getattr(listener, "describe", None)
    return describe() if describe is not None else str(getattr(listener, "endpoint", listener))


def _host(peer: Any) -> str:
    """The source address of a Twisted address or of ``host:port`` text."""
    if isinstance(peer, str):
        return peer.rpartition(":")[0] or peer
    return str(getattr(peer, "host", peer))


@functools.lru_cache(maxsize=1024)
def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (remembered: ``ipaddress`` parses each
    time, and this is asked for every new connection)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ConnectionRate:
    """New connections a second per source address: a token bucket per address with a
    burst of one second's worth.  Loopback is exempt: a process on the broker's own host
    can do worse than open sockets, and local bridges, health checks, tests and the
    benchmark (16 127.0.0.x sources) connect from there at high rates."""

    __slots__ = ("rate", "now", "buckets")

    #: Addresses remembered at most; past it, the ones whose bucket is full again go.
    MAX_TRACKED = 10_000

    def __init__(self, rate: float, clock: Any = None) -> None:
        self.rate = rate
        self.now = clock.seconds if clock is not None else time.monotonic
        self.buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, as of)

    def allows(self, host: str) -> bool:
        """Take one connection for ``host``; False when it is over the rate."""
        rate = self.rate
        if not rate or _loopback(host):
            return True
        now = self.now()
        tokens, since = self.buckets.get(host, (rate, now))
        tokens = min(rate, tokens + (now - since) * rate)
        if tokens < 1:
            self.buckets[host] = (tokens, now)
            return False
        if len(self.buckets) >= self.MAX_TRACKED and host not in self.buckets:
            self._forget_idle(now)
        self.buckets[host] = (tokens - 1, now)
        return True

    def _forget_idle(self, now: float) -> None:
        rate = self.rate
        self.buckets = {h: (t, s) for h, (t, s) in self.buckets.items()
                        if t + (now - s) * rate < rate}
        if len(self.buckets) >= self.MAX_TRACKED:  # all busy: an attack from many sources
            self.buckets.clear()


class ConnectionLimit:
    """A listener's open connections, at most its ``maxConnections`` (0: no limit), and
    new ones at most ``maxConnectionRate`` a second per source address (0: no limit).

    ``admit`` before serving a connection, ``release`` once it is gone; ``full`` and
    ``refuse`` for an adapter that answers a refusal itself (HTTP 503) before it admits.
    """

    __slots__ = ("broker", "listener", "active", "refused", "rate", "rate_refused",
                 "__weakref__")

    def __init__(self, broker: Any, listener: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.active = 0
        #: Refusals, all of them, and those for the rate (the metrics read both).
        self.refused = 0
        self.rate_refused = 0
        rate = getattr(listener, "maxConnectionRate", 0)
        self.rate = ConnectionRate(rate) if rate else None
        limits = getattr(broker, "listener_limits", None)  # the gateway's, for metrics
        if limits is not None:
            limits.add(self)

    def full(self) -> bool:
        limit = self.listener.maxConnections
        return bool(limit) and self.active >= limit

    def admit(self, peer: Any, what: str = "a connection", rate: bool = True) -> bool:
        """Count one more connection, or refuse it (False) at the limit or, unless
        ``rate`` is False (an adapter that checked it at accept), over the rate."""
        if self.full():
            self.refuse(peer, what)
            return False
        if rate and not self.within_rate(peer, what):
            return False
        self.active += 1
        return True

    def admit_address(self, host: str, port: Any) -> bool:
        """``admit`` for an accepted ``(host, port)``, in one call while the listener is
        under its limit and the rate does not apply (none set, or a loopback client):
        the usual accept makes no peer text and no further calls."""
        maximum = self.listener.maxConnections
        if (maximum and self.active >= maximum) or (self.rate is not None
                                                    and not _loopback(host)):
            return self.admit(f"{host}:{port}")
        self.active += 1
        return True

    def within_rate(self, peer: Any, what: str = "a connection") -> bool:
        """Take one new connection from ``peer``'s address; False (counted, logged) when
        it is over ``maxConnectionRate``.  An adapter that admits a connection only
        later (WebSocket, after its upgrade) calls this at TCP accept."""
        if self.rate is None or self.rate.allows(_host(peer)):
            return True
        self.refused += 1
        self.rate_refused += 1
        self._count_refusal("connection_rate")
        log.warn("Refusing {what} from {peer}: more than {rate} new connections a "
                 "second from that address on {listener}", what=what,
                 peer=peer if isinstance(peer, str) else peer_text(peer),
                 rate=self.rate.rate, listener=listener_name(self.listener))
        return False

    def release(self) -> None:
        """An admitted connection ended."""
        self.active -= 1

    def refuse(self, peer: Any, what: str = "a connection") -> None:
        """Count and log a refusal; the caller closes or answers the connection."""
        self.refused += 1
        self._count_refusal("listener_full")
        log.warn("Refusing {what} from {peer}: {limit} connections held on {listener}",
                 what=what, peer=peer if isinstance(peer, str) else peer_text(peer),
                 limit=self.listener.maxConnections, listener=listener_name(self.listener))

    def _count_refusal(self, why: str) -> None:
        counted = getattr(self.broker, "connectionRefused", None)  # the gateway's counter
        if counted is not None:
            counted(why)
        else:
            self.broker.stats.connection_refused(why)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a client comes from, as the broker and the authenticator see it."""

    peer: str
    certificateIdentity: str | None
    adapter: str
    listener: Any

    def username(self, given: str | None) -> str | None:
        """The user name to authenticate: the certificate identity on a listener with
        ``identityAsUsername=yes`` (Mosquitto's use_identity_as_username), else ``given``."""
        if self.certificateIdentity is not None and getattr(self.listener,
                                                            "identityAsUsername", False):
            return self.certificateIdentity
        return given


def origin_of(transport: Any, listener: Any, adapter: str | None = None) -> Origin:
    """The :class:`Origin` of a client on ``transport`` (after any TLS handshake: the
    certificate is read then, by the listener's ``certIdentity=`` field, CN by default)."""
    identity = None
    if ISSLTransport.providedBy(transport):
        from mqtt_twisted.adapters import tls

        extra = getattr(listener, "extra", None) or {}
        identity = tls.certificate_identity(transport, extra.get("certIdentity", "cn"))
    # The lean TCP transport's own text, without an address object; asked of the class,
    # so that a wrapper (PROXY protocol, TLS) that passes attributes on is not taken
    # for it: its getPeer may say another address.
    text = getattr(type(transport), "peer_text", None)
    return Origin(text(transport) if text is not None else peer_text(transport.getPeer()),
                  identity,
                  adapter or getattr(listener, "adapter", "mqtt"), listener)


# --- checking a listener at start-up ---------------------------------------------------------


def check_listener(adapter: Any, settings: Any) -> None:
    """Raise ValueError for a listener ``adapter`` cannot serve: its endpoint (the adapter's
    ``checkEndpoint``; else ``udp:`` for a ``datagram`` adapter; else a Twisted stream
    endpoint, TLS files read), then the adapter's own ``checkListener``."""
    check = getattr(adapter, "checkEndpoint", None)
    if check is not None:
        check(settings)
    elif getattr(adapter, "datagram", False):
        parse_udp(settings.endpoint)
    else:
        check_endpoint(settings.endpoint)
    check = getattr(adapter, "checkListener", None)
    if check is not None:
        check(settings)


# --- datagram listeners ----------------------------------------------------------------------


def parse_udp(description: str) -> tuple[int, str]:
    """``udp:PORT[:interface=HOST]`` (``port=`` as a key too) as ``(port, interface)``."""
    parts = split_colons(description, keep_escapes=False)
    if parts[0] != "udp":
        raise ValueError(f"bad endpoint {description!r}: this adapter takes udp:PORT"
                         f"[:interface=HOST] endpoints")
    port, interface = None, ""
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq or key == "port":
            if port is not None:
                raise ValueError(f"bad endpoint {description!r}: the port is given twice "
                                 "(escape an IPv6 address's colons: interface=\\:\\:1)")
            port = value if eq else part
        elif key == "interface":
            interface = value
        else:
            raise ValueError(f"bad endpoint {description!r}: unknown udp: key {key!r}")
    try:
        number = int(port) if port is not None else -1
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"bad endpoint {description!r}: the port must be 0..65535")
    return number, interface


#: Bytes of datagrams a UDP listener reads per reactor turn.  Twisted's default, 256
#: KiB, is some 8,000 small CoAP datagrams when one address floods the port: hundreds
#: of milliseconds in which no MQTT client is served.  8 KiB is at most ~250 of
#: them, or 7 full 1,152-byte ones (what the kernel holds meanwhile waits a turn):
#: tests/test_coap_flood.py measured an MQTT bystander's p99 round trip at 200 ms
#: with 16 KiB and no cheap refusal, 7-33 ms with 8 KiB and the refusal before decoding.
DATAGRAM_BYTES_PER_TURN = 8 * 1024


@implementer(IReloadableListener)
class DatagramListener(Service):
    """A datagram adapter's listener: ``protocol`` on a UDP port while it runs."""

    def __init__(self, reactor: Any, description: str, protocol: Any,
                 stats: Any = None) -> None:
        self.reactor = reactor
        self.address = parse_udp(description)
        self.protocol = protocol
        #: The broker's counters (``Gateway.stats``): the datagrams the port drops.
        self.stats = stats
        self.port: Any = None
        self._waiters: list[Deferred[Any]] = []

    def privilegedStartService(self) -> None:
        """Bind before privileges are shed (port 5683 needs none, 683 would); a port in
        use fails start-up loudly, as a stream listener does."""
        port, interface = self.address
        if isinstance(self.reactor, PosixReactorBase):  # (a test's fake reactor: its own)
            self.port = BatchedPort(port, self.protocol, interface, reactor=self.reactor)
            self.port.stats = self.stats
            self.port.startListening()
        else:
            self.port = self.reactor.listenUDP(port, self.protocol, interface=interface)
        if hasattr(self.port, "maxThroughput"):
            self.port.maxThroughput = DATAGRAM_BYTES_PER_TURN
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.port)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def whenListening(self) -> Deferred[Any]:
        """Fires with the listening port (``getHost().port`` for ``udp:0``)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[Any] = Deferred()
        self._waiters.append(d)
        return d

    def reload(self) -> None:
        """Nothing to re-read (no TLS on a datagram listener of the kit)."""
        return None
