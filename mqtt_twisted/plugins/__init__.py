"""Drop-in package for adapters, stores and authenticators.

Like ``twisted/plugins/``: any distribution may install a module into a
``mqtt_twisted/plugins/`` directory (without an ``__init__.py``) anywhere on
``sys.path``; module-level objects providing :class:`~mqtt_twisted.interfaces.IAdapter`,
:class:`~mqtt_twisted.interfaces.IStorePlugin` or
:class:`~mqtt_twisted.interfaces.IAuthPlugin` are then found by
:func:`twisted.plugin.getPlugins`.  See docs/plugins.md.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import getPlugins, pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []


def plugins_by_name(interface: Any) -> dict[str, Any]:
    """Every plugin providing ``interface``, keyed by its ``name``; first found wins."""
    import mqtt_twisted.plugins as package

    found: dict[str, Any] = {}
    for plugin in getPlugins(interface, package):
        found.setdefault(plugin.name, plugin)
    return found
