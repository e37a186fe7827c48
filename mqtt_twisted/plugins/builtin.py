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


@implementer(IAuthPlugin)
class ScramAuthPlugin:
    name = "scram"
    description = "SCRAM-SHA-256 (MQTT 5 AUTH) and plain passwords from a username:password file"

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth.scram import ScramAuthenticator, read_users

        if not argument:
            raise ValueError("--auth scram:PATH needs a username:password file")
        return ScramAuthenticator(read_users(argument))


mqttAdapter = MQTTAdapter()
scramAuth = ScramAuthPlugin()
memoryStore = MemoryStorePlugin()
anonymousAuth = AnonymousAuthPlugin()
