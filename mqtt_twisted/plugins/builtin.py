"""The plugins the broker ships: they are found the same way as third-party ones."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.interfaces import IAuthPlugin, IStorePlugin


@implementer(IStorePlugin)
class MemoryStorePlugin:
    name = "memory"
    description = "in-process store (default): nothing to set up, gone on restart"

    def makeStore(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.store.memory import MemoryStore

        return MemoryStore(reactor)


@implementer(IAuthPlugin)
class AnonymousAuthPlugin:
    name = "anonymous"
    description = "every client may connect, publish and subscribe (default)"

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth import AllowAnonymous

        return AllowAnonymous()


mqttAdapter = MQTTAdapter()
memoryStore = MemoryStorePlugin()
anonymousAuth = AnonymousAuthPlugin()
