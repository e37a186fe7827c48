"""Listener descriptions: ``[ADAPTER=]ENDPOINT[:ourKey=value...]``.

The endpoint part is a Twisted server endpoint string; keys that belong to us
(connection limit, CONNECT deadline, adapter options) are taken out of it
before Twisted parses it, so ``tcp:1883:maxConnections=100`` works.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from mqtt_twisted._strings import split_colons
from mqtt_twisted.adapters.options import AdapterOption, declare, integer, normalize, number
from mqtt_twisted.interfaces import IListenerSettings

#: Listener keys every adapter understands (their defaults: --max-connections and
#: --connect-timeout).
COMMON_KEYS = declare(
    AdapterOption("maxConnections", integer(), None,
                  "connections held at most on this listener (0: no limit; default "
                  "--max-connections)"),
    AdapterOption("maxConnectionRate", number(), None,
                  "new connections a second from one source address, loopback exempt "
                  "(0: no limit; default --max-connection-rate)"),
    AdapterOption("connectTimeout", number(), None,
                  "seconds a client may take to send CONNECT (0: no limit; default "
                  "--connect-timeout)"),
    AdapterOption("requestTimeout", number(), None,
                  "HTTP and WebSocket listeners: seconds for a whole request head, and "
                  "between body rate checks (0: none; default --request-timeout)"),
    AdapterOption("minBodyRate", number(), None,
                  "HTTP and WebSocket listeners: bytes per second a request body must "
                  "keep up (0: none; default --min-body-rate)"),
)

_ADAPTER_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=(.*)$", re.S)


@implementer(IListenerSettings)
@dataclass(slots=True)
class ListenerSettings:
    """One parsed ``--listen`` value."""

    adapter: str
    endpoint: str
    maxConnections: int = 0
    connectTimeout: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)
    #: HTTP requests (http=, ws=, auto=): seconds for a whole head, and bytes per second
    #: a body must keep up (adapters/_deadline.py).
    requestTimeout: float = 10.0
    minBodyRate: float = 1024.0
    #: New connections a second from one source address (loopback exempt); 0: no limit.
    maxConnectionRate: float = 0.0
    #: Set by a TLS adapter (``identityAsUsername=yes``): the client certificate's identity
    #: replaces the CONNECT user name.
    identityAsUsername: bool = False

    def describe(self) -> str:
        """``adapter=endpoint`` with the adapter's own keys (two listeners differing only in
        those, on ephemeral ports, still get different service names)."""
        keys = "".join(f":{key}={value}" for key, value in self.extra.items())
        return f"{self.adapter}={self.endpoint}{keys}"


def _split_unescaped(text: str) -> list[str]:
    """Split on ':' not escaped by a backslash, keeping the escapes (Twisted unescapes)."""
    return split_colons(text, keep_escapes=True)


def parse_listener(
    value: str,
    default_adapter: str = "mqtt",
    adapter_keys: Mapping[str, Iterable[str]] | None = None,
    max_connections: int = 0,
    connect_timeout: float = 10.0,
    default_endpoints: dict[str, str] | None = None,
    request_timeout: float = 10.0,
    min_body_rate: float = 1024.0,
    max_connection_rate: float = 0.0,
) -> ListenerSettings:
    """Parse ``[ADAPTER=]ENDPOINT``; raise ValueError with a message a user can act on.

    ``adapter_keys`` maps each adapter to its keys: names, or declarations (an
    adapter's ``options`` as :func:`~mqtt_twisted.adapters.options.normalize` gives
    them), whose values are then checked here.  ``default_endpoints`` (an adapter's
    usual endpoint) only serves as the example in the error for a listener without an
    endpoint.
    """
    adapter = default_adapter
    endpoint = value.strip()
    match = _ADAPTER_PREFIX.match(endpoint)
    if match and ":" not in match.group(1):
        adapter, endpoint = match.group(1), match.group(2)
    if not endpoint:
        # No silent default: "mqtt=" would listen on every interface.
        example = (default_endpoints or {}).get(adapter, "tcp:1883")
        raise ValueError(f"no endpoint after the adapter name (e.g. {adapter}={example})")
    own_keys: dict[str, Any] = dict(COMMON_KEYS)
    if adapter_keys is not None:
        if adapter not in adapter_keys:
            known = ", ".join(sorted(adapter_keys))
            raise ValueError(f"unknown adapter {adapter!r} (known: {known})")
        keys = adapter_keys[adapter]
        own_keys.update(normalize(keys) if isinstance(keys, Mapping) else dict.fromkeys(keys))
    kept: list[str] = []
    ours: dict[str, str] = {}
    for i, part in enumerate(_split_unescaped(endpoint)):
        key, eq, val = part.partition("=")
        if i and eq and key in own_keys:
            ours[key] = val
        else:
            kept.append(part)
    settings = ListenerSettings(adapter, ":".join(kept), max_connections, connect_timeout,
                                requestTimeout=request_timeout, minBodyRate=min_body_rate,
                                maxConnectionRate=max_connection_rate)
    for key, text in ours.items():
        option = own_keys[key]
        if isinstance(option, AdapterOption):
            value = option.parse(text)  # ValueError: "key='text' is not an integer"
            if key in COMMON_KEYS:
                setattr(settings, key, value)
    settings.extra = {k: v for k, v in ours.items() if k not in COMMON_KEYS}
    return settings


def check_endpoint(description: str, reactor: Any = None) -> None:
    """Raise ValueError unless Twisted can parse ``description`` (reads TLS files too)."""
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except Exception as e:  # Twisted raises ValueError, KeyError, TypeError, OSError, SSL errors
        detail = str(e) or e.__class__.__name__
        raise ValueError(f"bad endpoint {description!r}: {detail}") from None


#: Endpoint types that never take connections from another machine.
_LOCAL_ENDPOINTS = {"unix"}


def binds_loopback_only(endpoint: str) -> bool:
    """Whether a server endpoint string takes connections from this machine only: a
    ``unix:`` socket, or a network endpoint whose ``interface=`` is a loopback address
    (``127.0.0.1``, ``::1``, ``localhost``).  No interface means every interface (Twisted's
    default), and an endpoint type we cannot read counts as reachable from elsewhere."""
    parts = split_colons(endpoint, keep_escapes=False)
    kind = parts[0].strip().lower()
    if kind in _LOCAL_ENDPOINTS:
        return True
    interface = ""
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq and key == "interface":
            interface = value.strip().strip("[]")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False
