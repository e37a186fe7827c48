"""Which implementation of the codec's hottest functions runs: compiled or pure Python.

``mqtt_twisted/codec/_speedups.pyx`` (Cython) is built by ``pip install`` where a C
compiler exists (setup.py); the pure functions stay the specification and the fallback.
At import the compiled ones are bound in their place unless the extension is missing or
``MQTT_TWISTED_PURE=1`` asks for the pure ones; ``MQTT_TWISTED_REQUIRE_EXT=1`` turns a
missing extension into an ImportError (CI, where a compiler exists, so that a build that
silently fell back cannot pass for a compiled one).  See docs/speedups.md.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from types import ModuleType

from mqtt_twisted.codec import _decode, _encode, stream, topics
from mqtt_twisted.codec.packets import Publish

_DISCONNECT = 14  # (PacketType.DISCONNECT: the decoders' table is keyed by plain ints)
#: The names bound to one implementation or the other, and their pure functions.
PURE = {
    "feed": stream.StreamDecoder.feed,
    "decode_publish": _decode.decode_publish,
    "encode_publish": _encode.encode_publish,
    "encode_publishes": _encode.encode_publishes,
    "encode_publish_plain": _encode.encode_publish_plain,
    "topic_matches": topics.topic_matches,
    "decode_disconnect": _decode.DECODERS[_DISCONNECT],
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def load_compiled(module: str, what: str) -> ModuleType | None:
    """The optional compiled ``module`` (a dotted name), or None when it was not built;
    with ``MQTT_TWISTED_REQUIRE_EXT=1`` its absence is an ImportError naming ``what``.
    One rule for every compiled twin (the codec's, core/fastpath.py, core/_compiled.py)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if _flag("MQTT_TWISTED_REQUIRE_EXT"):
            raise ImportError(f"MQTT_TWISTED_REQUIRE_EXT is set but {what} ({module}) is "
                              f"not importable: {e}") from e
        return None


def stale_compiled(module: str, missing: str) -> None:
    """For a compiled ``module`` built from an older source (no ``missing``): None, the
    pure functions, with a warning; with ``MQTT_TWISTED_REQUIRE_EXT=1`` an ImportError."""
    if _flag("MQTT_TWISTED_REQUIRE_EXT"):
        raise ImportError(f"{module} is stale: no {missing}; rebuild it "
                          "(python setup.py build_ext --inplace)")
    warnings.warn(f"{module} is older than its source (no {missing}): using the "
                  "pure-Python code; rebuild it with `python setup.py build_ext --inplace`",
                  RuntimeWarning, stacklevel=3)
    return None


def _load() -> ModuleType | None:
    _speedups = load_compiled("mqtt_twisted.codec._speedups", "the compiled codec")
    if _speedups is None:
        return None
    missing = [name for name in PURE if not hasattr(_speedups, name)]
    if missing:  # built from an older source (a tree updated without build_ext again)
        return stale_compiled("mqtt_twisted.codec._speedups", ", ".join(missing))
    _speedups._pure_feed = PURE["feed"]
    _speedups._pure_decode_publish = PURE["decode_publish"]
    _speedups._pure_encode_publish = PURE["encode_publish"]
    # The compiled feed decodes SUBSCRIBE itself; decode_body (the pure feed's) keeps
    # the pure decoder, so that comparing the two feeds compares the two decoders.
    _speedups._pure_decode_subscribe = _decode.decode_subscribe
    _speedups._pure_decode_disconnect = PURE["decode_disconnect"]
    _speedups._pure_encode_publishes = PURE["encode_publishes"]
    _speedups._pure_encode_publish_plain = PURE["encode_publish_plain"]
    return _speedups


#: The compiled module when it was built, whether or not it is in use.
speedups = _load()
#: What the last :func:`use` asked for (compiled, where built).
_chosen = False


#: Other layers' compiled twins switched with these (core/_compiled.py), each called
#: with the choice: one switch for every compiled function, and no import upwards.
_SWITCHES: list[Callable[[bool], object]] = []


def also_switch(switch: Callable[[bool], object]) -> None:
    """Call ``switch(compiled)`` now, with the choice in force, and at every :func:`use`."""
    _SWITCHES.append(switch)
    switch(_chosen)


def compiled_in_use() -> bool:
    """Whether the compiled functions are the ones bound now."""
    return speedups is not None and stream.StreamDecoder.feed is speedups.feed


def use(compiled: bool) -> bool:
    """Bind the compiled functions (when built) or the pure ones; return which: True for
    compiled.  Called once at import; tests call it to run both implementations.  Names a
    module copied before a switch (``from mqtt_twisted.codec import topic_matches``) keep
    what was bound at their import."""
    import mqtt_twisted.codec as codec

    impl = speedups if compiled else None
    chosen = {name: getattr(impl, name) if impl is not None else pure
              for name, pure in PURE.items()}
    stream.StreamDecoder.feed = chosen["feed"]
    _decode.decode_publish = chosen["decode_publish"]
    _encode.encode_publish = codec.encode_publish = chosen["encode_publish"]
    _encode.ENCODERS[Publish] = chosen["encode_publish"]
    _encode.encode_publishes = codec.encode_publishes = chosen["encode_publishes"]
    _encode.encode_publish_plain = codec.encode_publish_plain = chosen["encode_publish_plain"]
    topics.topic_matches = codec.topic_matches = chosen["topic_matches"]
    _decode.DECODERS[_DISCONNECT] = chosen["decode_disconnect"]
    global _chosen
    _chosen = compiled
    for switch in _SWITCHES:
        switch(compiled)
    return impl is not None


def use_default() -> bool:
    """The choice made at import: compiled when built, unless ``MQTT_TWISTED_PURE`` is set."""
    return use(not _flag("MQTT_TWISTED_PURE"))
