"""A bridge's settings, and the command-line options that build them.

``--bridge ENDPOINT`` starts a bridge; the ``--bridge-*`` options after it apply to it
(Mosquitto's ``connection`` block, one option per line of it).  The configuration
file's ``bridges:`` list becomes the same options (``config/load.py``).  Only the text
is checked here; the endpoint string is parsed when the service is made.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

from mqtt_twisted.bridge.topics import TopicRule, parse_topic_rule

__all__ = ["BridgeConfig", "BridgeOptions", "check_bridges"]

#: Offline queue of the remote side (messages, bytes): what the bridge holds while the
#: remote is down beyond what waits in the local session's queue.
QUEUE_MESSAGES, QUEUE_BYTES = 1000, 16 << 20


@dataclass
class BridgeConfig:
    """One remote broker and the topics bridged to it."""

    endpoint: str
    name: str = ""
    topics: list[TopicRule] = field(default_factory=list)
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    clean: bool = False
    protocol: int = 4
    keepalive: int = 60
    local_username: str | None = None
    local_password: str | None = None
    #: Mosquitto's bridge bit (protocol level | 0x80) for a 3.1.1 remote: a Mosquitto
    #: remote then sends nothing back to the bridge that it published itself.
    try_private: bool = True
    max_queued: int = QUEUE_MESSAGES
    max_queued_bytes: int = QUEUE_BYTES

    @property
    def local_client_id(self) -> str:
        """The client id of the bridge's session in this broker (Mosquitto: local.ID)."""
        return f"local.{self.client_id}"


def _positive(option: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise usage.UsageError(f"--{option}: {value!r} must be {low}..{high}")
    return number


class BridgeOptions:
    """The ``--bridge`` options of ``twistd mqttbroker`` (a mixin of ``tap.Options``)."""

    def _bridges(self) -> list[BridgeConfig]:
        return self.setdefault("bridges", [])  # type: ignore[attr-defined]

    def _current(self, option: str) -> BridgeConfig:
        bridges = self._bridges()
        if not bridges:
            raise usage.UsageError(f"--{option} applies to the --bridge before it: "
                                   f"give --bridge ENDPOINT first")
        return bridges[-1]

    def opt_bridge(self, value: str) -> None:
        """Bridge to the MQTT broker at ENDPOINT (a Twisted client endpoint: tcp:HOST:PORT,
        tls:HOST:PORT:...); the --bridge-* options after it apply to it; repeatable."""
        if not value.strip():
            raise usage.UsageError("--bridge: the endpoint is empty (tcp:HOST:PORT)")
        self._bridges().append(BridgeConfig(value))

    def opt_bridge_topic(self, value: str) -> None:
        """A topic rule of the --bridge before it, as Mosquitto's topic line: 'PATTERN
        [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]'; repeatable."""
        bridge = self._current("bridge-topic")
        try:
            bridge.topics.append(parse_topic_rule(value))
        except ValueError as e:
            raise usage.UsageError(f"--bridge-topic: {e}") from None

    def opt_bridge_name(self, value: str) -> None:
        """The bridge's name ($SYS/broker/bridges/NAME/..., logs); default bridgeN."""
        if not value or any(c in value for c in "/+#") or value.isspace():
            raise usage.UsageError(f"--bridge-name: {value!r}: a name is not empty and has "
                                   f"no '/', '+' or '#'")
        self._current("bridge-name").name = value

    def opt_bridge_client_id(self, value: str) -> None:
        """The client id on the remote broker (default: HOSTNAME.NAME)."""
        if not value:
            raise usage.UsageError("--bridge-client-id: the client id is empty")
        self._current("bridge-client-id").client_id = value

    def opt_bridge_username(self, value: str) -> None:
        """The user name on the remote broker."""
        self._current("bridge-username").username = value

    def opt_bridge_password(self, value: str) -> None:
        """The password on the remote broker."""
        self._current("bridge-password").password = value

    def opt_bridge_local_username(self, value: str) -> None:
        """The user name of the bridge's session in this broker (when it has --auth)."""
        self._current("bridge-local-username").local_username = value

    def opt_bridge_local_password(self, value: str) -> None:
        """The password of the bridge's session in this broker."""
        self._current("bridge-local-password").local_password = value

    def opt_bridge_clean(self) -> None:
        """Clean sessions on both sides: the remote keeps nothing for the bridge while it
        is disconnected, nor does this broker across its restarts (what was in flight is
        published again)."""
        self._current("bridge-clean").clean = True

    def opt_bridge_persistent(self) -> None:
        """Persistent sessions (the default): the remote keeps the bridge's subscriptions
        and queues for it."""
        self._current("bridge-persistent").clean = False

    def opt_bridge_protocol(self, value: str) -> None:
        """MQTT version towards the remote: 311 (default) or 5."""
        versions = {"311": 4, "3.1.1": 4, "mqttv311": 4, "5": 5, "mqttv5": 5}
        if value not in versions:
            raise usage.UsageError(f"--bridge-protocol: {value!r} must be 311 or 5")
        self._current("bridge-protocol").protocol = versions[value]

    def opt_bridge_keepalive(self, value: str) -> None:
        """Keep alive towards the remote, seconds (default 60; 0: none)."""
        self._current("bridge-keepalive").keepalive = _positive(
            "bridge-keepalive", value, 0, 65535)

    def opt_bridge_try_private(self, value: str) -> None:
        """yes (default) or no: for MQTT 3.1.1, tell the remote it is a bridge with
        Mosquitto's protocol bit, so that it sends back nothing the bridge published
        (a remote that refuses the bit is connected to again without it)."""
        if value not in ("yes", "no", "true", "false"):
            raise usage.UsageError(f"--bridge-try-private: {value!r} must be yes or no")
        self._current("bridge-try-private").try_private = value in ("yes", "true")


def check_bridges(bridges: list[BridgeConfig]) -> None:
    """Defaults and the checks that need a whole bridge: topics, unique names and ids."""
    names: set[str] = set()
    for n, bridge in enumerate(bridges, 1):
        bridge.name = bridge.name or f"bridge{n}"
        if bridge.name in names:
            raise usage.UsageError(f"--bridge-name: two bridges are named {bridge.name!r}")
        names.add(bridge.name)
        if not bridge.topics:
            raise usage.UsageError(f"--bridge {bridge.endpoint}: no --bridge-topic after it "
                                   f"(which topics go where?)")
        bridge.client_id = bridge.client_id or f"{socket.gethostname()}.{bridge.name}"
        if bridge.password is not None and bridge.username is None:
            raise usage.UsageError(f"--bridge {bridge.endpoint}: --bridge-password "
                                   f"without --bridge-username")
    ids = [b.client_id for b in bridges]
    if len(ids) != len(set(ids)):
        raise usage.UsageError("--bridge-client-id: two bridges use the same client id")


def bridge_options(item: dict[str, Any]) -> list[tuple[str, str | None]]:
    """One ``bridges:`` item of the configuration file as (option, value) pairs, in the
    command line's order (``--bridge`` first)."""
    pairs: list[tuple[str, str | None]] = [("bridge", str(item["endpoint"]))]
    for key, option in FILE_FIELDS.items():
        if key in ("endpoint", "topics") or item.get(key) is None:
            continue
        value = item[key]
        if key == "clean":
            pairs.append(("bridge-clean" if value else "bridge-persistent", None))
        elif isinstance(value, bool):
            pairs.append((option, "yes" if value else "no"))
        else:
            pairs.append((option, str(value)))
    pairs += [("bridge-topic", rule) for rule in item.get("topics") or []]
    return pairs


#: ``bridges:`` item keys -> the options they stand for.
FILE_FIELDS = {
    "endpoint": "bridge", "name": "bridge-name", "topics": "bridge-topic",
    "client_id": "bridge-client-id", "username": "bridge-username",
    "password": "bridge-password", "local_username": "bridge-local-username",
    "local_password": "bridge-local-password", "clean": "bridge-clean",
    "protocol": "bridge-protocol", "keepalive": "bridge-keepalive",
    "try_private": "bridge-try-private",
}
