"""Reading a configuration file: YAML with line marks, the schema, command-line arguments.

The file is parsed twice by PyYAML: ``yaml.compose`` for the line of every key and item
(and duplicate keys, which ``safe_load`` would silently let the last one win), and
``yaml.safe_load`` for the values.  ``jsonschema`` checks the values against the schema
of ``schema.py``; every error names the file, the line and the key, and what was
expected.  A valid file becomes ``--option=value`` arguments (:class:`ConfigFile`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from twisted.python.usage import UsageError

from mqtt_twisted.config.keys import BRIDGES, LIST, LISTENERS, STORE
from mqtt_twisted.config.listeners import listener_value
from mqtt_twisted.config.schema import active_keys, build_schema, camel, expected, option_specs

#: Errors shown at most, in the order of their lines.
MAX_ERRORS = 10
Path = tuple[str | int, ...]


class ConfigError(UsageError):
    """A configuration file that cannot be used: ``FILE:LINE: KEY: what is wrong``, one
    line per error (a usage error: twistd mqttbroker exits with status 2)."""


def dotted(path: Path) -> str:
    """``("server", "listeners", 1, "tls")`` -> ``server.listeners[1].tls``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass
class Marks:
    """The line (1-based) of every key and list item of a document, and its duplicates."""

    lines: dict[Path, int] = field(default_factory=dict)
    duplicates: list[tuple[Path, int]] = field(default_factory=list)

    def line(self, path: Path) -> int:
        """The line of ``path``, or of the nearest enclosing key that has one."""
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def walk(self, node: Any, path: Path = ()) -> Marks:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value
                where = (*path, key)
                if key in seen:
                    self.duplicates.append((where, key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[where] = key_node.start_mark.line + 1
                self.walk(value_node, where)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                self.walk(item, (*path, index))
        return self


def _show(value: Any) -> str:
    """A value as the error shows it (JSON: ``"big"``, ``true``, ``null``)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _messages(error: ValidationError) -> Iterator[tuple[Path, str]]:
    """(where, what) for one jsonschema error, in the file's words."""
    path: Path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = list(error.schema.get("properties", {}))
        for extra in error.instance:
            if extra in known:
                continue
            hint = difflib.get_close_matches(str(extra), known, 1, 0.6)
            if not hint and isinstance(extra, str):
                hint = [k for k in known if camel(k) == extra]
            why = f"unknown key {_show(extra)}"
            why += f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known)}"
            yield (*path, extra), why
    elif error.validator == "required":
        yield path, f"{error.message.split(' ')[0]} is missing"
    elif error.validator in ("oneOf", "anyOf"):
        yield path, f"expected {expected(error.schema)}"
    else:
        why = f"expected {expected(error.schema)}, got {_show(error.instance)}"
        if isinstance(error.instance, bool) and {"off", "on", "yes", "no"} & set(
                map(str, error.schema.get("enum", ()))):
            why += " (YAML reads a bare on/off/yes/no as true or false: quote it)"
        yield path, why


@dataclass
class ConfigFile:
    """A checked file as command-line arguments, and where each came from."""

    path: str
    #: (option, text) pairs, in the table's order; text None for a flag that is on.
    arguments: list[tuple[str, str | None]] = field(default_factory=list)
    #: (option, text) -> ``FILE:LINE: KEY``, for errors found later (a missing file).
    origins: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, option: str, text: str | None, where: str) -> None:
        self.arguments.append((option, text))
        if text is not None:
            self.origins[(option, text)] = where


def _read(path: str) -> tuple[Any, Marks]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: "
                          f"{e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 ({e.reason})") \
            from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f"{mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{line} YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {e}") from None
    return ({} if data is None else data), Marks().walk(node)


def load_config(path: str, options_class: type, adapters: Mapping[str, Any]) -> ConfigFile:
    """Read and check ``path``; raise :class:`ConfigError` naming every mistake."""
    data, marks = _read(path)
    found: list[tuple[int, str]] = [
        (line, f"{path}:{line}: {dotted(where)}: duplicate key (each key once)")
        for where, line in marks.duplicates]
    validator = Draft202012Validator(build_schema(options_class, adapters))
    for error in validator.iter_errors(data):
        for where, why in _messages(error):
            line = marks.line(where)
            found.append((line, f"{path}:{line}: {dotted(where) or '(top level)'}: {why}"))
    if found:
        _raise(sorted(set(found)))
    config = ConfigFile(path)
    specs = option_specs(options_class)
    for key in active_keys(options_class):
        section, _, name = key.path.partition(".")
        value = data.get(section, {}).get(name) if isinstance(data.get(section), dict) \
            else None
        where = (section, name)
        if value is None or key.kind in (STORE, BRIDGES):
            continue
        origin = f"{path}:{marks.line(where)}: {key.path}"
        if key.kind == LISTENERS:
            for index, item in enumerate(value):
                item_origin = f"{path}:{marks.line((*where, index))}: {key.path}[{index}]"
                try:
                    text = listener_value(item, adapters)
                except ValueError as e:
                    found.append((marks.line((*where, index)), f"{item_origin}: {e}"))
                    continue
                config.add(key.option, text, item_origin)
        elif key.kind == LIST:
            for index, text in enumerate(value):
                config.add(key.option, text,
                           f"{path}:{marks.line((*where, index))}: {key.path}[{index}]")
        elif specs[key.option]["flag"]:
            if value:
                config.add(key.option, None, origin)
        else:
            config.add(key.option, _text(value), origin)
    _bridges(config, data.get("bridges") or [], path, marks)
    storage = data.get("storage") or {}
    if storage:
        kind, url = storage.get("type"), storage.get("url")
        text = url if url and (kind is None or url.startswith(kind)) else \
            f"{kind or 'memory'}:{url}" if url else kind or "memory"
        config.add("store", text, f"{path}:{marks.line(('storage',))}: storage")
    if found:
        _raise(found)
    return config


def _bridges(config: ConfigFile, items: list[Any], path: str, marks: Marks) -> None:
    """Each ``bridges:`` item as ``--bridge ENDPOINT --bridge-...`` in that order."""
    from mqtt_twisted.bridge.config import bridge_options

    for index, item in enumerate(items):
        origin = f"{path}:{marks.line(('bridges', index))}: bridges[{index}]"
        for option, text in bridge_options(item):
            config.add(option, text, origin)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _raise(found: list[tuple[int, str]]) -> None:
    found.sort(key=lambda item: item[0])
    lines = [text for _, text in found[:MAX_ERRORS]]
    if len(found) > MAX_ERRORS:
        lines.append(f"(and {len(found) - MAX_ERRORS} more)")
    raise ConfigError("\n".join(lines))
