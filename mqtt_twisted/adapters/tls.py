"""TLS for the stream adapters (``mqtt``, ``ws``): a thin shell over pyOpenSSL.

A listener whose endpoint is ``ssl:PORT:privateKey=KEY:certKey=CERT`` is served
over plain TCP wrapped in Twisted's ``TLSMemoryBIOFactory`` with a server
context of our own (:class:`ServerTLS`), so that

- TLS 1.2 is the oldest version accepted (``tlsMinimum=1.3`` raises it), with
  forward-secret AEAD ciphers only;
- the certificate file may hold the whole chain (``fullchain.pem``), and
  ``extraCertChain=`` adds intermediates as in Twisted's own ``ssl:``;
- client certificates are asked for (``clientCerts=optional``) or required
  (``clientCerts=required``), checked against ``caCerts=FILE``;
- the client certificate's identity (``certIdentity=cn|dn|san-dns|san-email|
  san-uri|sha256``) is offered to the authenticator;
- :meth:`ServerTLS.reload` re-reads the files (the broker calls it on SIGHUP):
  new connections get the new certificate, open ones carry on with theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mqtt_twisted.adapters._accepts import cap_accepts
from mqtt_twisted.adapters.listener import _split_unescaped
from mqtt_twisted.adapters.options import AdapterOption, choice, declare, option_values, yes_no
from mqtt_twisted.adapters.proxyheader import ProxyHeaderEndpoint, split_proxied
from mqtt_twisted.adapters.reuseport import stream_reactor
from mqtt_twisted.interfaces import IReloadableListener

CLIENT_CERT_MODES = ("none", "optional", "required")
IDENTITY_FIELDS = ("cn", "dn", "san-dns", "san-email", "san-uri", "sha256")

#: The listener keys of ours that configure TLS (add them to a stream adapter's ``options``).
TLS_OPTIONS = declare(
    AdapterOption("caCerts", str, None,
                  "PEM file of the CAs whose client certificates are accepted (ssl: "
                  "endpoints)", "FILE"),
    AdapterOption("clientCerts", choice(*CLIENT_CERT_MODES), None,
                  "ask TLS clients for a certificate (default: required when caCerts is "
                  "given, otherwise none)"),
    AdapterOption("certIdentity", choice(*IDENTITY_FIELDS), "cn",
                  "client certificate field offered to --auth"),
    AdapterOption("identityAsUsername", yes_no, False,
                  "yes: the client certificate's identity replaces the CONNECT user name"),
    AdapterOption("tlsMinimum", choice("1.2", "1.3"), "1.2", "oldest TLS version accepted"),
)
_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 has its own).
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
# Keys of Twisted's ssl: endpoint that we read ourselves, and the ones kept for tcp:.
_FILE_KEYS = ("privateKey", "certKey", "extraCertChain", "dhParameters")
_TCP_KEYS = ("interface", "backlog")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Where a TLS listener's files are and how it treats client certificates."""

    privateKey: str
    certKey: str
    extraCertChain: str | None = None
    dhParameters: str | None = None
    caCerts: str | None = None
    clientCerts: str = "none"
    certIdentity: str = "cn"
    tlsMinimum: str = "1.2"
    #: ALPN protocol ids the listener agrees to, ours first (CoAP over TLS: ``coap``);
    #: a client offering none of them still connects, without ALPN.
    alpn: tuple[bytes, ...] = ()


def _unescape(value: str) -> str:
    """Undo the backslash escapes of Twisted's endpoint syntax (``\\:`` is ``:``)."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def parse_tls(description: str, extra: Mapping[str, str]) -> tuple[TLSConfig | None, str]:
    """Split a listener into its TLS configuration (None for a plain endpoint) and the
    endpoint to listen on (``ssl:`` becomes ``tcp:``).  Raises ValueError."""
    ours = {key: extra[key] for key in TLS_OPTIONS if key in extra}
    parts = _split_unescaped(description)
    if parts[0] != "ssl":
        if ours:
            raise ValueError(f"{', '.join(sorted(ours))} need an ssl: endpoint, not "
                             f"{description!r}")
        return None, description
    files: dict[str, str] = {}
    tcp = ["tcp"]
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            if len(tcp) > 1:
                raise ValueError(f"unexpected {part!r} in {description!r}")
            tcp.append(part)  # the port
        elif key == "port":
            tcp.insert(1, value)
        elif key in _FILE_KEYS:
            files[key] = _unescape(value)
        elif key in _TCP_KEYS:
            tcp.append(part)
        elif key in ("caCertsDir", "sslmethod"):
            hint = "caCerts=FILE" if key == "caCertsDir" else "tlsMinimum=1.2|1.3"
            raise ValueError(f"{key}= is not supported on this listener; use {hint}")
        else:
            raise ValueError(f"unknown ssl: endpoint key {key!r} in {description!r}")
    if len(tcp) < 2:
        raise ValueError(f"{description!r} names no port")
    values = option_values(TLS_OPTIONS, ours)  # ValueError: "clientCerts='x' expected ..."
    ca_certs = values["caCerts"]
    client_certs = values["clientCerts"] or ("required" if ca_certs else "none")
    if client_certs != "none" and not ca_certs:
        raise ValueError(f"clientCerts={client_certs} needs caCerts=FILE (the CAs that sign "
                         "client certificates)")
    private_key = files.get("privateKey", "server.pem")  # Twisted's ssl: default
    config = TLSConfig(
        privateKey=private_key,
        certKey=files.get("certKey", private_key),
        extraCertChain=files.get("extraCertChain"),
        dhParameters=files.get("dhParameters"),
        caCerts=ca_certs and _unescape(ca_certs),
        clientCerts=client_certs,
        certIdentity=values["certIdentity"],
        tlsMinimum=values["tlsMinimum"],
    )
    return config, ":".join(tcp)


# --- the server context ----------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"the {what} {path!r} holds no PEM certificate")
    return certs


def _private_key(path: str) -> Any:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"the private key {path!r} is encrypted; give an unencrypted one") \
            from None
    except ValueError as e:
        raise ValueError(f"the private key {path!r} cannot be read: {e}") from None


def build_context(config: TLSConfig) -> SSL.Context:
    """A server context from the files ``config`` names; ValueError says what is wrong."""
    key = _private_key(config.privateKey)
    leaf, *chain = _certificates(config.certKey, "certificate")
    if config.extraCertChain:
        chain += _certificates(config.extraCertChain, "certificate chain")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_TLS_VERSIONS[config.tlsMinimum])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_SINGLE_DH_USE | SSL.OP_SINGLE_ECDH_USE | SSL.OP_NO_TICKET)
    ctx.set_cipher_list(_CIPHERS)
    try:
        ctx.use_certificate(leaf)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error:
        raise ValueError(f"the private key {config.privateKey!r} does not belong to the "
                         f"certificate {config.certKey!r}") from None
    for cert in chain:
        ctx.add_extra_chain_cert(cert)
    if config.dhParameters:
        _read(config.dhParameters, "DH parameters")
        ctx.load_tmp_dh(config.dhParameters.encode())
    if config.clientCerts != "none":
        assert config.caCerts is not None
        _certificates(config.caCerts, "CA certificates")  # a clear error before OpenSSL's
        ctx.load_verify_locations(config.caCerts.encode())
        ctx.load_client_ca(config.caCerts.encode())  # tell clients which CAs we accept
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if config.clientCerts == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)
    if config.alpn:
        ours = config.alpn

        def select(connection: Any, offered: list[bytes]) -> bytes:
            for protocol in ours:
                if protocol in offered:
                    return protocol
            return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

        ctx.set_alpn_select_callback(select)
    # Needed for client certificates with session resumption; harmless otherwise.
    ctx.set_session_id(b"mqtt-twisted")
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Makes each new TLS connection from the current context; :meth:`reload` swaps it."""

    log = Logger()

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self._context = build_context(config)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        """Re-read the files; keep the old context (and log why) if they do not work."""
        try:
            context = build_context(self.config)
        except ValueError as e:
            self.log.error("TLS certificate reload failed, the old one stays in use: {error}",
                           action="config_reload",
                           error=e)
            return False
        self._context = context
        return True


def certificate_identity(transport: Any, field: str = "cn") -> str | None:
    """The identity of the TLS client certificate on ``transport``, or None."""
    get_cert = getattr(transport, "getPeerCertificate", None)
    if get_cert is None:
        return None
    try:
        cert = get_cert()
    except Exception:
        return None
    if cert is None:
        return None
    return identity_of(cert.to_cryptography(), field)


_SAN_TYPES = {"san-dns": x509.DNSName, "san-email": x509.RFC822Name,
              "san-uri": x509.UniformResourceIdentifier}


def identity_of(cert: x509.Certificate, field: str = "cn") -> str | None:
    """``field`` of ``cert`` (see :data:`IDENTITY_FIELDS`); None if it has none."""
    if field == "cn":
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None
    if field == "dn":
        return cert.subject.rfc4514_string()
    if field == "sha256":
        return cert.fingerprint(hashes.SHA256()).hex()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    values = san.get_values_for_type(_SAN_TYPES[field])
    return str(values[0]) if values else None


# --- listening -------------------------------------------------------------------------


class TLSServerFactory(TLSMemoryBIOFactory):
    """TLS around a factory that may refuse a socket (returns None at its limit)."""

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None  # closed at once, before any handshake
        return self.protocol(self, wrapped)


@implementer(IReloadableListener)
class StreamListener(StreamServerEndpointService):
    """A listening service that can reload its TLS certificate and says where it listens."""

    log = Logger()

    def __init__(self, endpoint: Any, factory: Any, tls: ServerTLS | None = None) -> None:
        super().__init__(endpoint, factory)
        self.tls = tls
        self.port: Any = None
        self._raiseSynchronously = True  # a port in use fails start-up loudly
        self._waiters: list[Deferred[Any]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        cap_accepts(port)  # a flood of new connections is accepted a slice a turn
        self.port = port
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def whenListening(self) -> Deferred[Any]:
        """Fires with the listening port (``getHost().port`` for an ephemeral one)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[Any] = Deferred()
        self._waiters.append(d)
        return d

    def reload(self) -> bool | None:
        """Re-read the TLS certificate files (None: this listener has no TLS)."""
        if self.tls is None:
            return None
        ok = self.tls.reload()
        if ok:
            self.log.info("TLS certificate reloaded for {name}", action="config_reload",
                          name=self.name)
        return ok


def check_tls(description: str, extra: Mapping[str, str]) -> None:
    """Raise ValueError unless the listener's TLS files and keys work (at start-up)."""
    config, _ = parse_tls(description, extra)
    if config is not None:
        build_context(config)


#: Connections the kernel queues for accept() on a stream listener unless the endpoint
#: says ``backlog=``: Twisted's default, 50, overflowed when the 5,000 clients of a
#: dead cluster node reconnected at once (tests/test_cluster_storm.py): dropped SYNs
#: come back after 1, 3, 7... s.  EMQX's default is 1024 too; the kernel caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=LISTEN_BACKLOG`` if it is TCP or UNIX and has none."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def stream_listener(reactor: Any, description: str, factory: Any, extra: Mapping[str, str],
                    alpn: tuple[bytes, ...] = (), header_timeout: float = 10.0
                    ) -> StreamListener:
    """The service listening on ``description`` for ``factory``; TLS if it is ``ssl:``
    (agreeing to the ALPN ids ``alpn``, if any); behind a PROXY header if it starts with
    ``haproxy:`` (read within ``header_timeout`` seconds, before TLS: ``proxyheader.py``)."""
    proxied, description = split_proxied(description)
    config, plain = parse_tls(description, extra)
    if config is not None and alpn:
        config = replace(config, alpn=alpn)
    endpoint = serverFromString(stream_reactor(reactor), with_backlog(plain))
    if proxied:
        endpoint = ProxyHeaderEndpoint(endpoint, reactor, header_timeout)
    if config is None:
        return StreamListener(endpoint, factory)
    tls = ServerTLS(config)
    try:
        wrapped = TLSServerFactory(tls, False, factory, reactor)
    except TypeError:  # a Twisted whose TLSMemoryBIOFactory takes no clock
        wrapped = TLSServerFactory(tls, False, factory)
    return StreamListener(endpoint, wrapped, tls)


def wants_identity_as_username(extra: Mapping[str, str]) -> bool:
    """Whether the listener's ``identityAsUsername=`` says yes."""
    return bool(TLS_OPTIONS["identityAsUsername"].parse(extra.get("identityAsUsername", "no")))
