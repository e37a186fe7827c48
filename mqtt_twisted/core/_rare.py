"""Attributes most instances never change from their default, kept out of their slots.

A slot costs every instance eight bytes whether it is ever used or not.  An idle
connection's ``MQTTConnection`` and ``Session`` had a dozen slots that only an MQTT 5
enhanced authentication, a topic alias, a session left offline or a full queue ever
set.  :func:`rare_fields` makes them descriptors that read a default until the first
assignment of something else, which makes a small record (one per class, slotted)
holding them all; assigning the default to an instance without a record makes none.

Reading one is a Python call instead of a slot read: only for attributes off the
per-message paths.
"""

from __future__ import annotations

from typing import Any

__all__ = ["rare_fields"]


class _Rare:
    """One rare attribute: its value lives in the owner's ``_rare`` record."""

    __slots__ = ("name", "default", "record")

    def __init__(self, name: str, default: Any, record: type) -> None:
        self.name = name
        self.default = default
        self.record = record

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        record = obj._rare
        return self.default if record is None else getattr(record, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        record = obj._rare
        if record is None:
            if value is self.default:
                return
            record = obj._rare = self.record()
        setattr(record, self.name, value)


def rare_fields(owner: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Descriptors for ``defaults`` (name -> default value, an immutable one), to
    put in a class body that has a ``_rare`` slot set to None in ``__init__``::

        class Session:
            __slots__ = (..., "_rare")
            locals().update(rare_fields("Session", {"will_call": None, "dropped": 0}))
    """
    names = tuple(defaults)

    def __init__(self: Any) -> None:
        for name in names:
            setattr(self, name, defaults[name])

    record = type(f"{owner}Rare", (), {"__slots__": names, "__init__": __init__,
                                       "__module__": __name__})
    return {name: _Rare(name, default, record) for name, default in defaults.items()}
