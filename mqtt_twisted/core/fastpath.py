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

from mqtt_twisted.codec import load_compiled
from mqtt_twisted.core import qos0


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


#: The compiled module when it was built, whether or not it is in use.
compiled: ModuleType | None = load_compiled("mqtt_twisted.core._qos0", "the compiled QoS 0 path")


def handler(use_compiled: bool | None = None) -> Callable[[Any, Any], None]:
    """The PUBLISH handler: compiled when built and wanted (by default unless
    ``MQTT_TWISTED_PURE`` is set), else the pure one."""
    if use_compiled is None:
        use_compiled = not _flag("MQTT_TWISTED_PURE")
    module = compiled if use_compiled and compiled is not None else qos0
    return module.on_publish  # type: ignore[no-any-return]


#: Each PUBLISH handler's batch over a whole read (``read_share``, same module):
#: ``MQTTConnection.dataReceived`` batches when the bound handler has one.
BATCHES: dict[Any, Callable[[Any, bytes, Any], int]] = {qos0.on_publish: qos0.read_share}
if compiled is not None and hasattr(compiled, "read_share"):  # (a build older than it: none)
    BATCHES[compiled.on_publish] = compiled.read_share
