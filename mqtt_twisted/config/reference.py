"""docs/configuration.md's reference tables, generated from the schema.

``python -m mqtt_twisted.config.reference --write`` rewrites the generated sections of
docs/configuration.md (between ``<!-- reference:NAME -->`` and ``<!-- /reference:NAME
-->``); tests/test_config.py fails while they differ from what the schema gives.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mqtt_twisted.config.keys import BRIDGES, LISTENERS, STORE
from mqtt_twisted.config.reload import LISTENER_OPTIONS, LIVE_HOOKS
from mqtt_twisted.config.schema import (
    LISTENER_FIELDS,
    active_keys,
    adapter_keys,
    build_schema,
    expected,
    key_schema,
    listener_schema,
    tls_schema,
)

#: Keys whose files (not the key itself) SIGHUP re-reads.
_REREAD = {"server.listeners": "max_connections applied; other changes: restart; TLS "
                               "files re-read",
           "auth.backends": "restart; password files re-read",
           "auth.acl_file": "restart; the file re-read"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(schema: Mapping[str, Any]) -> str:
    if "default" not in schema:
        return ""
    value = schema["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _keys_table(options_class: type, adapters: Mapping[str, Any]) -> str:
    schema = build_schema(options_class, adapters)
    rows = ["| key | takes | default | command line | on SIGHUP | mosquitto.conf | EMQX "
            "| what it does |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in active_keys(options_class):
        section, _, name = key.path.partition(".")
        node = (schema["properties"][section]["items"]["properties"][name]
                if key.kind == BRIDGES else schema["properties"][section]["properties"][name])
        takes = ("a list of listeners (below)" if key.kind == LISTENERS else expected(node))
        option = f"`--{key.option}`" + (" (`NAME:URL`)" if key.kind == STORE else "")
        if key.path in _REREAD:
            sighup = _REREAD[key.path]
        elif key.live is not None or key.option in LIVE_HOOKS or \
                key.option in LISTENER_OPTIONS:
            sighup = "applied"
        else:
            sighup = "restart"
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{key.path}`", takes, _default(node), option, sighup,
            f"`{key.mosquitto}`" if key.mosquitto else "", f"`{key.emqx}`" if key.emqx else "",
            node.get("description", ""))) + " |")
    return "\n".join(rows)


def _listener_table(adapters: Mapping[str, Any]) -> str:
    fields = listener_schema(adapters)["properties"]
    rows = ["| key | takes | default | protocols | what it does |",
            "| --- | --- | --- | --- | --- |"]
    for name in LISTENER_FIELDS:
        node = fields[name]
        takes = "a mapping (below)" if name == "tls" else expected(node)
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", takes, _default(node), "all", node.get("description", ""))) + " |")
    takers: dict[str, list[str]] = {}
    options: dict[str, Any] = {}
    for adapter_name, adapter in sorted(adapters.items()):
        for key, option in adapter_keys(adapter).items():
            takers.setdefault(key, []).append(adapter_name)
            options.setdefault(key, option)
    for key, names in takers.items():
        node = key_schema(options[key])
        who = "all" if len(names) == len(adapters) else ", ".join(names)
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{key}`", expected(node), _default(node), who, node.get("description", "")))
            + " |")
    return "\n".join(rows)


def _tls_table() -> str:
    rows = ["| key | takes | default | what it does |", "| --- | --- | --- | --- |"]
    for name, node in tls_schema()["properties"].items():
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", expected(node), _default(node), node.get("description", ""))) + " |")
    return "\n".join(rows)


def shipped(adapters: Mapping[str, Any]) -> dict[str, Any]:
    """The adapters this package ships (the reference leaves installed plugins out)."""
    return {name: adapter for name, adapter in adapters.items()
            if type(adapter).__module__.startswith("mqtt_twisted.")}


def reference(options_class: type, adapters: Mapping[str, Any]) -> dict[str, str]:
    """The generated sections, by name."""
    return {"keys": _keys_table(options_class, adapters),
            "listeners": _listener_table(adapters), "tls": _tls_table()}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- reference:{name} -->\n)(?:(.*?)\n)?(<!-- /reference:{name} -->)",
                      re.S)


def stale_sections(text: str, sections: Mapping[str, str]) -> list[str]:
    """The names of the sections that are missing from ``text`` or differ."""
    stale = []
    for name, body in sections.items():
        match = _pattern(name).search(text)
        if match is None or match.group(2) != body:
            stale.append(name)
    return stale


def rewrite(text: str, sections: Mapping[str, str]) -> str:
    for name, body in sections.items():
        text = _pattern(name).sub(lambda m, b=body: f"{m.group(1)}{b}\n{m.group(3)}", text)
    return text


def main(argv: list[str]) -> int:
    from mqtt_twisted.interfaces import IAdapter
    from mqtt_twisted.plugins import plugins_by_name
    from mqtt_twisted.tap import Options

    sections = reference(Options, shipped(plugins_by_name(IAdapter)))
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    if "--write" in argv:
        doc.write_text(rewrite(doc.read_text(), sections))
        return 0
    for name, body in sections.items():
        print(f"<!-- reference:{name} -->\n{body}\n<!-- /reference:{name} -->\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
