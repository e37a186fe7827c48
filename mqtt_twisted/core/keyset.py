"""A set of objects kept as a dict's keys, for sets that hold one member per connection.

CPython's set keeps its table at most 60% full and quadruples it when it fills (a
16-byte entry per slot), so a set's memory per member swings between about 26 and
105 bytes with where its last resize fell: 5,000 members sit in a table of 32,768
slots (512 KiB: 105 bytes each), and so do 19,661 to 19,900 in one of 131,072 (2 MiB).
A dict keeps its 24-byte entries in a dense array sized to two thirds of a small
index table: 29 bytes a member at 5,000, 33 at 19,900.  Two such sets per connection
(``broker.connections`` and the epoll reactor's set of descriptors it reads) were
about 210 of an idle connection's 1,070 bytes (``bench/conn_memory.py --trace``,
5,000 connections without a warm-up, as ``bench/compare.py`` opens them).

:class:`KeySet` is that dict with the set methods its users call: ``add``,
``remove``, ``discard``, membership, ``len``, iteration (in insertion order). ``add``
and ``remove`` are the dict's own C methods (``setdefault`` and ``pop``): no Python
call per member added or removed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KeySet"]


class KeySet(dict):  # type: ignore[type-arg]
    """A set as a dict's keys (values None): less memory per member than ``set``."""

    __slots__ = ()

    #: ``add(member)``: the member's key with the value None, if not there yet.
    add = dict.setdefault
    #: ``remove(member)``: KeyError when it is not a member, as ``set.remove``.
    remove = dict.pop

    def discard(self, member: Any) -> None:
        """Remove ``member`` if present (callers on a hot path use ``pop(m, None)``)."""
        self.pop(member, None)

    def __repr__(self) -> str:
        return f"KeySet({list(self)!r})"
