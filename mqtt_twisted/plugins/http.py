"""The HTTP bridge (``http=``) and the protocol-detecting listener (``auto=``) as plugins.

A module of their own, found by :func:`twisted.plugin.getPlugins` like any
third-party drop-in (see :mod:`mqtt_twisted.plugins`).
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.adapters.detect import DetectAdapter
from mqtt_twisted.adapters.http import HTTPAdapter
from mqtt_twisted.interfaces import IAdapter


def _installed_adapters() -> dict[str, Any]:
    from mqtt_twisted.plugins import plugins_by_name

    return plugins_by_name(IAdapter)


httpAdapter = HTTPAdapter()
autoAdapter = DetectAdapter(_installed_adapters)
