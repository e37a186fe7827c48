"""The configuration file's JSON schema, built from the command line's own declarations.

Types, bounds, defaults and help come from ``tap.Options`` (each option's coercer carries
the JSON schema of its values, ``tap._number``) and from the adapters' listener keys
(``adapters/options.py`` converters carry theirs), so the file, the command line and
docs/configuration.md cannot disagree.  The schema is checked with ``jsonschema``
(``load.py``); :func:`expected` says in words what a schema wants, for error messages and
the reference table.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from mqtt_twisted.adapters.listener import COMMON_KEYS
from mqtt_twisted.adapters.options import AdapterOption, normalize
from mqtt_twisted.adapters.tls import TLS_OPTIONS
from mqtt_twisted.config.keys import BRIDGES, KEYS, LIST, LISTENERS, STORE, Key

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """``maxConnections`` -> ``max_connections`` (listener keys as the file spells them)."""
    return _CAMEL.sub(r"_\1", name).lower()


def camel(name: str) -> str:
    """``max_connections`` -> ``maxConnections`` (as ``--listen`` spells them)."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


# --- the options of tap.Options ----------------------------------------------------------


def option_specs(options_class: type) -> dict[str, dict[str, Any]]:
    """Every option of a ``usage.Options`` class: default, help, coercer, whether a flag;
    repeatable options (``opt_listen``) as well."""
    specs: dict[str, dict[str, Any]] = {}
    for long, _short, default, doc, *coerce in getattr(options_class, "optParameters", []):
        specs[long] = {"default": default, "help": doc or "",
                       "coerce": coerce[0] if coerce else None, "flag": False}
    for long, _short, doc in getattr(options_class, "optFlags", []):
        specs[long] = {"default": False, "help": doc or "", "coerce": None, "flag": True}
    for name in dir(options_class):
        if name.startswith("opt_"):
            option = name[4:].replace("_", "-")
            method = getattr(options_class, name)
            specs.setdefault(option, {"default": None, "coerce": None, "flag": False,
                                      "help": " ".join((method.__doc__ or "").split())})
    return specs


def _option_schema(key: Key, spec: Mapping[str, Any]) -> dict[str, Any]:
    if key.schema is not None:
        schema = copy.deepcopy(key.schema)
    elif spec["flag"]:
        schema = {"type": "boolean"}
    elif getattr(spec["coerce"], "schema", None):
        schema = dict(spec["coerce"].schema)
    else:
        default = spec["default"]
        schema = {"type": "integer" if isinstance(default, int) else
                  "number" if isinstance(default, float) else "string"}
    if spec["default"] is None and key.kind == "value":
        if "type" in schema:
            schema["type"] = [schema["type"], "null"]
        elif "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    schema["description"] = spec["help"]
    if spec["default"] is not None:
        schema["default"] = spec["default"]
    return schema


# --- listeners ---------------------------------------------------------------------------

#: The ``tls:`` mapping of a listener: Twisted's ``ssl:`` file keys and our TLS keys.
TLS_FILES = {"cert": "certKey", "key": "privateKey", "extra_cert_chain": "extraCertChain",
             "dh_parameters": "dhParameters"}
LISTENER_FIELDS = ("protocol", "address", "endpoint", "tls")
DEFAULT_PROTOCOL = "mqtt"


def key_schema(option: AdapterOption) -> dict[str, Any]:
    """The JSON schema of one listener key, from its converter."""
    schema = dict(getattr(option.type, "schema", None) or (
        {"type": "string"} if option.type is str else
        # A converter of the adapter's own: it checks the text (block_size: 512).
        {"type": ["string", "number"], "x-expected": getattr(option.type, "metavar", None)
         or "a value its adapter accepts"}))
    if "enum" in schema and all(re.fullmatch(r"\d+\.\d+", str(v)) for v in schema["enum"]):
        # tls_minimum: 1.3 is a number to YAML; either spelling is meant the same.
        schema = {"enum": [*schema["enum"], *map(float, schema["enum"])],
                  "x-expected": " or ".join(f'"{v}"' for v in schema["enum"])}
    schema["description"] = option.help
    if option.default is not None:
        schema["default"] = option.default
    return schema


def tls_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "cert": {"type": "string", "minLength": 1,
                 "description": "PEM certificate file, the whole chain may be in it"},
        "key": {"type": "string", "minLength": 1,
                "description": "PEM private key file (default: the cert file)"},
        "extra_cert_chain": {"type": "string", "minLength": 1,
                             "description": "PEM file of intermediate certificates"},
        "dh_parameters": {"type": "string", "minLength": 1,
                          "description": "PEM file of DH parameters"},
    }
    for name, option in TLS_OPTIONS.items():
        properties[snake(name)] = key_schema(option)
    return {"type": "object", "properties": properties, "required": ["cert"],
            "additionalProperties": False,
            "description": "TLS (DTLS for coap over udp) for this listener"}


def adapter_keys(adapter: Any) -> dict[str, AdapterOption]:
    """A listener's keys as the file spells them (every adapter's, then its own)."""
    keys = {**COMMON_KEYS, **normalize(getattr(adapter, "options", None))}
    return {snake(name): option for name, option in keys.items()
            if name not in TLS_OPTIONS}


def listener_schema(adapters: Mapping[str, Any]) -> dict[str, Any]:
    """One ``server.listeners`` item: its fields, then the keys of its protocol's adapter
    (an ``if``/``then`` per adapter, so a key of another adapter is an unknown key)."""
    fields: dict[str, Any] = {
        "protocol": {"enum": sorted(adapters), "default": "mqtt",
                     "description": "the adapter (--listen ADAPTER=...)"},
        "address": {"type": ["string", "integer"],
                    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]*):?[0-9]{1,5}$",
                    "x-expected": "HOST:PORT, :PORT or a port number",
                    "description": "where to listen (tcp, or udp for coap); no host: "
                                   "every interface"},
        "endpoint": {"type": "string", "minLength": 1,
                     "description": "instead of address: a Twisted endpoint string "
                                    "(unix:/run/mqtt.sock, tcp:1883:backlog=100)"},
        "tls": tls_schema(),
    }
    branches = []
    for name, adapter in sorted(adapters.items()):
        properties = dict(fields)
        for key, option in adapter_keys(adapter).items():
            properties[key] = key_schema(option)
        # Without protocol an item is mqtt's (as --listen without ADAPTER=), no other's.
        chosen: dict[str, Any] = {"properties": {"protocol": {"const": name}}}
        if name != DEFAULT_PROTOCOL:
            chosen["required"] = ["protocol"]
        branches.append({"if": chosen,
                         "then": {"properties": properties, "additionalProperties": False}})
    return {"type": "object", "properties": fields, "allOf": branches,
            "oneOf": [{"required": ["address"]}, {"required": ["endpoint"]}],
            "x-expected": "a mapping with either address or endpoint"}


# --- the whole file ----------------------------------------------------------------------


def active_keys(options_class: type) -> list[Key]:
    """The table's keys whose option the broker has (a key may wait for its option)."""
    specs = option_specs(options_class)
    return [key for key in KEYS if key.option in specs]


def build_schema(options_class: type, adapters: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a configuration file, for this broker and these adapters."""
    specs = option_specs(options_class)
    root: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    for key in active_keys(options_class):
        section, _, name = key.path.partition(".")
        if key.kind == BRIDGES:
            bridges = root["properties"].setdefault(section, bridges_schema())
            bridges["items"]["properties"][name] = _option_schema(key, specs[key.option])
            continue
        # A section may be empty (its keys commented out): YAML gives null.
        node = root["properties"].setdefault(
            section, {"type": ["object", "null"], "properties": {},
                      "additionalProperties": False})
        spec = specs[key.option]
        if key.kind == LISTENERS:
            schema = {"type": "array", "items": listener_schema(adapters),
                      "description": "the listeners (--listen, repeated)"}
        elif key.kind == LIST:
            schema = {"type": "array", "items": {"type": "string", "minLength": 1},
                      "description": spec["help"]}
        elif key.kind == STORE:
            schema = ({"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_-]*$",
                       "x-expected": "a store name (memory, redis, ...)",
                       "description": "the store plugin", "default": "memory"}
                      if name == "type" else
                      {"type": "string", "minLength": 1,
                       "description": "its address (redis://HOST:PORT/DB)"})
        else:
            schema = _option_schema(key, spec)
        node["properties"][name] = schema
    return root


def bridges_schema() -> dict[str, Any]:
    """The top-level ``bridges:`` list; its items' fields are the BRIDGES keys."""
    return {"type": ["array", "null"], "description": "bridges to other brokers (--bridge)",
            "items": {"type": "object", "properties": {}, "additionalProperties": False,
                      "required": ["endpoint", "topics"],
                      "x-expected": "a mapping with endpoint and topics"}}


# --- the schema in words -----------------------------------------------------------------


def _number_text(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def expected(schema: Mapping[str, Any]) -> str:
    """What ``schema`` accepts, in words: ``an integer from 20 to 268435460``."""
    if "x-expected" in schema:
        return str(schema["x-expected"])
    if "enum" in schema:
        values = [("null" if v is None else str(v)) for v in schema["enum"]]
        return ("one of " + ", ".join(values)) if len(values) > 2 else " or ".join(values)
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    words = []
    for kind in kinds:
        if kind in ("integer", "number"):
            word = "an integer" if kind == "integer" else "a number"
            low, high = schema.get("minimum"), schema.get("maximum")
            if low is not None and high is not None:
                word += f" from {_number_text(low)} to {_number_text(high)}"
            elif low is not None:
                word += f" >= {_number_text(low)}"
            elif high is not None:
                word += f" <= {_number_text(high)}"
        elif kind == "boolean":
            word = "true or false"
        elif kind == "string":
            word = "a non-empty string" if schema.get("minLength") else "a string"
        elif kind == "array":
            items = schema.get("items", {})
            word = "a list of strings" if items.get("type") == "string" else "a list"
        elif kind == "object":
            word = "a mapping"
        elif kind == "null":
            word = "null"
        else:
            word = kind
        words.append(word)
    return " or ".join(words) or "a value"
