"""What an operator may ask of a running broker: metrics, clients, subscriptions,
retained messages, and kicking a client (``IBrokerAdmin``).

The gateway holds one (``Gateway.admin``): the metrics listener, the HTTP adapter's
``/metrics``, its admin API and the dashboard reach the broker through it, never
through the broker's internals.  Reading goes through ``core/inspection.py`` and
``core/metrics.py``; answers that may wait for the store are Deferreds.  Who may ask
is the adapter's question (the gateway's ``isAdmin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from mqtt_twisted.core.metrics import COUNTER, GAUGE, Family, broker_families
from mqtt_twisted.interfaces import IBrokerAdmin

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker


def backend_store(store: Any) -> Any:
    """The store behind the $SYS overlay (``store/overlay.py``)."""
    return getattr(store, "store", store)


@implementer(IBrokerAdmin)
class BrokerAdmin:
    """One per gateway."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Every listener's connection limit (``adapters/kit.py`` registers them).
        self.listener_limits: WeakSet[Any] = WeakSet()

    # --- metrics -----------------------------------------------------------------------

    def metrics(self) -> Deferred[list[Family]]:
        """Every metric family, read now; fires once the store has counted its retained
        messages (a store that cannot answer leaves that family out)."""
        broker = self.broker
        families = broker_families(broker, broker.clock.seconds())
        families += self._store_families()
        families += self._listener_families()
        families += self._cluster_families()

        def counted(n: int) -> list[Family]:
            families.append(Family("mqtt_retained_messages", GAUGE,
                                   "Retained messages held ($SYS ones included).").add(n))
            return families

        d = maybeDeferred(broker.store.countRetained)
        return d.addCallbacks(counted, lambda _: families)

    def _store_families(self) -> list[Family]:
        outage = getattr(backend_store(self.broker.store), "outage", None)
        if outage is None:  # an in-process store: never unreachable
            return [Family("mqtt_store_up", GAUGE, "1 while the store is reachable.").add(1)]
        return [
            Family("mqtt_store_up", GAUGE, "1 while the store is reachable.")
            .add(0 if outage.active else 1),
            Family("mqtt_store_outages", COUNTER, "Times the store became unreachable.")
            .add(outage.outages),
            Family("mqtt_store_outage_seconds", COUNTER, "Seconds of store outages that "
                   "ended.").add(outage.outage_seconds),
        ]

    def _listener_families(self) -> list[Family]:
        held = Family("mqtt_listener_connections", GAUGE, "Connections a listener holds "
                      "(before and after CONNECT).", ("listener",))
        refused = Family("mqtt_listener_refused", COUNTER, "Connections a listener refused, "
                         "by the limit hit.", ("listener", "limit"))
        for limit in sorted(self.listener_limits, key=lambda li: _listener_label(li.listener)):
            name = _listener_label(limit.listener)
            held.add(limit.active, name)
            refused.add(limit.refused - limit.rate_refused, name, "max_connections")
            refused.add(limit.rate_refused, name, "connection_rate")
        return [held, refused]

    def _cluster_families(self) -> list[Family]:
        router = self.broker.router
        routes = getattr(router, "routes", None)  # a ClusterRouter (cluster/router.py)
        if routes is None:
            return []
        return [
            Family("mqtt_cluster_peers", GAUGE, "Peer nodes with subscriptions this node "
                   "routes to.").add(len(routes.by_node)),
            Family("mqtt_cluster_routes", GAUGE, "Peer nodes' filters known.")
            .add(len(routes)),
            Family("mqtt_cluster_messages_forwarded", COUNTER, "Copies sent to peer nodes "
                   "(one per destination node).").add(router.forwarded),
            Family("mqtt_cluster_messages_received", COUNTER, "Messages received from peer "
                   "nodes.").add(router.received),
        ]


def _listener_label(listener: Any) -> str:
    """``adapter=endpoint``, without the listener's keys (TLS file names and the like)."""
    return f"{getattr(listener, 'adapter', '?')}={getattr(listener, 'endpoint', listener)}"
