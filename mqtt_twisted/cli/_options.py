"""The options ``pub`` and ``sub`` share, with Mosquitto's names and meanings.

``-h`` is the host, as in ``mosquitto_pub``, so help is ``--help`` only.  Every bad
value ends in :class:`UsageError`: one line on stderr and exit code 1, never a
traceback.  ``-D`` takes three or four words (``user-property`` has a name and a
value), which argparse cannot express, so it is taken out of argv before parsing.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from typing import Any, NoReturn

from mqtt_twisted.codec import Will
from mqtt_twisted.constants import PropertyId as P

__all__ = ["PROPERTIES", "UsageError", "client_parser", "finish_client_options"]


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 1 (as mosquitto's tools)."""


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


#: ``-D COMMAND NAME VALUE``: mosquitto's property names, their ids, their value types,
#: and the packets (commands) that may carry them.
PROPERTIES: dict[str, tuple[P, str, frozenset[str]]] = {
    "payload-format-indicator": (P.PAYLOAD_FORMAT_INDICATOR, "byte", frozenset({"publish", "will"})),
    "message-expiry-interval": (P.MESSAGE_EXPIRY_INTERVAL, "int", frozenset({"publish", "will"})),
    "content-type": (P.CONTENT_TYPE, "str", frozenset({"publish", "will"})),
    "response-topic": (P.RESPONSE_TOPIC, "str", frozenset({"publish", "will"})),
    "correlation-data": (P.CORRELATION_DATA, "bytes", frozenset({"publish", "will"})),
    "subscription-identifier": (P.SUBSCRIPTION_IDENTIFIER, "int", frozenset({"subscribe"})),
    "session-expiry-interval": (P.SESSION_EXPIRY_INTERVAL, "int",
                                frozenset({"connect", "disconnect"})),
    "authentication-method": (P.AUTHENTICATION_METHOD, "str", frozenset({"connect"})),
    "authentication-data": (P.AUTHENTICATION_DATA, "bytes", frozenset({"connect"})),
    "request-problem-information": (P.REQUEST_PROBLEM_INFORMATION, "byte",
                                    frozenset({"connect"})),
    "will-delay-interval": (P.WILL_DELAY_INTERVAL, "int", frozenset({"will"})),
    "request-response-information": (P.REQUEST_RESPONSE_INFORMATION, "byte",
                                     frozenset({"connect"})),
    "receive-maximum": (P.RECEIVE_MAXIMUM, "int", frozenset({"connect"})),
    "topic-alias-maximum": (P.TOPIC_ALIAS_MAXIMUM, "int", frozenset({"connect"})),
    "topic-alias": (P.TOPIC_ALIAS, "int", frozenset({"publish"})),
    "maximum-packet-size": (P.MAXIMUM_PACKET_SIZE, "int", frozenset({"connect"})),
    "user-property": (P.USER_PROPERTY, "pair", frozenset({
        "connect", "publish", "will", "subscribe", "unsubscribe", "disconnect"})),
}
COMMANDS = ("connect", "publish", "subscribe", "unsubscribe", "disconnect", "will", "auth")


def take_properties(argv: list[str]) -> tuple[list[str], dict[str, dict[int, Any]]]:
    """Remove every ``-D/--property COMMAND NAME VALUE [VALUE]`` from ``argv``; return
    the rest and the properties by command."""
    rest: list[str] = []
    props: dict[str, dict[int, Any]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg not in ("-D", "--property"):
            rest.append(arg)
            i += 1
            continue
        words = argv[i + 1:i + 4]
        if len(words) < 3:
            raise UsageError(f"{arg} needs COMMAND NAME VALUE")
        command, name, value = words
        if command not in COMMANDS:
            raise UsageError(f"invalid command {command!r} given in {arg} "
                             f"(one of: {', '.join(COMMANDS)})")
        if name not in PROPERTIES:
            raise UsageError(f"invalid property name {name!r} given in {arg}")
        pid, kind, allowed = PROPERTIES[name]
        if command not in allowed:
            raise UsageError(f"property {name!r} is not allowed for {command}")
        target = props.setdefault(command, {})
        i += 4
        if kind == "pair":
            if i >= len(argv):
                raise UsageError(f"{arg} {command} user-property needs a NAME and a VALUE")
            target.setdefault(pid, []).append((value, argv[i]))
            i += 1
        else:
            target[pid] = _property_value(name, kind, value)
    return rest, props


def _property_value(name: str, kind: str, value: str) -> Any:
    if kind == "str":
        return value
    if kind == "bytes":
        return value.encode()
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"property {name!r} needs a number, not {value!r}") from None
    limit = 1 if kind == "byte" else 0xFFFFFFFF
    if not 0 <= number <= limit:
        raise UsageError(f"property {name!r}: {number} is out of range 0..{limit}")
    return number


def _qos(text: str) -> int:
    if text not in ("0", "1", "2"):
        raise argparse.ArgumentTypeError(f"invalid QoS given: {text}")
    return int(text)


def _version(text: str) -> int:
    versions = {"mqttv31": 3, "31": 3, "mqttv311": 4, "311": 4, "mqttv5": 5, "5": 5}
    if text not in versions:
        raise argparse.ArgumentTypeError(
            f"invalid protocol version {text!r} (mqttv311, mqttv5, 311 or 5)")
    return versions[text]


def _uint(limit: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value} is out of range 0..{limit}")
        return value
    parse.__name__ = "number"
    return parse


def _expiry(text: str) -> int:
    if text in ("-1", "∞"):
        return 0xFFFFFFFF
    return _uint(0xFFFFFFFF)(text)


def client_parser(prog: str, description: str) -> Parser:
    """The options every client command has (connection, credentials, TLS, will, v5)."""
    parser = Parser(prog=prog, description=description, add_help=False,
                    epilog="-D/--property COMMAND NAME VALUE [VALUE]: an MQTT v5 property, "
                           "as mosquitto's (e.g. -D publish user-property key value).")
    add = parser.add_argument
    add("--help", action="help", help="show this help and exit")
    add("-h", "--host", default=None, help="broker host (default localhost)")
    add("-p", "--port", type=_uint(65535), default=None,
        help="broker port (default 1883, 8883 with TLS)")
    add("--unix", metavar="PATH", help="connect through a unix socket")
    add("-L", "--url", metavar="URL",
        help="mqtt(s)://[user[:password]@]host[:port]/topic")
    add("-i", "--id", metavar="ID", help="client id (default: the command's name + pid)")
    add("-I", "--id-prefix", metavar="PREFIX", help="client id: PREFIX + pid")
    add("-u", "--username")
    add("-P", "--pw", metavar="PASSWORD", dest="password")
    add("-k", "--keepalive", type=_uint(65535), default=60, help="seconds (default 60)")
    add("-V", "--protocol-version", dest="version", type=_version, default=4,
        help="mqttv311 (default) or mqttv5 (also 311, 5, mqttv31)")
    add("-q", "--qos", type=_qos, default=0)
    add("-c", "--disable-clean-session", dest="persistent", action="store_true",
        help="persistent session (clean session / clean start off)")
    add("-x", "--session-expiry", type=_expiry, default=None, metavar="SECONDS",
        help="v5 session expiry interval (-1: never)")
    add("-d", "--debug", action="store_true", help="print the packets sent and received")
    add("--quiet", action="store_true", help="print no error messages")
    add("--will-topic")
    add("--will-payload", default="")
    add("--will-qos", type=_qos, default=0)
    add("--will-retain", action="store_true")
    add("--cafile", help="trust these CA certificates (PEM): turns TLS on")
    add("--capath", help="trust the CA certificates in this directory: turns TLS on")
    add("--cert", help="client certificate (PEM)")
    add("--key", help="client private key (PEM)")
    add("--insecure", action="store_true",
        help="do not check that the server certificate names the host")
    return parser


def finish_client_options(args: argparse.Namespace, props: dict[str, dict[int, Any]],
                          default_id: str) -> argparse.Namespace:
    """Apply -L, defaults and cross-option checks; raise UsageError like mosquitto."""
    args.props = props
    args.tls = bool(args.cafile or args.capath)
    if args.url:
        _apply_url(args)
    if args.host is None:
        args.host = "localhost"
    if args.port is None:
        args.port = 8883 if args.tls else 1883
    if (args.cert is None) != (args.key is None):
        raise UsageError("both --cert and --key must be given")
    if args.cert and not args.tls:
        raise UsageError("--cert and --key need --cafile or --capath (TLS)")
    for path in (args.cafile, args.cert, args.key):
        if path and not os.path.isfile(path):
            raise UsageError(f"cannot read {path!r}: no such file")
    if args.capath and not os.path.isdir(args.capath):
        raise UsageError(f"--capath {args.capath!r} is not a directory")
    if args.id and args.id_prefix:
        raise UsageError("-i and -I cannot be used together")
    if args.id_prefix:
        args.id = f"{args.id_prefix}{os.getpid()}"
    elif args.id is None:
        args.id = "" if args.version == 5 and not args.persistent else \
            f"{default_id}_{os.getpid()}"
    if args.persistent and not args.id:
        raise UsageError("-c (persistent session) needs a client id (-i)")
    if args.password is not None and args.username is None:
        raise UsageError("-P needs -u")
    if args.version != 5:
        # As mosquitto: v5 properties and -x do nothing on an MQTT 3.1.1 connection.
        args.props = {}
    return args


def _apply_url(args: argparse.Namespace) -> None:
    """``-L mqtt(s)://[user[:password]@]host[:port]/topic`` as mosquitto reads it."""
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("mqtt", "mqtts"):
        raise UsageError(f"unsupported URL scheme {url.scheme!r} in -L (mqtt:// or mqtts://)")
    if not url.hostname:
        raise UsageError(f"no host in -L {args.url!r}")
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"bad port in -L {args.url!r}") from None
    args.host = url.hostname
    if url.scheme == "mqtts":
        args.tls = True
    args.port = port or (8883 if args.tls else 1883)
    if url.username is not None:
        args.username = urllib.parse.unquote(url.username)
    if url.password is not None:
        args.password = urllib.parse.unquote(url.password)
    topic = urllib.parse.unquote(url.path[1:]) if url.path.startswith("/") else ""
    if not topic:
        raise UsageError(f"no topic in -L {args.url!r} (mqtt://host/topic)")
    args.url_topic = topic


def will_of(args: argparse.Namespace) -> Will | None:
    if args.will_topic is None:
        if args.will_retain or args.will_payload:
            raise UsageError("--will-payload/--will-retain need --will-topic")
        return None
    if "+" in args.will_topic or "#" in args.will_topic or not args.will_topic:
        raise UsageError(f"invalid will topic {args.will_topic!r}")
    return Will(args.will_topic, args.will_payload.encode(), args.will_qos, args.will_retain,
                dict(args.props.get("will", {})))


def connect_properties(args: argparse.Namespace) -> dict[int, Any]:
    """CONNECT's v5 properties: -D connect ..., and the session expiry (-x, or -c)."""
    props = dict(args.props.get("connect", {}))
    if args.version == 5:
        if args.session_expiry is not None:
            props[P.SESSION_EXPIRY_INTERVAL] = args.session_expiry
        elif args.persistent:
            props.setdefault(P.SESSION_EXPIRY_INTERVAL, 0xFFFFFFFF)
    return props


def error(args: argparse.Namespace | None, message: str) -> None:
    """An error line on stderr, unless --quiet."""
    if args is None or not getattr(args, "quiet", False):
        print(f"Error: {message}", file=sys.stderr)
