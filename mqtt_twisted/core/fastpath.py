"""Which handler of a client's PUBLISH runs: ``core/qos0.py`` compiled or as it is.

``core/_qos0.pyx`` is ``qos0.py`` compiled by Cython (setup.py, where a C compiler
works).  As the codec's twins (``codec/_accel.py``), the compiled one is bound unless
it was not built or ``MQTT_TWISTED_PURE=1`` asks for the pure one, and
``MQTT_TWISTED_REQUIRE_EXT=1`` makes a missing build an ImportError.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from mqtt_twisted.core import qos0


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _load() -> ModuleType | None:
    try:
        from mqtt_twisted.core import _qos0  # type: ignore[attr-defined]
    except ImportError as e:
        if _flag("MQTT_TWISTED_REQUIRE_EXT"):
            raise ImportError(f"MQTT_TWISTED_REQUIRE_EXT is set but the compiled QoS 0 "
                              f"path (mqtt_twisted.core._qos0) is not importable: {e}") from e
        return None
    return _qos0


#: The compiled module when it was built, whether or not it is in use.
compiled = _load()


def handler(use_compiled: bool | None = None) -> Callable[[Any, Any], None]:
    """The PUBLISH handler: compiled when built and wanted (by default unless
    ``MQTT_TWISTED_PURE`` is set), else the pure one."""
    if use_compiled is None:
        use_compiled = not _flag("MQTT_TWISTED_PURE")
    module = compiled if use_compiled and compiled is not None else qos0
    return module.on_publish  # type: ignore[no-any-return]
