"""Connecting a command-line client, and running a command under ``task.react``.

Exit codes follow mosquitto's tools: 0 done; a refused CONNACK exits with its code
(MQTT 3.1.1: 1-5; MQTT 5: the reason code, e.g. 135 "Not authorized"); a network
error or a usage error exits 1.  Whatever goes wrong is one ``Error: ...`` line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError as NetworkError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import react

from mqtt_twisted.cli._options import UsageError, connect_properties, error, will_of
from mqtt_twisted.client import ConnectError, MQTTClientProtocol, connect_client
from mqtt_twisted.constants import REASON_CODE_NAMES

__all__ = ["EXIT_TIMEOUT", "CommandFailed", "connect", "endpoint", "run_command"]

#: mosquitto_sub's exit code when -W expires (MOSQ_ERR_TIMEOUT).
EXIT_TIMEOUT = 27
CONNECT_TIMEOUT = 30.0

#: MQTT 3.1.1 CONNACK return codes, as mosquitto words them.
V311_REFUSALS = {
    1: "Connection Refused: unacceptable protocol version",
    2: "Connection Refused: identifier rejected",
    3: "Connection Refused: broker unavailable",
    4: "Connection Refused: bad user name or password",
    5: "Connection Refused: not authorised",
}


class CommandFailed(Exception):
    """Ends a command with an error line and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _pem_certificates(path: str) -> list[ssl.Certificate]:
    with open(path, "rb") as f:
        data = f.read()
    marker = b"-----END CERTIFICATE-----"
    pems = [block + marker for block in data.split(marker) if b"-----BEGIN" in block]
    if not pems:
        raise UsageError(f"no PEM certificate in {path!r}")
    return [ssl.Certificate.loadPEM(pem) for pem in pems]


def tls_options(args: argparse.Namespace) -> Any:
    """Client TLS options from --cafile/--capath/--cert/--key/--insecure."""
    try:
        cas: list[ssl.Certificate] = []
        if args.cafile:
            cas += _pem_certificates(args.cafile)
        if args.capath:
            for path in sorted(glob.glob(os.path.join(args.capath, "*"))):
                if path.endswith((".pem", ".crt")) and os.path.isfile(path):
                    cas += _pem_certificates(path)
        client = None
        if args.cert:
            with open(args.cert, "rb") as f, open(args.key, "rb") as k:
                client = ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())
    except UsageError:
        raise
    except Exception as e:  # OpenSSL's errors are many; a bad PEM is a usage error
        raise UsageError(f"cannot load the TLS files: {e}") from None
    if not cas and not args.insecure:
        # mqtts:// without --cafile: the platform's trust store.
        return ssl.optionsForClientTLS(args.host, ssl.platformTrust(), client)
    if args.insecure:
        # The chain is still verified (when a CA is given); the host name is not.
        kwargs: dict[str, Any] = {"verify": bool(cas), "caCerts": [c.original for c in cas]}
        if client is not None:
            kwargs.update(privateKey=client.privateKey.original, certificate=client.original)
        return ssl.CertificateOptions(**kwargs)
    return ssl.optionsForClientTLS(args.host, ssl.trustRootFromCertificates(cas), client)


def endpoint(reactor: Any, args: argparse.Namespace) -> Any:
    """The client endpoint: ``--unix``, or the host and port, wrapped in TLS if asked."""
    if args.unix:
        return UNIXClientEndpoint(reactor, args.unix, timeout=CONNECT_TIMEOUT)
    tcp = HostnameEndpoint(reactor, args.host, args.port, timeout=CONNECT_TIMEOUT)
    return wrapClientTLS(tls_options(args), tcp) if args.tls else tcp


def debug(args: argparse.Namespace, text: str) -> None:
    """-d: one line per packet, as mosquitto's ``Client ID sending PUBLISH``."""
    if args.debug:
        print(f"Client {args.id or '(null)'} {text}", flush=True)


async def connect(reactor: Any, args: argparse.Namespace,
                  on_message: Callable[[Any], Any] | None = None) -> MQTTClientProtocol:
    """Connect and CONNECT; CommandFailed with mosquitto's exit code when refused."""
    debug(args, "sending CONNECT")
    try:
        client = await connect_client(
            reactor, endpoint(reactor, args), args.id, version=args.version,
            keep_alive=args.keepalive, clean_start=not args.persistent,
            username=args.username, password=args.password, will=will_of(args),
            properties=connect_properties(args), on_message=on_message).addTimeout(
                CONNECT_TIMEOUT, reactor)
    except ConnectError as e:
        code = e.reason_code
        debug(args, f"received CONNACK ({code})")
        if args.version == 5:
            name = REASON_CODE_NAMES.get(code, f"reason code {code}")
        else:
            name = V311_REFUSALS.get(code, f"return code {code}")
        raise CommandFailed(f"Connection error: {name}", code) from None
    debug(args, "received CONNACK (0)")
    return client


def _describe(value: BaseException) -> str:
    if isinstance(value, NetworkError | ConnectionLost | ConnectionDone):
        return str(value).strip().rstrip(".")  # Twisted's own words: "Connection was refused..."
    return f"{type(value).__name__}: {value}"


def run_command(argv: list[str],
                parse: Callable[[list[str]], argparse.Namespace],
                command: Callable[[Any, argparse.Namespace], Coroutine[Any, Any, int]]) -> None:
    """Parse ``argv`` (usage error: one line, exit 1), then run ``command`` in the reactor
    and exit with the code it returns."""
    try:
        args = parse(argv)
    except UsageError as e:
        error(None, str(e))
        raise SystemExit(1) from None
    code = [0]

    async def main(reactor: Any) -> None:
        try:
            code[0] = await command(reactor, args)
        except CommandFailed as e:
            text = str(e)
            if text.startswith("Connection error"):
                if not args.quiet:
                    print(text, file=sys.stderr)
            else:
                error(args, text)
            code[0] = e.code
        except UsageError as e:
            error(None, str(e))
            code[0] = 1
        except Exception as e:  # one line, never a traceback
            error(args, _describe(e))
            code[0] = 1

    try:
        react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    sys.stdout.flush()
    raise SystemExit(code[0])
