"""Every key of the configuration file, with the command-line option it stands for.

Adding an option to ``tap.Options`` takes one :class:`Key` line here (tests/test_config.py
fails until there is one, or the option is listed in :data:`CLI_ONLY`); its type, bounds,
default and help come from the option itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How a key becomes command-line arguments.
VALUE, LIST, LISTENERS, STORE = "value", "list", "listeners", "store"
#: A field of one item of the top-level ``bridges:`` list (``bridges.FIELD``).
BRIDGES = "bridges"


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the file: ``path`` (``limits.max_packet_size``) is ``--option``."""

    path: str
    option: str
    #: What Mosquitto's ``mosquitto.conf`` and EMQX's configuration call it ("" if nothing).
    mosquitto: str = ""
    emqx: str = ""
    #: The BrokerSettings field SIGHUP sets when the file changes it (None: restart).
    live: str | None = None
    #: VALUE (one option value), LIST (a repeated option), LISTENERS, STORE.
    kind: str = VALUE
    #: JSON schema that replaces the one derived from the option (choices, lists).
    schema: dict[str, Any] | None = field(default=None, compare=False)


def _enum(*values: str) -> dict[str, Any]:
    return {"enum": list(values)}


_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}

KEYS: tuple[Key, ...] = (
    # server
    Key("server.listeners", "listen", "listener PORT [ADDRESS], protocol, certfile, keyfile",
        "listeners.{tcp,ssl,ws,wss}.NAME", kind=LISTENERS),
    Key("server.sys_interval", "sys-interval", "sys_interval", "sys_topics.sys_msg_interval"),
    # session
    Key("session.max_expiry", "max-session-expiry", "", "", live="max_session_expiry"),
    Key("session.max_sessions", "max-sessions", "", "", live="max_sessions"),
    Key("session.persistent_expiry", "persistent-session-expiry",
        "persistent_client_expiration", "mqtt.session_expiry_interval",
        live="persistent_session_expiry"),
    Key("session.max_offline_queue", "max-queued", "max_queued_messages",
        "mqtt.max_mqueue_len", live="max_queued"),
    Key("session.max_queued_bytes", "max-queued-bytes", "max_queued_bytes", "",
        live="max_queued_bytes"),
    Key("session.max_offline_queued_bytes", "max-offline-queued-bytes", "", "",
        live="max_offline_queued_bytes"),
    Key("session.queue_qos0", "queue-qos0", "queue_qos0_messages", "mqtt.mqueue_store_qos0",
        live="queue_qos0_offline"),
    Key("session.queue_full", "queue-full", "", "", live="queue_full",
        schema=_enum("drop", "disconnect")),
    Key("session.max_inflight", "max-inflight", "max_inflight_messages", "mqtt.max_inflight",
        live="max_inflight"),
    Key("session.max_inflight_bytes", "max-inflight-bytes", "max_inflight_bytes", "",
        live="max_inflight_bytes"),
    Key("session.slow_consumer_grace", "slow-consumer-grace", "", "",
        live="slow_consumer_grace"),
    Key("session.owner", "session-owner", "", "", live="session_owner",
        schema=_enum("refuse", "fresh")),
    # storage
    Key("storage.type", "store", "persistence", "durable_sessions.enable", kind=STORE),
    Key("storage.url", "store", "persistence_location", "", kind=STORE),
    # auth
    Key("auth.backends", "auth", "password_file, plugin", "authentication[]", kind=LIST),
    Key("auth.allow_anonymous", "allow-anonymous", "allow_anonymous"),
    Key("auth.acl_file", "acl", "acl_file", "authorization.sources[type=file]"),
    Key("auth.admin_users", "admin-user", "", "dashboard users, API keys", kind=LIST,
        live="admin_users"),
    # limits
    Key("limits.max_connections", "max-connections", "max_connections",
        "listeners.tcp.NAME.max_connections"),
    Key("limits.max_connection_rate", "max-connection-rate", "",
        "listeners.tcp.NAME.max_conn_rate"),
    Key("limits.connect_timeout", "connect-timeout", "", "mqtt.idle_timeout"),
    Key("limits.request_timeout", "request-timeout"),
    Key("limits.min_body_rate", "min-body-rate"),
    Key("limits.max_packet_size", "max-packet-size", "max_packet_size", "mqtt.max_packet_size",
        live="max_packet_size"),
    Key("limits.connect_packet_size", "connect-packet-size", "", "",
        live="connect_packet_size"),
    Key("limits.max_subscriptions_per_client", "max-subscriptions", "",
        "mqtt.max_subscriptions", live="max_subscriptions"),
    Key("limits.max_topic_levels", "max-topic-levels", "", "mqtt.max_topic_levels",
        live="max_topic_levels"),
    Key("limits.max_topic_length", "max-topic-length", "", "", live="max_topic_length"),
    Key("limits.max_user_properties", "max-user-properties", "", "",
        live="max_user_properties"),
    Key("limits.max_user_property_bytes", "max-user-property-bytes", "", "",
        live="max_user_property_bytes"),
    Key("limits.max_retained", "max-retained", "",
        "retainer.max_retained_messages", live="max_retained_messages"),
    Key("limits.max_retained_bytes", "max-retained-bytes", "", "",
        live="max_retained_bytes"),
    Key("limits.max_retained_per_client", "max-retained-per-client", "", "",
        live="max_retained_per_client"),
    Key("limits.max_retained_bytes_per_client", "max-retained-bytes-per-client", "", "",
        live="max_retained_bytes_per_client"),
    Key("limits.max_keepalive", "max-keepalive", "max_keepalive", "mqtt.server_keepalive",
        live="max_keepalive"),
    Key("limits.max_client_rate", "max-client-rate", "", "listeners.tcp.NAME.messages_rate",
        live="max_client_rate"),
    Key("limits.max_client_bytes_rate", "max-client-bytes-rate", "",
        "listeners.tcp.NAME.bytes_rate", live="max_client_bytes_rate"),
    # mqtt
    Key("mqtt.receive_maximum", "receive-maximum"),
    Key("mqtt.topic_aliases", "topic-aliases", "", "", schema=_enum("off", "first", "lru")),
    Key("mqtt.response_information", "response-information", "", "mqtt.response_information",
        live="response_information"),
    Key("mqtt.validate_utf8", "validate-utf8", "", "mqtt.strict_mode",
        live="validate_utf8_payload"),
    # cluster
    Key("cluster.node", "cluster", "", "node.name, cluster.discovery_strategy"),
    Key("cluster.workers", "workers"),
    Key("cluster.worker_timeout", "worker-timeout"),
    # bridges: each item of the list is one --bridge and its --bridge-* options
    Key("bridges.endpoint", "bridge", "connection NAME + address HOST:PORT",
        "bridges.mqtt.NAME.server", kind=BRIDGES,
        schema={"type": "string", "minLength": 1}),
    Key("bridges.name", "bridge-name", "connection NAME", "bridges.mqtt.NAME", kind=BRIDGES,
        schema={"type": "string", "pattern": "^[^/+#]+$",
                "x-expected": "a name without '/', '+' or '#'"}),
    Key("bridges.topics", "bridge-topic", "topic", "bridges.mqtt.NAME.forwards, .subscriptions",
        kind=BRIDGES, schema=_STRINGS),
    Key("bridges.client_id", "bridge-client-id", "remote_clientid", "bridges.mqtt.NAME.clientid",
        kind=BRIDGES, schema={"type": "string", "minLength": 1}),
    Key("bridges.username", "bridge-username", "remote_username",
        "bridges.mqtt.NAME.username", kind=BRIDGES, schema={"type": "string"}),
    Key("bridges.password", "bridge-password", "remote_password",
        "bridges.mqtt.NAME.password", kind=BRIDGES, schema={"type": "string"}),
    Key("bridges.local_username", "bridge-local-username", "local_username", "",
        kind=BRIDGES, schema={"type": "string"}),
    Key("bridges.local_password", "bridge-local-password", "local_password", "",
        kind=BRIDGES, schema={"type": "string"}),
    Key("bridges.clean", "bridge-clean", "cleansession", "bridges.mqtt.NAME.clean_start",
        kind=BRIDGES, schema={"type": "boolean", "default": False}),
    Key("bridges.protocol", "bridge-protocol", "bridge_protocol_version",
        "bridges.mqtt.NAME.proto_ver", kind=BRIDGES,
        schema={"enum": [311, 5, "311", "5"], "x-expected": "311 or 5", "default": 311}),
    Key("bridges.keepalive", "bridge-keepalive", "keepalive_interval",
        "bridges.mqtt.NAME.keepalive", kind=BRIDGES,
        schema={"type": "integer", "minimum": 0, "maximum": 65535, "default": 60}),
    Key("bridges.try_private", "bridge-try-private", "try_private", "", kind=BRIDGES,
        schema={"type": "boolean", "default": True}),
    # logging (options of the logging work, issue 17: a key for each once they exist)
    Key("logging.level", "log-level", "log_type", "log.console.level"),
    Key("logging.format", "log-format", "", "log.console.formatter"),
)

#: Options that only make sense on the command line, and why.
CLI_ONLY: dict[str, str] = {
    "config": "names the file itself",
    "list-plugins": "an action: lists the plugins and exits",
    "help": "an action", "version": "an action", "l": "the short form of --listen",
    "bridge-persistent": "the opposite of --bridge-clean (bridges[].clean: false)",
}

#: The repeatable options (opt_ methods appending to a list): the command line's list,
#: when given, replaces the file's: ``--listen tcp:0`` next to a production file starts
#: a broker on that port only, not on the file's ports as well (docs/configuration.md).
REPEATABLE = ("listen", "auth", "admin-user")


def by_path() -> dict[str, Key]:
    return {key.path: key for key in KEYS}
