"""Typed listener keys: one declaration per key, from which parsing and ``--help`` come.

An adapter declares its keys (``ws=tcp:8080:path=/mqtt``) as :class:`AdapterOption`
records, a name with a converter, a default and a line of help.  ``--listen`` checks
each key given with its converter while the command line is parsed (a bad value is a
one-line usage error naming key and value), the adapter reads typed values with
:func:`option_values`, and ``twistd mqttbroker --help`` lists the keys from the same
records, so the three cannot drift apart.

Third-party adapters that still give ``options`` as a plain ``{key: help}`` dict keep
working: such keys are strings without a default (:func:`normalize`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: A converter takes the text after ``key=`` and returns the value, or raises ValueError
#: with what is wrong (``"is not an integer"``): the caller puts ``key='text'`` in front.
Converter = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class AdapterOption:
    """One listener key of an adapter: ``name=VALUE`` in a ``--listen`` value."""

    name: str
    type: Converter = str
    default: Any = None
    help: str = ""
    #: What ``--help`` shows after ``name=`` (``BYTES``, ``SECONDS``); from the converter
    #: when not given.
    metavar: str | None = None

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; ValueError reads ``name='text' <what is wrong>``."""
        try:
            return self.type(text)
        except ValueError as e:
            raise ValueError(f"{self.name}={text!r} {e}") from None

    def usage(self) -> str:
        """``name=METAVAR``, as ``--help`` shows it."""
        return f"{self.name}={self.metavar or getattr(self.type, 'metavar', 'VALUE')}"


def _named(metavar: str) -> Callable[[Converter], Converter]:
    def mark(convert: Converter) -> Converter:
        convert.metavar = metavar  # type: ignore[attr-defined]
        return convert
    return mark


def integer(low: int = 0, high: int | None = None, metavar: str = "N") -> Converter:
    """Whole numbers within ``low..high`` (no upper bound when ``high`` is None)."""
    @_named(metavar)
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("is not an integer") from None
        _check_range(value, low, high)
        return value
    convert.schema = _range_schema("integer", low, high)  # type: ignore[attr-defined]
    return convert


def number(low: float = 0, high: float | None = None, metavar: str = "SECONDS") -> Converter:
    """Finite numbers within ``low..high``."""
    @_named(metavar)
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        _check_range(value, low, high)
        return value
    convert.schema = _range_schema("number", low, high)  # type: ignore[attr-defined]
    return convert


def _range_schema(kind: str, low: float, high: float | None) -> dict[str, Any]:
    """The JSON schema of a converter's values (the configuration file checks them with
    it, docs/configuration.md lists it): the same bounds as the command line's."""
    schema: dict[str, Any] = {"type": kind, "minimum": low}
    if high is not None:
        schema["maximum"] = high
    return schema


def _check_range(value: float, low: float, high: float | None) -> None:
    if high is not None and not low <= value <= high:
        raise ValueError(f"must be {low}..{high}")
    if value < low:
        raise ValueError("must not be negative" if low == 0 else f"must be at least {low}")


_YES = {"yes", "true", "on", "1"}
_NO = {"no", "false", "off", "0", ""}


@_named("yes|no")
def yes_no(text: str) -> bool:
    """``yes``/``no`` (and true/false, on/off, 1/0)."""
    lowered = text.strip().lower()
    if lowered in _YES:
        return True
    if lowered in _NO:
        return False
    raise ValueError("expected yes or no")


yes_no.schema = {"type": "boolean"}  # type: ignore[attr-defined]


def choice(*values: str) -> Converter:
    """One of ``values``."""
    @_named("|".join(values))
    def convert(text: str) -> str:
        if text not in values:
            raise ValueError(f"expected {', '.join(values[:-1])} or {values[-1]}"
                             if len(values) > 1 else f"expected {values[0]}")
        return text
    convert.schema = {"enum": list(values)}  # type: ignore[attr-defined]
    return convert


def declare(*options: AdapterOption) -> dict[str, AdapterOption]:
    """An adapter's ``options``: a mapping of key to declaration (iterating gives the
    key names, as for the older ``{key: help}`` dicts)."""
    return {option.name: option for option in options}


def normalize(options: Mapping[str, Any] | Iterable[Any] | None) -> dict[str, AdapterOption]:
    """Any adapter's ``options`` as declarations: a ``{key: help}`` dict (older plugins)
    gives string keys without a default; AdapterOption values are kept."""
    if not options:
        return {}
    if isinstance(options, Mapping):
        items: Iterable[tuple[str, Any]] = options.items()
    else:
        items = ((o.name, o) for o in options)
    return {name: value if isinstance(value, AdapterOption)
            else AdapterOption(name, str, None, str(value)) for name, value in items}


def option_values(options: Mapping[str, Any] | Iterable[Any] | None,
                  given: Mapping[str, str]) -> dict[str, Any]:
    """Every declared key's typed value: converted from ``given`` (a listener's
    ``extra``), else its default.  Raises ValueError naming the first bad key."""
    declared = normalize(options)
    values = {name: option.default for name, option in declared.items()}
    for name, text in given.items():
        option = declared.get(name)
        if option is not None:
            values[name] = option.parse(text)
    return values


def keys_help(adapters: Mapping[str, Any], common: Mapping[str, AdapterOption],
              width: int = 80) -> str:
    """The ``--help`` section listing listener keys: those every adapter takes, then the
    others grouped by the adapters that take them (TLS keys once, not four times)."""
    groups: dict[tuple[str, ...], list[AdapterOption]] = {}
    for option in common.values():
        groups.setdefault(("every adapter",), []).append(option)
    takers: dict[AdapterOption, list[str]] = {}
    for name in sorted(adapters):
        for option in normalize(getattr(adapters[name], "options", None)).values():
            takers.setdefault(option, []).append(name)
    for option, names in takers.items():
        groups.setdefault(tuple(names), []).append(option)
    left = min(max([len(o.usage()) for group in groups.values() for o in group] + [0]), 24) + 6
    lines = ["Listener keys, added to a --listen value after the endpoint "
             "(ws=tcp:8080:path=/mqtt):"]
    for names, options in groups.items():
        lines.append(f"  {', '.join(names)}:")
        for option in options:
            wrapped = textwrap.wrap(_help_line(option), max(width - left, 20)) or [""]
            first = f"    {option.usage()}"
            if len(first) < left:
                lines.append(f"{first:{left}}{wrapped.pop(0)}")
            else:
                lines.append(first)  # too long to share a line with its help
            lines.extend(" " * left + more for more in wrapped)
    return "\n".join(lines) + "\n"


def _help_line(option: AdapterOption) -> str:
    """The help text, with the default unless the text already names one."""
    default = option.default
    if default in (None, "") or "default" in option.help:
        return option.help
    if isinstance(default, bool):
        default = "yes" if default else "no"
    elif isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"{option.help} (default {default})"
