"""``twistd mqttbroker``: command-line options turned into a service tree."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from mqtt_twisted import __version__, logs, workers
from mqtt_twisted._twistd import TwistdRun, check_twistd_options, is_twistd, usage_exit
from mqtt_twisted.adapters.kit import check_listener
from mqtt_twisted.adapters.listener import (
    COMMON_KEYS,
    ListenerSettings,
    binds_loopback_only,
    parse_listener,
)
from mqtt_twisted.adapters.options import keys_help, normalize
from mqtt_twisted.adapters.reuseport import share_ports
from mqtt_twisted.bridge.config import BridgeOptions, check_bridges
from mqtt_twisted.core.ownership import MODES as OWNER_MODES
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import MQTTError
from mqtt_twisted.interfaces import IAdapter, IAuthPlugin, IStorePlugin
from mqtt_twisted.plugins import plugins_by_name

DEFAULT_LISTENER = "tcp:1883"
_log = Logger(namespace="mqtt_twisted.tap")


#: Smallest --max-packet-size: below it normal clients cannot work (Mosquitto's floor too).
MIN_PACKET_SIZE = 20


def _number(option: str, kind: type, low: float, high: float | None = None) -> Any:
    """Coerce ``--option``'s value; a bad one is a usage error naming the option and the
    value (Twisted's own coercion names neither)."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise usage.UsageError(f"--{option}: {value!r} is not {noun}") from None
        if not math.isfinite(number):
            raise usage.UsageError(f"--{option}: {value!r} is not a finite number")
        if number < low or (high is not None and number > high):
            if high is not None:
                expected = f"must be {low}..{high}"
            else:
                expected = "must not be negative" if low == 0 else f"must be at least {low}"
            raise usage.UsageError(f"--{option}: {value!r} {expected}")
        return number

    # The configuration file's schema (config/schema.py) checks the same bounds.
    coerce.schema = {"type": "integer" if kind is int else "number",  # type: ignore[attr-defined]
                     "minimum": low, **({} if high is None else {"maximum": high})}
    return coerce


def _choice(option: str, parse: Callable[[str], Any]) -> Callable[[str], str]:
    """Check ``--option``'s value with ``parse`` (a ValueError is a usage error naming
    the option); the value itself is kept."""

    def coerce(value: str) -> str:
        try:
            parse(value)
        except ValueError as e:
            raise usage.UsageError(f"--{option}: {e}") from None
        return value.strip().lower()

    return coerce


def _split_choice(value: str) -> tuple[str, str]:
    """'redis://h:1/0' -> ('redis', '//h:1/0'); 'memory' -> ('memory', '')."""
    name, _, argument = value.partition(":")
    return name, argument


class Options(BridgeOptions, usage.Options):
    """Options of ``twistd mqttbroker``."""

    synopsis = "[options]"
    longdesc = (
        "Run the mqtt-twisted broker. --listen repeats; its value is [ADAPTER=]ENDPOINT, a "
        "Twisted server endpoint with an optional adapter name in front (MQTT when none is "
        "given): tcp:1883, tcp:1883:interface=127.0.0.1, "
        "ssl:8883:privateKey=key.pem:certKey=cert.pem, unix:/run/mqtt.sock, ws=tcp:8080. "
        "Listener keys (below) may be added to the endpoint. Default: --listen tcp:1883."
    )

    optParameters = [
        ["config", None, None,
         "YAML configuration file (docs/configuration.md); the command line overrides "
         "it, and SIGHUP re-reads it."],
        ["store", None, "memory", "Store backend: memory, or a plugin's NAME[:ARGS]."],
        ["acl", None, None,
         "Mosquitto ACL file: what it does not allow is refused (with any --auth)."],
        ["max-connections", None, 10_000,
         "Default connection limit per listener (0: none).",
         _number("max-connections", int, 0)],
        ["max-connection-rate", None, 100.0,
         "Default limit per listener of new connections a second from one source "
         "address, loopback exempt (0: none).", _number("max-connection-rate", float, 0)],
        ["connect-timeout", None, 10.0, "Seconds a client may take to send CONNECT (0: none).",
         _number("connect-timeout", float, 0)],
        ["request-timeout", None, 10.0,
         "HTTP and WebSocket listeners: seconds for a whole request head, however it "
         "trickles (0: none).", _number("request-timeout", float, 0)],
        ["min-body-rate", None, 1024.0,
         "HTTP and WebSocket listeners: bytes per second a request body must keep up "
         "(0: none).", _number("min-body-rate", float, 0)],
        ["max-inflight", None, 20, "QoS 1/2 messages in flight to one client (1..65535).",
         _number("max-inflight", int, 1, 65535)],
        ["receive-maximum", None, 65535,
         "QoS 1/2 PUBLISHes an MQTT 5 client may have unacknowledged towards the broker "
         "(advertised in CONNACK; more is DISCONNECT 0x93), 1..65535.",
         _number("receive-maximum", int, 1, 65535)],
        ["max-queued", None, 1000,
         "Messages queued per session; when full the oldest is dropped.",
         _number("max-queued", int, 0)],
        ["max-inflight-bytes", None, 0,
         "Bytes (payload and topic) in flight to one client (0: only --max-inflight).",
         _number("max-inflight-bytes", int, 0)],
        ["max-queued-bytes", None, 16 << 20,
         "Bytes (payload and topic) queued per session; when full the oldest are dropped "
         "(0: no limit).",
         _number("max-queued-bytes", int, 0)],
        ["max-offline-queued-bytes", None, 1 << 30,
         "Bytes queued for all offline sessions together (payload, topic and 128 per "
         "copy); past it a new message for an offline session is dropped (0: no limit).",
         _number("max-offline-queued-bytes", int, 0)],
        ["max-client-rate", None, 0.0,
         "PUBLISHes a second one client may send (token bucket, 1 s burst); over it its "
         "reads pause, v5: DISCONNECT 0x96 10 s past it (0: off).",
         _number("max-client-rate", float, 0)],
        ["max-client-bytes-rate", None, 0.0,
         "Bytes a second one client may send, as --max-client-rate (0: off).",
         _number("max-client-bytes-rate", float, 0)],
        ["max-packet-size", None, 1 << 20,
         "Largest packet accepted, in bytes: 20..268435460 (the protocol's maximum).",
         _number("max-packet-size", int, MIN_PACKET_SIZE, 268_435_460)],
        ["connect-packet-size", None, 64 << 10,
         "Largest packet accepted before CONNECT is accepted, in bytes (at least 20).",
         _number("connect-packet-size", int, MIN_PACKET_SIZE, 268_435_460)],
        ["max-user-properties", None, 128,
         "MQTT 5 user properties one packet may carry (more: disconnect 0x95; 0: no limit).",
         _number("max-user-properties", int, 0)],
        ["max-user-property-bytes", None, 64 << 10,
         "Bytes of MQTT 5 user properties one packet may carry (0: no limit).",
         _number("max-user-property-bytes", int, 0)],
        ["max-topic-levels", None, 128,
         "Levels of a topic name or filter (more: refused, v5 0x90 / 0x8F).",
         _number("max-topic-levels", int, 1, 65535)],
        ["max-topic-length", None, 4096,
         "Bytes of a topic name or filter, 1..65535 (the protocol's maximum).",
         _number("max-topic-length", int, 1, 65535)],
        ["max-subscriptions", None, 1000,
         "Subscriptions one session may hold (more: SUBACK 0x97, v3 0x80; 0: no limit).",
         _number("max-subscriptions", int, 0)],
        ["max-retained", None, 1_000_000,
         "Retained messages clients may set (more: PUBACK 0x97, v3 dropped; 0: no limit).",
         _number("max-retained", int, 0)],
        ["max-retained-bytes", None, 512 << 20,
         "Bytes of retained messages (payload, topic, 256 per topic level; 0: no limit).",
         _number("max-retained-bytes", int, 0)],
        ["max-retained-per-client", None, 100_000,
         "Retained messages one client may have set (more: as --max-retained; 0: no limit).",
         _number("max-retained-per-client", int, 0)],
        ["max-retained-bytes-per-client", None, 128 << 20,
         "Bytes of retained messages one client may have set (0: no limit).",
         _number("max-retained-bytes-per-client", int, 0)],
        ["max-keepalive", None, 0, "Largest keep alive granted in seconds (0: no limit).",
         _number("max-keepalive", int, 0, 65535)],
        ["persistent-session-expiry", None, None,
         "Seconds a clean-session-0 (v3.1.1) session outlives its client (default: "
         "--max-session-expiry).",
         _number("persistent-session-expiry", float, 0)],
        ["max-session-expiry", None, 7200.0,
         "Seconds any session may outlive its client (v5: told in CONNACK; v3.1.1 alike; "
         "4294967295: as the client asks, forever for v3.1.1).",
         _number("max-session-expiry", float, 0, 0xFFFFFFFF)],
        ["max-sessions", None, 100_000,
         "Sessions held beyond which a new persistent session is refused (v5 CONNACK 0x97, "
         "v3 0x03; 0: no limit).", _number("max-sessions", int, 0)],
        ["sys-interval", None, 10.0, "Seconds between $SYS/broker/... updates (0: none).",
         _number("sys-interval", float, 0)],
        ["topic-aliases", None, "off",
         "Outbound MQTT 5 topic aliases: off, first (first topics sent) or lru."],
        ["response-information", None, None,
         "RESPONSE_INFORMATION for MQTT 5 clients that ask; {client_id} is replaced."],
        ["cluster", None, None,
         "Join a cluster as node NAME (auto: host:pid) on the Redis of --store redis://...: "
         "a client on any node gets what is published on every node."],
        ["workers", None, 1,
         "Broker processes sharing the listeners (SO_REUSEPORT), nodes of a cluster on "
         "the Redis of --store (--cluster NAME names them NAME-w0-PID..., else host:pid).",
         _number("workers", int, 1, 256)],
        ["worker-timeout", None, workers.WORKER_TIMEOUT,
         "--workers: seconds a worker may send no heartbeat (stopped, or a reactor turn "
         "that does not end) before it is killed and started again (0: never).",
         _number("worker-timeout", float, 0)],
        ["log-level", None, "info", "Least level logged: debug, info, warn or error.",
         _choice("log-level", logs.parse_level)],
        ["log-format", None, "text",
         "Log lines as text (short, for people) or json (one object a line, for a "
         "log shipper).", _choice("log-format", logs.parse_format)],
        ["slow-consumer-grace", None, 2.0,
         "Seconds a subscriber that cannot keep up may hold back the publishers (and "
         "cluster inbox) feeding it; after that its queue fills and drops the oldest.",
         _number("slow-consumer-grace", float, 0.1)],
        ["queue-full", None, "drop",
         "When a connected client's queue is full: drop the oldest messages (drop) or "
         "also disconnect the client (disconnect; v5: DISCONNECT 0x97)."],
        ["session-owner", None, "refuse",
         "With --auth, a CONNECT naming another user's client id is refused (refuse: "
         "CONNACK 0x87/5) or gets a fresh session of its own (fresh)."],
    ]
    optFlags = [
        ["queue-qos0", None, "Queue QoS 0 messages for offline persistent sessions."],
        ["validate-utf8", None,
         "Refuse (0x99) payloads that claim to be UTF-8 (format indicator 1) but are not."],
        ["list-plugins", None, "List the adapters, stores and auth backends found, and exit."],
        ["allow-anonymous", None,
         "With --auth backends: let clients without credentials in (the ACL's anonymous "
         "section applies to them); without it they are refused."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["admin-users"] = []
        self["auth"] = []
        #: The command line as given (SIGHUP parses it again with the file re-read),
        #: and the file's values: (option, value) -> "FILE:LINE: KEY" for errors.
        self.argv: list[str] = []
        self.origins: dict[tuple[str, str], str] = {}

    def where(self, option: str, value: str) -> str:
        """Where ``value`` of ``--option`` came from, for an error message: the file's
        ``broker.yaml:12: server.listeners[0]``, or ``--option 'value'``."""
        return self.origins.get((option, value)) or f"--{option} {value!r}"

    def opt_auth(self, value: str) -> None:
        """Authentication backend: anonymous (default), or a plugin's NAME[:ARGS];
        repeatable: each is tried in order, the first that accepts the client wins."""
        self["auth"].append(value)

    def opt_listen(self, value: str) -> None:
        """A listener, [ADAPTER=]ENDPOINT (repeatable; default tcp:1883)."""
        self["listen"].append(value)

    opt_l = opt_listen

    def opt_admin_user(self, value: str) -> None:
        """A user who may remove any session over HTTP (DELETE /session); repeatable."""
        if not value:
            raise usage.UsageError("--admin-user: the user name is empty")
        self["admin-users"].append(value)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd a usage error is one line and exit status 2: twistd itself would
        print its whole --help before it."""
        import os
        import sys

        from mqtt_twisted.config.args import with_config

        self.argv = list(sys.argv[1:] if options is None else options)
        self.directory = os.getcwd()  # (before twistd's --rundir: where --workers start)
        try:
            super().parseOptions(with_config(self, self.argv))
        except usage.UsageError as e:
            if not is_twistd(getattr(self, "parent", None)):
                raise
            usage_exit(str(e))

    def getUsage(self, width: int | None = None) -> str:
        """Twisted's usage, then the listener keys each installed adapter declares."""
        usage_text = super().getUsage(width)
        return f"{usage_text}\n{keys_help(plugins_by_name(IAdapter), COMMON_KEYS, width or 80)}"

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"mqtt-twisted {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        adapters = plugins_by_name(IAdapter)
        if self["list-plugins"]:
            self._print_plugins(adapters)
            raise SystemExit(0)
        parent = getattr(self, "parent", None)
        if is_twistd(parent):
            check_twistd_options(parent)
            self._install_logging(parent)
        if self["topic-aliases"] not in ("off", "first", "lru"):
            raise usage.UsageError(
                f"--topic-aliases: {self['topic-aliases']!r} must be off, first or lru")
        if self["queue-full"] not in ("drop", "disconnect"):
            raise usage.UsageError(
                f"--queue-full: {self['queue-full']!r} must be drop or disconnect")
        if self["session-owner"] not in OWNER_MODES:
            raise usage.UsageError(
                f"--session-owner: {self['session-owner']!r} must be refuse or fresh")
        self["adapters"] = adapters
        listeners: list[ListenerSettings] = []
        keys = {name: normalize(getattr(a, "options", None)) for name, a in adapters.items()}
        examples = {name: a.defaultEndpoint for name, a in adapters.items()
                    if getattr(a, "defaultEndpoint", None)}
        for value in self["listen"] or [DEFAULT_LISTENER]:
            try:
                settings = parse_listener(value, "mqtt", keys, self["max-connections"],
                                          self["connect-timeout"], examples,
                                          self["request-timeout"], self["min-body-rate"],
                                          self["max-connection-rate"])
                # The endpoint as the adapter takes it (stream, udp:, its own check),
                # then the adapter's checkListener (TLS files that do not work, say).
                check_listener(adapters[settings.adapter], settings)
            except ValueError as e:
                raise usage.UsageError(f"{self.where('listen', value)}: {e}") from None
            if ("listen", value) in self.origins:  # makeService names it so
                self.origins[("listen", settings.describe())] = self.origins[("listen", value)]
            listeners.append(settings)
        self["listeners"] = listeners
        check_bridges(self.setdefault("bridges", []))
        self["store-plugin"] = self._choose(IStorePlugin, "store")
        try:
            workers.check(self["workers"], self["store"], listeners)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["workers"] > 1 and self["cluster"] is None:
            self["cluster"] = "auto"  # (the workers are a cluster's nodes)
        self["cluster-name"] = self._cluster_name()
        self["auth"] = self["auth"] or ["anonymous"]
        self["auth-plugins"] = [(*self._choose(IAuthPlugin, "auth", value), value)
                                for value in self["auth"]]
        names = [plugin.name for plugin, _, _ in self["auth-plugins"]]
        if "anonymous" in names and len(names) > 1:
            raise usage.UsageError(
                "--auth anonymous lets every client in: it cannot be combined with other "
                "--auth backends (use --allow-anonymous for clients without credentials)")


    def _install_logging(self, config: Any) -> None:
        """``--log-level`` and ``--log-format`` through twistd's own hook (its ``logger``
        option, which twistd reads when it starts logging, after this); a ``--logger``
        given to twistd wins (and these two options do not apply to it)."""
        try:
            logs.check_destination(config)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if not config.get("logger"):
            logs.use_for_twistd(config, self["log-level"], self["log-format"])

    def _cluster_name(self) -> str | None:
        """``--cluster NAME``: a node name (``auto`` is host:pid), on a Redis store only."""
        name = self["cluster"]
        if name is None:
            return None
        if not name or any(c.isspace() or c in "{}" for c in name):
            raise usage.UsageError(f"--cluster {name!r}: a node name is not empty and has "
                                   f"no spaces or braces")
        if _split_choice(self["store"])[0] not in ("redis", "rediss", "redis+sentinel",
                                                   "rediss+sentinel"):
            raise usage.UsageError(f"--cluster needs --store redis://HOST:PORT/DB (the nodes "
                                   f"share it), not --store {self['store']}")
        if name == "auto":
            import os
            import socket

            name = f"{socket.gethostname()}:{os.getpid()}"
        return name

    def _choose(self, interface: Any, option: str,
                value: str | None = None) -> tuple[Any, str]:
        value = self[option] if value is None else value
        name, argument = _split_choice(value)
        found = plugins_by_name(interface)
        if name not in found:
            known = ", ".join(sorted(found))
            raise usage.UsageError(f"{self.where(option, value)}: unknown {option} "
                                   f"{name!r} (known: {known})")
        return found[name], argument

    def _print_plugins(self, adapters: dict[str, Any]) -> None:
        for title, found in (("Adapters", adapters), ("Stores", plugins_by_name(IStorePlugin)),
                             ("Auth", plugins_by_name(IAuthPlugin))):
            print(f"{title}:")
            for name, plugin in sorted(found.items()):
                print(f"  {name:12} {plugin.description}")


def broker_settings(options: Options) -> BrokerSettings:
    return BrokerSettings(
        max_inflight=options["max-inflight"],
        receive_maximum=options["receive-maximum"],
        max_queued=options["max-queued"],
        max_queued_bytes=options["max-queued-bytes"],
        max_offline_queued_bytes=options["max-offline-queued-bytes"],
        max_client_rate=options["max-client-rate"],
        max_client_bytes_rate=options["max-client-bytes-rate"],
        max_inflight_bytes=options["max-inflight-bytes"],
        max_packet_size=options["max-packet-size"],
        connect_packet_size=options["connect-packet-size"],
        max_user_properties=options["max-user-properties"],
        max_user_property_bytes=options["max-user-property-bytes"],
        max_topic_levels=options["max-topic-levels"],
        max_topic_length=options["max-topic-length"],
        max_subscriptions=options["max-subscriptions"],
        max_retained_messages=options["max-retained"],
        max_retained_bytes=options["max-retained-bytes"],
        max_retained_per_client=options["max-retained-per-client"],
        max_retained_bytes_per_client=options["max-retained-bytes-per-client"],
        max_keepalive=options["max-keepalive"],
        persistent_session_expiry=options["persistent-session-expiry"],
        max_session_expiry=(None if options["max-session-expiry"] == 0xFFFFFFFF
                            else options["max-session-expiry"]),
        max_sessions=options["max-sessions"],
        queue_qos0_offline=bool(options["queue-qos0"]),
        queue_full=options["queue-full"],
        slow_consumer_grace=options["slow-consumer-grace"],
        outbound_topic_aliases=options["topic-aliases"],
        validate_utf8_payload=bool(options["validate-utf8"]),
        response_information=options["response-information"],
        session_owner=options["session-owner"],
        admin_users=frozenset(options["admin-users"]),
    )


def _from_plugin(option: str, value: str, make: Callable[[], Any],
                 options: Any = None) -> Any:
    """Call a plugin's factory; a bad argument (a missing file, say) ends twistd as a usage
    error does (one line, exit status 2): twistd does not catch errors of makeService.
    ``options`` says where the value came from (the configuration file's line)."""
    try:
        return make()
    except (ValueError, OSError, MQTTError, usage.UsageError) as e:
        where = getattr(options, "where", None)
        usage_exit(f"{where(option, value) if where else f'--{option} {value!r}'}: {e}")


def _acl_authorizer(path: str, backend: Any, options: Any = None) -> Any:
    """``--acl FILE``: the file's authorizer, and the auth backend's own one if it has
    one (both must allow).  A file that cannot be used is a one-line usage error."""
    from mqtt_twisted.auth.acl import AclAuthorizer, AllAuthorizers

    acl = _from_plugin("acl", path, lambda: AclAuthorizer.from_file(path), options)
    if backend is None:
        return acl
    return AllAuthorizers((acl, backend), reloadable=(acl,))


def _auth(options: Options, reactor: Any) -> tuple[Any, Any]:
    """(authenticator, authorizer) of the ``--auth`` backends: (None, None) for
    ``anonymous`` (nothing to check: no calls on the hot path), else an
    :class:`~mqtt_twisted.auth.chain.AuthChain` of them, which is both (or no authorizer
    when no backend has rules)."""
    from mqtt_twisted.auth.chain import AuthChain, Backend
    from mqtt_twisted.interfaces import IAuthorizer

    backends = []
    for plugin, argument, value in options["auth-plugins"]:
        made = _from_plugin("auth", value,
                            lambda p=plugin, a=argument: p.makeAuthenticator(reactor, a),
                            options)
        if plugin.name == "anonymous":
            return None, None  # alone (postOptions refuses it with others)
        backends.append(Backend(plugin.name, made,
                                made if IAuthorizer.providedBy(made) else None))
        if getattr(made, "grants_all_topics", False) and options["acl"] is None:
            # The name only: the argument may hold a secret.
            _log.warn("--auth {name}: every client it lets in may publish and subscribe to "
                      "every topic; restrict them with --acl FILE (jwt: topicsClaim=CLAIM)",
                      name=plugin.name)
    chain = AuthChain(backends, allow_anonymous=bool(options["allow-anonymous"]))
    # Backends without rules of their own (passwd, a plugin's) need no authorizer call per
    # PUBLISH and SUBSCRIBE: the chain is the authorizer only when one of them has rules.
    return chain, (chain if any(b.authorizer is not None for b in backends) else None)


def _warn_if_open(listeners: list[ListenerSettings], why: str) -> None:
    """The quick start (``--auth anonymous``, no ACL) is open to everyone, and so is
    ``--allow-anonymous`` without an ACL: say so once when a listener takes connections
    from other machines."""
    public = [s.describe() for s in listeners if not binds_loopback_only(s.endpoint)]
    if public:
        _log.warn("{listeners}: open to anyone who can reach it, who may connect, publish "
                  "and subscribe ({why}, no --acl). Lock it down with "
                  "--auth passwd:FILE (or jwt:...), --acl FILE, or interface=127.0.0.1.",
                  listeners=", ".join(public), why=why)


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the broker service and its listeners from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    logs.flush_per_turn(reactor)  # (twistd makes its log observer after this)
    from mqtt_twisted.service import BrokerService

    store_plugin, store_arg = options["store-plugin"]
    authenticator, authorizer = _auth(options, reactor)
    if options["acl"] is not None:
        authorizer = _acl_authorizer(options["acl"], authorizer, options)
    elif authenticator is None:
        _warn_if_open(options["listeners"], "--auth anonymous")
    elif options["allow-anonymous"]:
        _warn_if_open(options["listeners"], "--allow-anonymous")
    service = BrokerService(
        reactor,
        _from_plugin("store", options["store"],
                     lambda: store_plugin.makeStore(reactor, store_arg), options),
        broker_settings(options),
        authenticator,
        authorizer,
        options["connect-timeout"],
        options["sys-interval"],
    )
    worker = workers.this_worker()
    count = options.get("workers") or 1
    if count > 1:
        share_ports(probe=worker is None)  # every listener, in every worker
    if worker is not None:
        workers.ignore_interrupts()
    if options.get("cluster-name"):
        service.joinCluster(workers.node_name(options["cluster-name"], options.get("cluster"),
                                              worker.index if worker else 0)
                            if count > 1 else options["cluster-name"])
    for listener in options["listeners"]:
        adapter = options["adapters"][listener.adapter]
        # An adapter refuses a bad listener key of its own (http=tcp:8081:replay=x) here.
        _from_plugin("listen", listener.describe(),
                     lambda a=adapter, s=listener: service.addListener(a, s), options)
    if options.get("bridges") and worker is None:  # (worker 0's, not every worker's)
        from mqtt_twisted.bridge import add_bridges

        _from_plugin("bridge", ", ".join(b.endpoint for b in options["bridges"]),
                     lambda: add_bridges(service, options["bridges"], reactor), options)
    service.reload_on_sighup = True  # re-read TLS certificates on SIGHUP
    if options.get("config"):
        from mqtt_twisted.config.reload import ConfigReloader

        service.reloaders.append(ConfigReloader(service, options))  # and the file
    config = getattr(options, "parent", None)
    if is_twistd(config):
        supervisor = None
        if count > 1 and worker is None:
            argv = list(getattr(options, "argv", []))
            directory = getattr(options, "directory", None)
            supervisor = workers.Supervisor(
                reactor, count,
                lambda index: workers.worker_command(argv, config, index, directory),
                directory=directory, timeout=options["worker-timeout"])
            service.sighup_followers.append(supervisor.reload)
        run = TwistdRun(service, config, supervisor, worker)
        if count > 1:  # (a scrape of the shared /metrics answers for every worker)
            from mqtt_twisted.adapters.workermetrics import share

            share(reactor, service, worker.index if worker else 0, count).setServiceParent(run)
        return run
    return service
