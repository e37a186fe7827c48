"""The sans-IO broker: a facade over the parts that route messages between sessions.

Each concern has its own module, and the broker wires them together and holds what
they share (the sessions, the connections, the clock, the store, the settings):

- ``connect.py``: CONNECT, authentication, the client id's lock, takeover, CONNACK;
- ``router.py``: the subscription index and ``dispatch(message, origin)``;
- ``delivery.py``: a session's outbound messages (window, queue, QoS 2, resend);
- ``flow.py``: subscribers that cannot keep up hold their publishers back;
- ``lifecycle.py``: wills, session expiry, restore at start-up;
- ``journal.py``: the store writes, and which ones an acknowledgement waits for.

The publish path is: authorize (the connection or the gateway), retain, then the
router.  The hot methods of the parts are bound onto the broker as attributes, so the
facade costs no extra call per message.  Nothing here assumes a store is synchronous;
time comes from the injected clock.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.logger import Logger

# Binds the SUBSCRIBE path's compiled loops where built (core/_subscribe.pyx).
from mqtt_twisted.core import _compiled  # noqa: F401
from mqtt_twisted.core.admission import TURN_BUDGET, ConnectGate
from mqtt_twisted.core.connect import Connector, Credentials
from mqtt_twisted.core.connection import MQTTConnection
from mqtt_twisted.core.deadlines import Deadlines
from mqtt_twisted.core.delivery import Delivery, expired
from mqtt_twisted.core.flow import FlowControl
from mqtt_twisted.core.journal import Journal
from mqtt_twisted.core.keyset import KeySet
from mqtt_twisted.core.lifecycle import Lifecycle
from mqtt_twisted.core.limits import RetainedQuota, short_topic
from mqtt_twisted.core.offline import OfflineQueues
from mqtt_twisted.core.pacing import CLOSE_SLICE, paced
from mqtt_twisted.core.readcheck import needs_check, read_check_for
from mqtt_twisted.core.router import LOCAL, LocalRouter
from mqtt_twisted.core.session import NO_ENTRIES, Session, SubscriptionOptions
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.shared import Strategy
from mqtt_twisted.core.stats import TOPIC_SAMPLE, BrokerStats
from mqtt_twisted.message import Message

__all__ = ["Broker", "Credentials", "expired"]


class Broker:
    """Routes messages between sessions; one per broker service."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        store: Any,
        settings: BrokerSettings | None = None,
        authenticator: Any = None,
        authorizer: Any = None,
        connect_timeout: float = 10.0,
        connect_budget: float = TURN_BUDGET,
    ) -> None:
        self.clock = clock
        self.store = store
        self.settings = settings or BrokerSettings()
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.connect_timeout = connect_timeout
        self.sessions: dict[str, Session] = {}
        self.stats = BrokerStats(clock.seconds())
        #: Topics up to this length need no look at the topic limits (one compare).
        self.short_topic = short_topic(self.settings)
        self.retained_quota = RetainedQuota(self.settings)
        #: Every open connection (a dict's keys: a third of a set's memory, keyset.py).
        self.connections: KeySet = KeySet()
        #: Every connection's CONNECT deadline, keep alive check and close grace: one
        #: timer for all of them, not a DelayedCall each.
        self.deadlines = Deadlines(clock)
        #: The reads of connections that have not sent CONNECT: a CPU budget per turn.
        self.gate = ConnectGate(clock, connect_budget)
        #: The connection whose PUBLISH is being routed, for flow control.
        self.publisher: MQTTConnection | None = None
        self.journal = Journal(store, self.stats, clock)
        self.flow = FlowControl(self)
        #: What the queues of offline sessions hold together, and its bound.
        self.offline = OfflineQueues(self.settings, self.stats)
        self.delivery = Delivery(self)
        self.lifecycle = Lifecycle(self)
        self.connector = Connector(self)
        #: ``locate_session(client_id)``: the stored state of a session that lives on
        #: another node, brought here for a CONNECT (a Deferred or None); set by a cluster.
        self.locate_session: Any = None
        #: Where the wills of connected clients whose sessions are not stored are kept,
        #: so that they outlive this process (a cluster's ``cluster/wills.py``):
        #: ``kept(session)`` once connected, ``ended(session)`` when the connection
        #: ends.  None on a single node.
        self.wills: Any = None
        #: Callables adding values to $SYS (a bridge's state: ``Gateway.addSysValues``).
        self.sys_sources: list[Any] = []
        #: Subscriptions and dispatch: the seam a cluster router wraps.
        self._bind_parts()
        # The very ``deliver`` the broker holds: core/qos0.py tells a swapped one by identity.
        self.router: Any = LocalRouter(self.sessions, self.deliver)
        local = self.router
        # The index itself, for $SYS counts and white-box tests.
        self.tree, self.shared_tree = local.tree, local.shared_tree
        self.shared_groups = local.shared_groups

    def _bind_parts(self) -> None:
        """The parts' methods that connections, adapters and the service call, bound
        onto the broker: one attribute lookup, no extra call on the per-message path."""
        delivery, lifecycle, journal = self.delivery, self.lifecycle, self.journal
        self.deliver = delivery.deliver
        self.pump = delivery.pump
        self.outbound_done = delivery.outbound_done
        self.outbound_released = delivery.outbound_released
        self.add_inbound_qos2 = delivery.add_inbound_qos2
        self.remove_inbound_qos2 = delivery.remove_inbound_qos2
        self.send_retained = delivery.send_retained
        self.send_retained_many = delivery.send_retained_many
        self.writes_of = journal.writes_of
        self.store_failed = journal.store_failed
        self.connection_ended = lifecycle.connection_ended
        self.discard_session = lifecycle.discard_session
        self.set_session_expiry = lifecycle.set_session_expiry
        self.restore_session = lifecycle.restore_session
        self.handle_connect = self.connector.handle_connect
        self.auth_continue = self.connector.auth_continue
        self.reauthenticate = self.connector.reauthenticate

    @property
    def shared_strategy(self) -> Strategy:
        """How a share group's member is chosen (``core.shared.STRATEGIES``)."""
        return self.router.shared_strategy  # type: ignore[no-any-return]

    @shared_strategy.setter
    def shared_strategy(self, strategy: Strategy) -> None:
        self.router.shared_strategy = strategy

    # --- connections ----------------------------------------------------------------------

    def build_connection(self, transport: Any, peer: str = "", listener: Any = None,
                         certificate_identity: str | None = None) -> MQTTConnection:
        conn = MQTTConnection(self, transport, peer, listener, certificate_identity)
        self.connections[conn] = None
        return conn

    def close_all(self, reason_code: int) -> None:
        """Disconnect every client (shutdown): no wills, sessions kept as they are.
        CLOSE_SLICE connections a reactor turn (core/pacing.py): 10,000 clients are
        not one block, and the DISCONNECTs already written go out meanwhile."""

        def close(conn: Any) -> None:
            conn.clean_exit = True
            conn.close(reason_code)

        paced(self.clock, self.stats, iter(list(self.connections)), close, CLOSE_SLICE)

    # --- publishing -----------------------------------------------------------------------

    def route(self, message: Message, origin: str = LOCAL) -> int:
        """Publish ``message``: retain it if asked, then let the router deliver it to
        every matching session; return how many it reached.  ``origin`` is
        :data:`~mqtt_twisted.core.router.LOCAL` or the peer node it came from."""
        stats = self.stats
        stats.messages_received += 1
        if not stats.messages_received & (TOPIC_SAMPLE - 1):
            stats.topics.note(message.topic)
        if message.qos:
            if message.qos == 1:
                stats.received_qos1 += 1
            else:
                stats.received_qos2 += 1
        if message.retain:
            self.retain(message)
        return self.router.dispatch(message, origin)  # type: ignore[no-any-return]

    def retain(self, message: Message) -> None:
        """Keep ``message`` as its topic's retained message (an empty payload deletes it),
        within the retained quota: beyond it (a will, an adapter's message) it is
        routed but not kept."""
        if message.topic[:5] != "$SYS/" and not self.retained_quota.admit(message):
            # ($SYS: the broker's own, no client may publish there: never held back.)
            self.stats.limit_hit("retained")
            return
        if not message.payload:
            self.journal.persist(self.store.deleteRetained(message.topic))  # [MQTT-3.3.1-10]
        else:
            now = getattr(self.store, "setRetainedNow", None)
            if now is not None:
                now(message)  # an in-process store: no Deferred per retained PUBLISH
            else:
                self.journal.persist(self.store.setRetained(message))

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, options: SubscriptionOptions) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]; True when it is new."""
        subscriptions = session.subscriptions
        is_new = topic_filter not in subscriptions
        if subscriptions is NO_ENTRIES:
            subscriptions = session.subscriptions = {}
        subscriptions[topic_filter] = options
        self.router.add(session.clientId, topic_filter, options)
        if (self.authorizer is not None and session.read_check is None
                and needs_check(self.authorizer, session, (topic_filter,))):
            session.read_check = read_check_for(self.authorizer, session)
        if session.persistent:
            self.journal.persist(self.store.addSubscription(session.clientId, topic_filter,
                                                            options))
        return is_new

    def subscribe_many(self, session: Session, added: dict[str, SubscriptionOptions]) -> None:
        """Add or replace the subscriptions of one SUBSCRIBE, ``added`` in the packet's
        order (the last of a repeated filter wins): one change to the session, the
        index (a router's ``add_many``, else ``add`` each), the read check and, for a
        persistent session, one store write (a store's ``addSubscriptions``, else
        ``addSubscription`` each)."""
        subscriptions = session.subscriptions
        if subscriptions is NO_ENTRIES:
            subscriptions = session.subscriptions = {}
        subscriptions.update(added)
        self.index(session.clientId, added.items())  # (read in place by the compiled insert)
        if (self.authorizer is not None and session.read_check is None
                and needs_check(self.authorizer, session, added)):
            session.read_check = read_check_for(self.authorizer, session)
        if session.persistent:
            store = self.store
            add_all = getattr(store, "addSubscriptions", None)
            if add_all is not None:
                self.journal.persist(add_all(session.clientId, added))
            else:
                for topic_filter, options in added.items():
                    self.journal.persist(store.addSubscription(session.clientId,
                                                               topic_filter, options))

    def index(self, client_id: str,
              items: Collection[tuple[str, SubscriptionOptions]]) -> None:
        """Put ``client_id``'s ``(filter, options)`` into the router's index in order
        (a list, or a dict's ``items()``):
        its ``add_many`` (one pass; a cluster registers the new filters in one write),
        or ``add`` each for a router without it."""
        router = self.router
        add_many = getattr(router, "add_many", None)
        if add_many is not None:
            add_many(client_id, items)
        else:
            for topic_filter, options in items:
                router.add(client_id, topic_filter, options)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if topic_filter not in session.subscriptions:
            return False
        del session.subscriptions[topic_filter]
        self.router.remove(session.clientId, topic_filter)
        if session.persistent:
            self.journal.persist(self.store.removeSubscription(session.clientId, topic_filter))
        return True

    # --- authorization ------------------------------------------------------------------------

    def refresh_read_check(self, session: Session) -> None:
        """Decide afresh whether the session's deliveries are checked per topic (its
        identity changed, or the authorizer's rules were reloaded)."""
        session.read_check = read_check_for(self.authorizer, session)

    def refresh_read_checks(self) -> None:
        """The authorizer's rules were reloaded: forget every cached answer."""
        for session in self.sessions.values():
            self.refresh_read_check(session)
        for conn in self.connections:
            if conn.publish_grants:
                conn.publish_grants.clear()

    def may_publish(self, session: Session | None, topic: str) -> Any:
        """The authorizer's answer: a bool, or a Deferred of one."""
        identity = session.identity if session is not None else None
        client_id = session.clientId if session is not None else None
        return self.authorizer.mayPublish(identity, client_id, topic)

    def may_subscribe(self, session: Session, topic_filter: str) -> Any:
        """The authorizer's answer: a bool, or a Deferred of one."""
        return self.authorizer.maySubscribe(session.identity, session.clientId, topic_filter)
