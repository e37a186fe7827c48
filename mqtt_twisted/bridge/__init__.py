"""The MQTT bridge: topics carried between this broker and another one (docs/bridge.md).

``topics`` parses Mosquitto's topic rules, ``config`` the ``--bridge`` options,
``remote`` is the bridge's client core (Mosquitto's bridge bit), ``bridge`` the
service joining a virtual session of this broker to a client of the remote.
"""

from __future__ import annotations

from typing import Any

from mqtt_twisted.bridge.config import BridgeConfig, BridgeOptions, check_bridges
from mqtt_twisted.bridge.topics import TopicRule, parse_topic_rule

# Not Bridge itself: tap.py imports this package for the options, and the bridge's
# client (twisted.internet.endpoints, ...) would add half a second to every start.
__all__ = ["BridgeConfig", "BridgeOptions", "TopicRule", "add_bridges", "check_bridges",
           "parse_topic_rule"]


def add_bridges(service: Any, configs: list[BridgeConfig], reactor: Any) -> list[Any]:
    """Make a :class:`Bridge` per config, started as children of the broker service once
    it is ready (store open, sessions restored) and stopped with it.  A bad endpoint
    string raises ValueError now."""
    from twisted.internet.endpoints import clientFromString

    from mqtt_twisted.bridge.bridge import Bridge

    bridges = []
    for config in configs:
        try:
            clientFromString(reactor, config.endpoint)
        except Exception as e:  # Twisted's parsers raise many kinds
            raise ValueError(f"not a client endpoint ({e or type(e).__name__}): try "
                             f"tcp:HOST:PORT or tls:HOST:PORT") from None
        bridges.append(Bridge(reactor, service.gateway, config))

    def start(result: Any) -> Any:
        for bridge in bridges:
            bridge.setServiceParent(service)
        return result

    service.ready.addCallback(start)
    return bridges
