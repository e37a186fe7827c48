"""Broker-wide settings, with the defaults an operator gets without a config file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mqtt_twisted.codec.stream import DecodeLimits


@lru_cache(maxsize=16)
def _decode_limits(properties: int, property_bytes: int, packet_size: int,
                   connect_size: int) -> DecodeLimits:
    return DecodeLimits(properties, property_bytes, packet_size, connect_size)


@dataclass(slots=True)
class BrokerSettings:
    """Limits and policies of the sans-IO broker (see docs/user-guide.md)."""

    #: QoS 1/2 messages in flight to one client at once (our side of receive maximum).
    max_inflight: int = 20
    #: Bytes (payload and topic) of the QoS 1/2 messages in flight to one client; 0: no
    #: limit beyond max_inflight x max_packet_size.  One message always goes, however big.
    max_inflight_bytes: int = 0
    #: Messages queued per session beyond the in-flight window; oldest dropped when full.
    max_queued: int = 1000
    #: Bytes (payload and topic, as sent: an alias does not make a message smaller)
    #: queued per session; oldest dropped when full.  Also bounds what is written to a
    #: full transport while its publishers are held back.
    max_queued_bytes: int = 16 << 20
    #: Bytes held in the queues of all offline sessions together, each copy counted at
    #: its payload and topic plus what the copy itself costs (``OFFLINE_COPY_COST``):
    #: past it, a new message for an offline session is dropped (counted in
    #: ``limit_hits["offline_queue"]``).  The per-session limits alone let 100,000
    #: sessions left behind queue 16 MiB each.  0: no limit.  See docs/limits.md.
    max_offline_queued_bytes: int = 1 << 30
    #: QoS 1/2 PUBLISHes a client may have unacknowledged towards us (v5 receive maximum).
    receive_maximum: int = 65535
    #: Largest packet accepted from a client (1 MiB, EMQX's default; the protocol allows
    #: 256 MiB, which lets one client make the broker buffer that much).
    max_packet_size: int = 1 << 20
    #: Largest packet accepted before CONNECT is accepted: the CONNECT itself and what
    #: an unauthenticated peer sends behind it.
    connect_packet_size: int = 64 << 10
    #: User properties one packet may carry, in number and in bytes (names and values
    #: with their length prefixes); more closes the connection (0x95).  For these and
    #: the other count and byte limits below, 0 means no limit (as --max-connections).
    max_user_properties: int = 128
    max_user_property_bytes: int = 64 << 10
    #: Levels of a topic name or filter (EMQX's default; Mosquitto: 200).  Each level
    #: is a node of the topic tree or retained index, about 240 bytes.
    max_topic_levels: int = 128
    #: Bytes of a topic name or filter (the protocol allows 65,535).
    max_topic_length: int = 4096
    #: Subscriptions one session may hold; more are refused (v5 SUBACK 0x97, v3 0x80).
    max_subscriptions: int = 1000
    #: PUBLISHes and bytes a second one client may send (token buckets with a burst of
    #: one second's worth, charged once per read); over them its reads pause, a v5
    #: client 10 s past them gets DISCONNECT 0x96.  0: off (see docs/limits.md).
    max_client_rate: float = 0.0
    max_client_bytes_rate: float = 0.0
    #: Retained messages clients may set, in number and in bytes (payload, topic and
    #: 256 bytes per topic level for the index); more are refused (v5 0x97, v3 dropped).
    max_retained_messages: int = 1_000_000
    max_retained_bytes: int = 512 << 20
    #: The same, per client (the one that set a message last): no single client can
    #: take the whole quota from the others (0: no limit).
    max_retained_per_client: int = 100_000
    max_retained_bytes_per_client: int = 128 << 20
    #: Largest keep alive granted; 0 means no limit.  v5 clients get SERVER_KEEP_ALIVE.
    max_keepalive: int = 0
    #: Seconds a v3.1.1 persistent session (clean session 0) outlives its connection;
    #: None: as long as max_session_expiry allows.
    persistent_session_expiry: float | None = None
    #: Upper bound on how long any session outlives its connection (a v5 session expiry
    #: interval, told in CONNACK when lowered; a v3.1.1 persistent session alike): 2 h,
    #: EMQX's default.  None: as the client asks (forever, for v3.1.1).
    max_session_expiry: float | None = 7200.0
    #: Sessions the broker holds (connected or not) beyond which a CONNECT that would
    #: create a new session outliving its connection is refused (v5 0x97, v3 0x03).
    #: A left-behind session costs 1-3 KB (docs/limits.md).  0: no limit.
    max_sessions: int = 100_000
    #: Seconds a subscriber that cannot keep up may hold back the publishers feeding it
    #: (flow control); after that its messages queue within max_queued, oldest dropped.
    slow_consumer_grace: float = 2.0
    #: What a connected client's full queue costs it: "drop" (the oldest messages,
    #: counted) or "disconnect" (also closed, v5 DISCONNECT 0x97: a reader that cannot keep
    #: up learns it; a persistent session keeps its bounded queue for the reconnect).
    queue_full: str = "drop"
    #: Queue QoS 0 messages for offline persistent sessions (Mosquitto: queue_qos0_messages).
    queue_qos0_offline: bool = False
    #: Whether clients may send retained messages.
    retain_available: bool = True
    #: Highest QoS the broker accepts from and grants to clients.
    maximum_qos: int = 2
    #: Topic aliases a v5 client may use towards us.
    topic_alias_maximum: int = 10
    #: Seconds a CONNECT may take to be answered by the store/authenticator.
    connect_store_timeout: float = 10.0
    #: Prefix of server-assigned client identifiers.
    assigned_id_prefix: str = "auto-"
    #: Which topics get outbound v5 topic aliases: "off", "first" (the first topics sent,
    #: up to the client's maximum) or "lru" (the least recently used alias is reused).
    outbound_topic_aliases: str = "off"
    #: Refuse (0x99) PUBLISHes whose payload claims UTF-8 (format indicator 1) but is not.
    validate_utf8_payload: bool = False
    #: RESPONSE_INFORMATION for v5 clients that request it; "{client_id}" is replaced.
    response_information: str | None = None
    #: Whether shared subscriptions / wildcards / subscription ids are offered (v5 CONNACK).
    shared_subscriptions: bool = True
    wildcard_subscriptions: bool = True
    subscription_identifiers: bool = True
    #: With an authenticator, a CONNECT naming another user's session is refused
    #: ("refuse", CONNACK 0x87 / 5) or gets a fresh session of its own ("fresh";
    #: MQTT clients only).  See docs/security.md.
    session_owner: str = "refuse"
    #: User names (``records.owner_of``) that may remove any session over the HTTP
    #: bridge (``DELETE /session``), as an operator does.
    admin_users: frozenset[str] = frozenset()

    def decode_limits(self) -> DecodeLimits:
        """The limits every connection's decoder checks, packet sizes included (one
        object for all of them, not 64 bytes more per connection)."""
        return _decode_limits(self.max_user_properties or 1 << 31,
                              self.max_user_property_bytes or 1 << 31,
                              self.max_packet_size, self.connect_packet_size)
