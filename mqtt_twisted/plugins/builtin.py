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


@implementer(IStorePlugin)
class RedisStorePlugin:
    """``--store redis://[[user]:password@]host:port/db[?options]``; ``rediss://`` for TLS."""

    def __init__(self, name: str = "redis") -> None:
        self.name = name
        self.description = {
            "rediss": "Redis over TLS: rediss://[:password@]host:port/db[?ca=FILE]",
            "redis+sentinel": "Redis behind Sentinel: redis+sentinel://host:26379,host2:26379"
                              "/mymaster/db (docs/stores.md)",
            "rediss+sentinel": "Redis behind Sentinel, TLS to both: rediss+sentinel://"
                               "host:26379,host2:26379/mymaster/db[?ca=FILE]",
        }.get(name, "Redis: redis://[:password@]host:port/db[?pool=N&timeout=S] "
                    "(docs/stores.md)")

    def makeStore(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.store.redis import RedisStore

        # --store arrives split at the first colon: 'redis', '//host:port/0'.
        if not argument:
            argument = "//127.0.0.1:6379/0"
        elif not argument.startswith("//"):
            argument = "//" + argument  # --store redis:host:port/0
        return RedisStore.fromURL(reactor, f"{self.name}:{argument}")


@implementer(IStorePlugin)
class EtcdStorePlugin:
    """``--store etcd://host:2379[/prefix][?options]`` (mqtt_twisted/store/etcd.py)."""

    name = "etcd"
    description = "etcd v3 (3.4+): etcd://host:2379[/prefix][?timeout=S] (docs/stores.md)"

    def makeStore(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.store.etcd import EtcdStore

        # --store arrives split at the first colon: 'etcd', '//host:2379/prefix'.
        if not argument:
            argument = "//127.0.0.1:2379"
        elif not argument.startswith("//"):
            argument = "//" + argument  # --store etcd:host:2379
        return EtcdStore.fromURL(reactor, f"etcd:{argument}")


@implementer(IAuthPlugin)
class AnonymousAuthPlugin:
    name = "anonymous"
    description = "every client may connect, publish and subscribe (default)"

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth import AllowAnonymous

        return AllowAnonymous()


@implementer(IAuthPlugin)
class ScramAuthPlugin:
    """``--auth scram:FILE``: SCRAM secrets (mqtt_twisted/auth/scram.py), never passwords."""

    name = "scram"
    description = ("SCRAM-SHA-256 (MQTT 5 AUTH) and plain passwords, checked against a file of "
                   "SCRAM secrets: scram:FILE (python -m mqtt_twisted.auth.scram USER)")

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth.scram import ScramAuthenticator

        if not argument:
            raise ValueError("--auth scram:FILE needs a file of SCRAM secrets "
                             "(python -m mqtt_twisted.auth.scram USER)")
        try:
            return ScramAuthenticator.from_file(argument, reactor=reactor)
        except OSError as e:
            raise ValueError(f"cannot read SCRAM file {argument}: {e.strerror}") from None


@implementer(IAuthPlugin)
class PasswdAuthPlugin:
    """``--auth passwd:FILE``: a Mosquitto password file (mqtt_twisted/auth/passwd.py)."""

    name = "passwd"
    description = "Mosquitto password file (mosquitto_passwd): passwd:FILE"

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth.passwd import PasswordFileAuthenticator

        if not argument:
            raise ValueError("--auth passwd:FILE needs a password file (see mosquitto_passwd)")
        try:
            return PasswordFileAuthenticator.from_file(argument, reactor=reactor)
        except OSError as e:
            raise ValueError(f"cannot read password file {argument}: {e.strerror}") from None


mqttAdapter = MQTTAdapter()
scramAuth = ScramAuthPlugin()
passwdAuth = PasswdAuthPlugin()
memoryStore = MemoryStorePlugin()
redisStore = RedisStorePlugin("redis")
redissStore = RedisStorePlugin("rediss")
etcdStore = EtcdStorePlugin()
redisSentinelStore = RedisStorePlugin("redis+sentinel")
redissSentinelStore = RedisStorePlugin("rediss+sentinel")
anonymousAuth = AnonymousAuthPlugin()
