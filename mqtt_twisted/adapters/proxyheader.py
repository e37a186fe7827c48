"""The PROXY protocol (HAProxy's header, v1 and v2) in front of any stream listener.

``--listen haproxy:tcp:1883`` serves clients that reach the broker through HAProxy,
an AWS/GCP load balancer or nginx's ``proxy_protocol``: each connection starts with a
header that names the client.  Twisted's own ``haproxy:`` wrapper builds the wrapped
protocol at accept and reads the header afterwards, so whatever the listener decides
at accept (the per-address ``maxConnectionRate``, the connection's peer in the logs
and the authenticator's ``Origin``) is about the proxy, not the client; and it drops a
connection whose first read is shorter than the header's signature.

Here the wrapped factory is asked for a protocol only once the whole header is in (in
as many reads as it takes, within the listener's ``connectTimeout``), with the
client's address; a connection without a valid header is closed unserved.  The
header is parsed here (``parse_header``, sans-IO): Twisted's parsers are private.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from mqtt_twisted.adapters.kit import peer_text

__all__ = ["PREFIX", "ProxyHeader", "ProxyHeaderEndpoint", "ProxyHeaderFactory",
           "ProxyHeaderReader", "parse_header", "split_proxied"]

#: The endpoint prefix that asks for a PROXY header (Twisted's name for it).
PREFIX = "haproxy:"

#: Version 1 starts with this; its line is at most 107 bytes with its CRLF.
V1_SIGNATURE = b"PROXY "
V1_LONGEST = 107
#: Version 2's 12-byte signature; with the version/command, family and length: 16.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Address block sizes of version 2's families (TCP/UDP over IPv4, IPv6).
_V2_ADDRESSES = {0x1: (4, IPv4Address), 0x2: (16, IPv6Address)}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header says: the client (``source``) and the address it reached, or
    None for both (v1 ``UNKNOWN``, v2 ``LOCAL`` or an unspecified family)."""

    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None


def parse_header(data: bytes) -> tuple[ProxyHeader | None, int]:
    """The header at the start of ``data`` and its length in bytes; ``(None, 0)`` while
    it is not all there.  ValueError when ``data`` cannot start a valid header."""
    if not data:
        return None, 0
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ValueError("no PROXY header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader | None, int]:
    end = data.find(b"\r\n", 0, V1_LONGEST)
    if end < 0:
        if len(data) >= V1_LONGEST or not (V1_SIGNATURE.startswith(data[:6])
                                           or data.startswith(V1_SIGNATURE)):
            raise ValueError("not a PROXY v1 header")
        return None, 0
    words = data[:end].split(b" ")
    if words[0] != b"PROXY" or len(words) < 2:
        raise ValueError("not a PROXY v1 header")
    if words[1] == b"UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if words[1] not in (b"TCP4", b"TCP6") or len(words) != 6:
        raise ValueError("a PROXY v1 header without TCP4/TCP6 and four fields")
    kind = IPv4Address if words[1] == b"TCP4" else IPv6Address
    version = 4 if kind is IPv4Address else 6
    try:
        hosts = [ipaddress.ip_address(w.decode("ascii")) for w in words[2:4]]
        ports = [int(w) for w in words[4:6]]
    except ValueError:
        raise ValueError("a PROXY v1 header with a bad address or port") from None
    if any(h.version != version for h in hosts) or not all(0 <= p <= 65535 for p in ports):
        raise ValueError("a PROXY v1 header with a bad address or port")
    return ProxyHeader(kind("TCP", str(hosts[0]), ports[0]),
                       kind("TCP", str(hosts[1]), ports[1])), end + 2


def _parse_v2(data: bytes) -> tuple[ProxyHeader | None, int]:
    if not V2_SIGNATURE.startswith(data[:12]):
        raise ValueError("not a PROXY v2 header")
    if len(data) < 16:
        return None, 0
    version_command, family, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if version_command >> 4 != 2 or version_command & 0xF > 1:
        raise ValueError("a PROXY v2 header of an unknown version or command")
    size = 16 + length
    if len(data) < size:
        return None, 0
    known = _V2_ADDRESSES.get(family >> 4)
    if version_command & 0xF == 0 or known is None or family & 0xF not in (1, 2):
        return ProxyHeader(None, None), size  # LOCAL, UNSPEC, UNIX: the socket's peer
    width, kind = known
    if length < 2 * width + 4:
        raise ValueError("a PROXY v2 header too short for its addresses")
    block = data[16:16 + 2 * width + 4]
    hosts = [str(ipaddress.ip_address(block[i * width:(i + 1) * width])) for i in (0, 1)]
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * width)
    protocol = "TCP" if family & 0xF == 1 else "UDP"
    return ProxyHeader(kind(protocol, hosts[0], source_port),
                       kind(protocol, hosts[1], destination_port)), size

log = Logger(namespace="mqtt_twisted.proxyheader")


def split_proxied(description: str) -> tuple[bool, str]:
    """Whether ``description`` asks for a PROXY header, and the endpoint behind it."""
    if description.startswith(PREFIX):
        return True, description[len(PREFIX):]
    return False, description


class ProxyHeaderReader(ProtocolWrapper):
    """Reads the header, then builds and connects the wrapped protocol (its transport
    is this wrapper, whose ``getPeer``/``getHost`` are the header's addresses)."""

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any = None) -> None:
        super().__init__(factory, wrappedProtocol)
        self._head = b""  # the header's bytes so far
        self._info: ProxyHeader | None = None
        self._deadline: Any = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper's, but with nothing to connect yet.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        timeout = self.factory.timeout
        if timeout:
            self._deadline = self.factory.clock.callLater(timeout, self._too_late)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.disconnecting:
            return
        head = self._head = self._head + data
        try:
            info, size = parse_header(head)
        except ValueError as e:
            self._refuse(str(e))
            return
        if info is not None:
            self._head = b""
            self._serve(info, head[size:])

    def _serve(self, info: ProxyHeader, rest: bytes) -> None:
        self._cancel()
        self._info = info
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:  # refused (a listener's limit): it counted and logged
            self.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, what: str) -> None:
        self._cancel()
        log.info("Closing a connection from {peer}: {what}",
                 peer=peer_text(self.transport.getPeer()), what=what)
        self.loseConnection()

    def _too_late(self) -> None:
        self._deadline = None
        log.info("No whole PROXY header from {peer} in time; closing",
                 peer=peer_text(self.transport.getPeer()))
        self.disconnecting = 1
        self.transport.abortConnection()

    def _cancel(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def getPeer(self) -> Any:
        info = self._info
        if info is not None and info.source is not None:
            return info.source
        return self.transport.getPeer()

    def getHost(self) -> Any:
        info = self._info
        if info is not None and info.destination is not None:
            return info.destination
        return self.transport.getHost()

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "PROXY header"
        return super().logPrefix()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel()
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class ProxyHeaderFactory(WrappingFactory):
    """Wraps a listener's factory: its protocols are built after the header."""

    protocol = ProxyHeaderReader

    def __init__(self, wrappedFactory: Any, clock: Any, timeout: float) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: Any) -> ProxyHeaderReader:
        return self.protocol(self, None)

    def logPrefix(self) -> str:
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if inner is not None else self.wrappedFactory.__class__.__name__
        return f"{name} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """``endpoint`` whose connections start with a PROXY header read within ``timeout``
    seconds (0: no limit)."""

    def __init__(self, endpoint: Any, clock: Any, timeout: float) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.timeout = timeout

    def listen(self, factory: Any) -> Any:
        return self.endpoint.listen(ProxyHeaderFactory(factory, self.clock, self.timeout))
