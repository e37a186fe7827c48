"""``server.listeners`` items as ``--listen`` values.

``{protocol: ws, address: "127.0.0.1:8080", path: /mqtt}`` is
``ws=tcp:8080:interface=127.0.0.1:path=/mqtt``: the address becomes the adapter's usual
endpoint type (``udp:`` for coap, ``tcp:`` otherwise), ``tls:`` makes ``tcp:`` an
``ssl:`` endpoint (or adds ``dtlsKey``/``dtlsCert`` on udp), and every other key is a
listener key in camelCase.  The value then goes through ``--listen``'s own checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqtt_twisted.config.schema import (
    DEFAULT_PROTOCOL,
    LISTENER_FIELDS,
    TLS_FILES,
    adapter_keys,
    camel,
)


def _escape(text: str) -> str:
    """A value inside an endpoint string (``:`` and ``\\`` escaped, as Twisted reads it)."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def split_address(address: str | int) -> tuple[str, str]:
    """``"127.0.0.1:1883"`` -> ``("127.0.0.1", "1883")``; ``":1883"``, ``1883``: no host."""
    text = str(address).strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, port.lstrip(":")
    host, colon, port = text.rpartition(":")
    return (host, port) if colon else ("", text)


def listener_value(item: Mapping[str, Any], adapters: Mapping[str, Any]) -> str:
    """The ``--listen`` value of one (schema-checked) item; ValueError if it cannot be one."""
    protocol = item.get("protocol", DEFAULT_PROTOCOL)
    adapter = adapters[protocol]
    known = adapter_keys(adapter)
    if "endpoint" in item:
        endpoint = item["endpoint"]
    else:
        kind = (getattr(adapter, "defaultEndpoint", None) or "tcp:").partition(":")[0]
        host, port = split_address(item["address"])
        endpoint = f"{kind}:{port}" + (f":interface={_escape(host)}" if host else "")
    keys: dict[str, str] = {}
    tls = item.get("tls")
    if tls:
        files = {TLS_FILES[k]: _escape(v) for k, v in tls.items() if k in TLS_FILES}
        kind = endpoint.partition(":")[0]
        if kind == "tcp":
            endpoint = "ssl:" + endpoint[4:] + "".join(
                f":{name}={value}" for name, value in files.items())
        elif kind == "udp" and "dtls_key" in known:
            if set(files) - {"certKey", "privateKey"}:
                raise ValueError("tls: DTLS takes cert and key only")
            keys["dtlsCert"] = files["certKey"]
            keys["dtlsKey"] = files.get("privateKey", files["certKey"])
        else:
            raise ValueError(f"tls: needs a tcp address or endpoint (or udp for DTLS), "
                             f"not {endpoint!r}")
        keys.update({camel(k): _escape(_text(v)) for k, v in tls.items()
                     if k not in TLS_FILES})
    for key, value in item.items():
        if key not in LISTENER_FIELDS:
            keys[camel(key)] = _escape(_text(value))
    return f"{protocol}={endpoint}" + "".join(f":{k}={v}" for k, v in keys.items())
