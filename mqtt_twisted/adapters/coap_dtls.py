"""CoAP over DTLS (``coaps://``, RFC 7252 §9): ``--listen
coap=udp:5684:dtlsKey=server.key:dtlsCert=server.crt``.

A datagram shell in front of the UDP one (:class:`~mqtt_twisted.adapters.coap.CoapServer`):
each peer address gets a pyOpenSSL DTLS connection over memory BIOs; the records it
receives are decrypted and handed on as plain CoAP datagrams, and what the CoAP
server sends to that address is encrypted on the way out.  A ClientHello without
the right cookie (an HMAC of the sender's address under a secret of the listener's)
is answered with a HelloVerifyRequest and nothing is kept, so a spoofed source
cannot make the listener hold state; at most ``MAX_PEERS`` sessions are kept, the
least recently heard from dropped first.  Certificates only (no PSK yet).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

from OpenSSL import SSL
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger()

#: DTLS sessions kept at once; the least recently heard from goes first.
MAX_PEERS = 10000
#: Bytes of ciphertext per datagram (loopback and most paths carry it).
MTU = 1400


def build_context(key_path: str, cert_path: str) -> SSL.Context:
    """A DTLS server context; ValueError (one line) for files that do not work."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    try:
        ctx.use_certificate_chain_file(cert_path.encode())
        ctx.use_privatekey_file(key_path.encode())
        ctx.check_privatekey()
    except SSL.Error as e:
        raise ValueError(f"dtlsKey={key_path!r} dtlsCert={cert_path!r}: {e}") from None
    except OSError as e:
        raise ValueError(f"dtlsKey/dtlsCert: {e}") from None
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION)
    return ctx


class _Peer:
    __slots__ = ("conn", "ready", "timer")

    def __init__(self, conn: SSL.Connection) -> None:
        self.conn = conn
        self.ready = False
        self.timer: Any = None


class _EncryptingTransport:
    """What the plain CoAP server writes through: encrypted for its peer."""

    def __init__(self, dtls: DtlsServer) -> None:
        self.dtls = dtls

    def write(self, data: bytes, addr: Any) -> None:
        self.dtls.send_plain(data, addr)

    def __getattr__(self, name: str) -> Any:  # getHost() and the like
        return getattr(self.dtls.transport, name)


class DtlsServer(DatagramProtocol):
    """The DTLS layer of one listener around its plain CoAP server."""

    def __init__(self, reactor: Any, inner: DatagramProtocol, context: SSL.Context) -> None:
        self.reactor = reactor
        self.inner = inner
        self.context = context
        self.secret = os.urandom(32)
        context.set_cookie_generate_callback(self._cookie)
        context.set_cookie_verify_callback(
            lambda conn, cookie: hmac.compare_digest(cookie, self._cookie(conn)))
        self.peers: OrderedDict[Any, _Peer] = OrderedDict()

    def _cookie(self, conn: SSL.Connection) -> bytes:
        host, port = conn.get_app_data()[:2]
        return hmac.new(self.secret, f"{host}:{port}".encode(), hashlib.sha256).digest()[:16]

    def startProtocol(self) -> None:
        self.inner.makeConnection(_EncryptingTransport(self))  # type: ignore[arg-type]

    def stopProtocol(self) -> None:
        self.inner.doStop()
        for addr in list(self.peers):
            self._drop(addr)

    # --- records in -----------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is None:
            peer = self._hello(data, addr)
            if peer is None:
                return
        else:
            self.peers.move_to_end(addr)
            peer.conn.bio_write(data)
        try:
            if not peer.ready:
                peer.conn.do_handshake()
                peer.ready = True
                log.debug("DTLS session with {addr}", addr=addr)
            plain = []
            while True:
                try:
                    plain.append(peer.conn.recv(65536))
                except SSL.WantReadError:
                    break
        except SSL.WantReadError:
            self._flush(peer, addr)
            self._arm(peer, addr)
            return
        except SSL.ZeroReturnError:  # close_notify
            self._flush(peer, addr)
            self._drop(addr)
            return
        except SSL.Error as e:
            log.info("DTLS: dropping {addr}: {error}", addr=addr, error=e)
            self._drop(addr)
            return
        self._flush(peer, addr)
        for datagram in plain:
            self.inner.datagramReceived(datagram, addr)

    def _hello(self, data: bytes, addr: Any) -> _Peer | None:
        """A first datagram: a session once its ClientHello carries our cookie."""
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(addr)
        conn.set_accept_state()
        conn.set_ciphertext_mtu(MTU)
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:  # answered with a HelloVerifyRequest, or not a hello
            self._send_out(conn, addr)
            return None
        except SSL.Error:
            return None
        peer = self.peers[addr] = _Peer(conn)
        while len(self.peers) > MAX_PEERS:
            self._drop(next(iter(self.peers)))
        return peer

    # --- records out ------------------------------------------------------------------

    def send_plain(self, data: bytes, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is None or not peer.ready:
            return  # no session (any more): nothing can be sent to it
        try:
            peer.conn.send(data)
        except SSL.Error as e:
            log.info("DTLS: dropping {addr}: {error}", addr=addr, error=e)
            self._drop(addr)
            return
        self._flush(peer, addr)

    def _send_out(self, conn: SSL.Connection, addr: Any) -> None:
        while True:
            try:
                data = conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if self.transport is not None:
                self.transport.write(data, addr)

    def _flush(self, peer: _Peer, addr: Any) -> None:
        self._send_out(peer.conn, addr)

    def _arm(self, peer: _Peer, addr: Any) -> None:
        """Handshake flights are resent on OpenSSL's DTLS timer."""
        if peer.timer is not None and peer.timer.active():
            peer.timer.cancel()
        timeout = peer.conn.DTLSv1_get_timeout()
        if timeout is not None:
            peer.timer = self.reactor.callLater(timeout, self._timed_out, addr)

    def _timed_out(self, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is None or peer.ready:
            return
        peer.timer = None
        try:
            peer.conn.DTLSv1_handle_timeout()
        except SSL.Error:
            self._drop(addr)
            return
        self._flush(peer, addr)
        self._arm(peer, addr)

    def _drop(self, addr: Any) -> None:
        peer = self.peers.pop(addr, None)
        if peer is not None and peer.timer is not None and peer.timer.active():
            peer.timer.cancel()
