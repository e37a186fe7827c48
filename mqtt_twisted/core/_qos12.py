"""Which implementation of the QoS 1/2 per-message path runs: compiled or pure Python.

``core/_inbound.pyx``, ``_delivery.pyx``, ``_router.pyx``, ``_connection.pyx``,
``_session.pyx``, ``_journal.pyx`` and ``_wire.pyx`` are each one ``include`` of the
module of that name, compiled by Cython as it is (setup.py, where a C compiler works),
as ``core/_qos0.pyx`` is: the pure modules stay the specification and the fallback.

What runs per QoS 1/2 message (``bench/qos1_cost.py``, ``bench/calls_per_message.py``)
is bound from the compiled modules where it is called: methods over the pure classes'
own (one class each, so ``isinstance``, subclasses, ``__class__ is LocalRouter`` and
the broker's bound methods stay as they were), the packet table's acknowledgement
handlers, the QoS 0 handler's general path.  A compiled function reads its own
module's globals: at load those that are not its module's functions are made the pure
module's very objects (the packet table, ``NO_ENTRIES``, ``qos1_acked``...), so that
identity tests and in-place changes hold across the two.

The choice is the codec's (``codec/_accel.py``): compiled where built unless
``MQTT_TWISTED_PURE=1``; ``_accel.use(...)`` (tests) switches this too;
``MQTT_TWISTED_REQUIRE_EXT=1`` makes a missing build an ImportError.  A broker binds
its parts' methods when it is made (``Broker._bind_parts``): one made before a switch
keeps what it bound.  See docs/speedups.md, "The QoS 1/2 path".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mqtt_twisted.codec import also_switch, load_compiled
from mqtt_twisted.constants import PacketType
from mqtt_twisted.core import (
    connection,
    delivery,
    fastpath,
    inbound,
    journal,
    qos0,
    router,
    session,
    wire,
)

#: The pure modules compiled, by name (``core/_NAME.pyx``).
MODULES: dict[str, ModuleType] = {
    "inbound": inbound, "delivery": delivery, "router": router, "connection": connection,
    "session": session, "journal": journal, "wire": wire}
#: A module's functions whose identity is tested (``then is qos1_acked``): the pure ones.
_SHARED = {"inbound": ("qos1_acked",)}


def _load(name: str) -> ModuleType | None:
    module = load_compiled(f"mqtt_twisted.core._{name}", f"the compiled core/{name}.py")
    if module is None:
        return None
    pure = MODULES[name]
    own = module.__name__
    for key, value in vars(pure).items():
        if key.startswith("__") or key not in vars(module):
            continue
        mine = vars(module)[key]
        if getattr(mine, "__module__", None) == own and key not in _SHARED.get(name, ()):
            continue  # a function (or class) of the compiled module: its own
        setattr(module, key, value)
    return module


#: The compiled modules, by name (None: not built), whether or not in use.
compiled: dict[str, ModuleType | None] = {name: _load(name) for name in MODULES}

_P = PacketType
#: Where the per-message functions are called: (holder, key, module, its attribute
#: path there).  A holder is a class, a module or the packet table (a dict).
SITES: list[tuple[Any, Any, str, str]] = [
    *[(delivery.Delivery, m, "delivery", f"Delivery.{m}") for m in (
        "deliver", "pump", "outbound_done", "outbound_released", "add_inbound_qos2",
        "remove_inbound_qos2")],
    *[(router.LocalRouter, m, "router", f"LocalRouter.{m}") for m in (
        "dispatch", "match", "dispatch_plain", "_dispatch_shared", "deliver_shared")],
    *[(connection.MQTTConnection, m, "connection", f"MQTTConnection.{m}") for m in (
        "send", "send_ack", "send_publish")],
    (session.Session, "enqueue", "session", "Session.enqueue"),
    (journal.Journal, "writes_of", "journal", "Journal.writes_of"),
    (journal.Journal, "persist", "journal", "Journal.persist"),
    (connection, "publish_bytes", "wire", "publish_bytes"),
    (qos0, "_general", "inbound", "on_publish"),
    *[(connection._HANDLERS, int(t), "inbound", f"on_{t.name.lower()}") for t in (
        _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP)],
]
if fastpath.compiled is not None:  # the compiled QoS 0 handler's general path
    SITES.append((fastpath.compiled, "_general", "inbound", "on_publish"))
if compiled["connection"] is not None:  # (its send_publish's global)
    SITES.append((compiled["connection"], "publish_bytes", "wire", "publish_bytes"))


def _get(holder: Any, key: Any) -> Any:
    if type(holder) is dict:
        return holder[key]
    return vars(holder)[key] if isinstance(holder, type) else getattr(holder, key)


def _set(holder: Any, key: Any, value: Any) -> None:
    if type(holder) is dict:
        holder[key] = value
    else:
        setattr(holder, key, value)


def _find(module: ModuleType, path: str) -> Any:
    value: Any = module
    for part in path.split("."):
        value = vars(value)[part] if isinstance(value, type) else getattr(value, part)
    return value


#: The pure function bound at each site (as it was at import), in SITES' order.
PURE = [_get(holder, key) for holder, key, _, _ in SITES]


def use(want_compiled: bool) -> bool:
    """Bind the compiled functions (those built) or the pure ones; True when all the
    compiled ones are bound."""
    for (holder, key, name, path), pure in zip(SITES, PURE):
        module = compiled[name] if want_compiled else None
        _set(holder, key, _find(module, path) if module is not None else pure)
    return compiled_in_use()


def compiled_in_use() -> bool:
    """Whether every site has its compiled function bound now."""
    for holder, key, name, path in SITES:
        module = compiled[name]
        if module is None or _get(holder, key) is not _find(module, path):
            return False
    return True


also_switch(use)
