"""Which implementation of the SUBSCRIBE path's loops runs: compiled or pure Python.

``mqtt_twisted/core/_subscribe.pyx`` (Cython) is built by ``pip install`` beside the
codec's extension (setup.py); the pure functions (``topic_tree.insert``,
``control.grant`` and ``topic_filters``, ``delivery.wanted``,
``grant.usual_filters``) stay the specification and the fallback.  The
choice follows the codec's: ``MQTT_TWISTED_PURE=1`` at run time, and
``codec._accel.use(...)`` (tests) switches both; ``MQTT_TWISTED_REQUIRE_EXT=1`` turns
a missing extension into an ImportError.  See docs/speedups.md.
"""

from __future__ import annotations

from types import ModuleType

from mqtt_twisted.codec import also_switch, load_compiled
from mqtt_twisted.core import control, delivery, grant, topic_tree

#: The names bound to one implementation or the other: module, global, pure function.
PURE = {
    "insert": (topic_tree, "_insert", topic_tree.insert),
    "grant": (control, "_grant", control.grant),
    "topic_filters": (control, "_topic_filters", control.topic_filters),
    "wanted": (delivery, "_wanted", delivery.wanted),
    "usual_filters": (grant, "_usual_filters", grant.usual_filters),
}


#: The compiled module when it was built, whether or not it is in use.
speedups: ModuleType | None = load_compiled("mqtt_twisted.core._subscribe",
                                            "the compiled SUBSCRIBE loops")


def use(compiled: bool) -> bool:
    """Bind the compiled loops (when built) or the pure ones; True for compiled."""
    for name, (module, attribute, pure) in PURE.items():
        setattr(module, attribute, getattr(speedups, name) if compiled and speedups else pure)
    return bool(compiled and speedups)


def compiled_in_use() -> bool:
    """Whether the compiled loops are the ones bound now."""
    return speedups is not None and control._grant is speedups.grant


also_switch(use)
