"""Which implementation of the cluster's QoS 1/2 crossing path runs: compiled or pure.

``cluster/_router.pyx``, ``_batch.pyx`` and ``_inbox.pyx`` are ``router.py``,
``batch.py`` and ``inbox.py`` compiled as they are by Cython (setup.py, where a C
compiler works), as ``core/_qos0.pyx`` is ``qos0.py``: one source, the pure modules
the specification and the fallback.  Why: what a crossing message costs beyond a local
one was mostly the bytecode of these modules' long functions (``ClusterRouter.dispatch``,
``Outbox.append`` and ``flush_entries`` on the sending node, ``deliver_items``' loop on
the receiving one: docs/cluster.md, "Compiled twins of the crossing path").

Binding: each compiled class's methods are set on the pure class (as
``codec/_accel.py`` sets ``StreamDecoder.feed``), so every ``ClusterRouter``,
``Outbox`` and ``InboxReader``, wherever made, runs them.  A compiled method's globals
are its compiled module's, so what it calls by name (``deliver_items`` from
``InboxReader._drain``, ``_Batch``, ``_flush_due``) is compiled too; the module
functions used from elsewhere (``inbox.deliver_items`` by ``drain.py``,
``batch.read_entry``) are bound on the pure modules, where their callers look them up
when they call.  The choice follows the codec's: compiled where built unless
``MQTT_TWISTED_PURE=1``, ``codec._accel.use(...)`` switches it with the rest, and
``MQTT_TWISTED_REQUIRE_EXT=1`` makes a missing build an ImportError.
"""

from __future__ import annotations

import warnings
from types import FunctionType, ModuleType
from typing import Any

from mqtt_twisted.cluster import batch, inbox, router
from mqtt_twisted.codec import also_switch, load_compiled

#: The classes whose methods are bound, and the module functions.
CLASSES = ((router, "ClusterRouter"), (batch, "Outbox"), (inbox, "InboxReader"),
           (inbox, "StreamPublisher"))
FUNCTIONS = ((inbox, "deliver_items"), (inbox, "entry_items"), (batch, "read_entry"),
             (batch, "item_message"))


def _bindings(modules: dict[ModuleType, ModuleType | None]) -> dict[tuple[Any, str], Any]:
    """(owner, name) -> the function ``modules`` (pure -> its own twin) have for it."""
    found: dict[tuple[Any, str], Any] = {}
    for module, name in CLASSES:
        pure = getattr(module, name)
        twin = getattr(modules[module], name)
        for attribute, value in vars(pure).items():
            if isinstance(value, FunctionType):  # (the pure class's: not a property)
                found[pure, attribute] = vars(twin)[attribute]
    for module, name in FUNCTIONS:
        found[module, name] = getattr(modules[module], name)
    return found


#: What is bound when the pure implementation is chosen.
PURE = _bindings({module: module for module in (router, batch, inbox)})


def _load() -> dict[tuple[Any, str], Any] | None:
    """The compiled twins of :data:`PURE`, or None when any module was not built (or
    was built from an older source: a name is missing)."""
    loaded = {pure: load_compiled(f"mqtt_twisted.cluster._{pure.__name__.rsplit('.', 1)[1]}",
                                  "the compiled crossing path")
              for pure in (router, batch, inbox)}
    if any(module is None for module in loaded.values()):
        return None
    try:
        twins = _bindings(loaded)
    except (AttributeError, KeyError) as e:
        warnings.warn(f"the compiled crossing path is older than its source ({e!r}): "
                      "using the pure one; rebuild it with `python setup.py build_ext "
                      "--inplace`", RuntimeWarning, stacklevel=2)
        return None
    # The compiled inbox reads entries with the compiled reader (per entry).
    loaded[inbox].read_entry = loaded[batch].read_entry  # type: ignore[union-attr]
    return twins


#: The compiled functions, when built, whether or not they are in use.
COMPILED = _load()


def use(compiled: bool) -> bool:
    """Bind the compiled crossing path (when built) or the pure one; True for compiled."""
    chosen = bool(compiled and COMPILED is not None)
    for key, pure in PURE.items():
        setattr(key[0], key[1], COMPILED[key] if chosen else pure)  # type: ignore[index]
    return chosen


def compiled_in_use() -> bool:
    """Whether the compiled crossing path is the one bound now."""
    return (COMPILED is not None and
            router.ClusterRouter.dispatch is COMPILED[router.ClusterRouter, "dispatch"])


also_switch(use)
