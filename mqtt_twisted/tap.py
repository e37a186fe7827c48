"""``twistd mqttbroker``: command-line options turned into a service tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from mqtt_twisted import __version__
from mqtt_twisted._twistd import TwistdRun, check_twistd_options, is_twistd
from mqtt_twisted.adapters.listener import ListenerSettings, check_endpoint, parse_listener
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import MQTTError
from mqtt_twisted.interfaces import IAdapter, IAuthPlugin, IStorePlugin
from mqtt_twisted.plugins import plugins_by_name

DEFAULT_LISTENER = "tcp:1883"


def _split_choice(value: str) -> tuple[str, str]:
    """'redis://h:1/0' -> ('redis', '//h:1/0'); 'memory' -> ('memory', '')."""
    name, _, argument = value.partition(":")
    return name, argument


class Options(usage.Options):
    """Options of ``twistd mqttbroker``."""

    synopsis = "[options]"
    longdesc = (
        "Run the mqtt-twisted broker. --listen repeats; its value is [ADAPTER=]ENDPOINT, a "
        "Twisted server endpoint with an optional adapter name in front (MQTT when none is "
        "given): tcp:1883, tcp:1883:interface=127.0.0.1, "
        "ssl:8883:privateKey=key.pem:certKey=cert.pem, unix:/run/mqtt.sock, ws=tcp:8080. "
        "Listener keys maxConnections=N and connectTimeout=SECONDS may be added to the "
        "endpoint. Default: --listen tcp:1883."
    )

    optParameters = [
        ["store", None, "memory", "Store backend: memory, or a plugin's NAME[:ARGS]."],
        ["auth", None, "anonymous", "Authentication backend: anonymous, or a plugin's NAME[:ARGS]."],
        ["max-connections", None, 0, "Default connection limit per listener (0: none).", int],
        ["connect-timeout", None, 10.0, "Seconds a client may take to send CONNECT (0: none).",
         float],
        ["max-inflight", None, 20, "QoS 1/2 messages in flight to one client.", int],
        ["max-queued", None, 1000,
         "Messages queued per session; when full the oldest is dropped.", int],
        ["max-packet-size", None, 268_435_460, "Largest packet accepted, in bytes.", int],
        ["max-keepalive", None, 0, "Largest keep alive granted in seconds (0: no limit).", int],
        ["persistent-session-expiry", None, None,
         "Seconds a clean-session-0 (v3.1.1) session outlives its client (default: forever).",
         float],
        ["max-session-expiry", None, None, "Cap on MQTT 5 session expiry intervals, seconds.",
         float],
        ["sys-interval", None, 10.0, "Seconds between $SYS/broker/... updates (0: none).",
         float],
        ["topic-aliases", None, "off",
         "Outbound MQTT 5 topic aliases: off, first (first topics sent) or lru."],
        ["response-information", None, None,
         "RESPONSE_INFORMATION for MQTT 5 clients that ask; {client_id} is replaced."],
    ]
    optFlags = [
        ["queue-qos0", None, "Queue QoS 0 messages for offline persistent sessions."],
        ["validate-utf8", None,
         "Refuse (0x99) payloads that claim to be UTF-8 (format indicator 1) but are not."],
        ["list-plugins", None, "List the adapters, stores and auth backends found, and exit."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """A listener, [ADAPTER=]ENDPOINT (repeatable; default tcp:1883)."""
        self["listen"].append(value)

    opt_l = opt_listen

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
        for name in ("max-connections", "max-inflight", "max-queued", "max-packet-size",
                     "max-keepalive"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        if self["max-inflight"] < 1 or self["max-inflight"] > 65535:
            raise usage.UsageError("--max-inflight must be 1..65535")
        if self["topic-aliases"] not in ("off", "first", "lru"):
            raise usage.UsageError("--topic-aliases must be off, first or lru")
        if self["sys-interval"] < 0:
            raise usage.UsageError("--sys-interval must not be negative")
        self["adapters"] = adapters
        listeners: list[ListenerSettings] = []
        keys = {name: list(getattr(a, "options", {}) or {}) for name, a in adapters.items()}
        examples = {name: a.defaultEndpoint for name, a in adapters.items()
                    if getattr(a, "defaultEndpoint", None)}
        for value in self["listen"] or [DEFAULT_LISTENER]:
            try:
                settings = parse_listener(value, "mqtt", keys, self["max-connections"],
                                          self["connect-timeout"], examples)
                check_endpoint(settings.endpoint)
                check = getattr(adapters[settings.adapter], "checkListener", None)
                if check is not None:
                    check(settings)  # e.g. TLS certificate files that do not work
            except ValueError as e:
                raise usage.UsageError(f"--listen {value!r}: {e}") from None
            listeners.append(settings)
        self["listeners"] = listeners
        self["store-plugin"] = self._choose(IStorePlugin, "store")
        self["auth-plugin"] = self._choose(IAuthPlugin, "auth")

    def _choose(self, interface: Any, option: str) -> tuple[Any, str]:
        name, argument = _split_choice(self[option])
        found = plugins_by_name(interface)
        if name not in found:
            known = ", ".join(sorted(found))
            raise usage.UsageError(f"unknown --{option} {name!r} (known: {known})")
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
        max_queued=options["max-queued"],
        max_packet_size=options["max-packet-size"],
        max_keepalive=options["max-keepalive"],
        persistent_session_expiry=options["persistent-session-expiry"],
        max_session_expiry=options["max-session-expiry"],
        queue_qos0_offline=bool(options["queue-qos0"]),
        outbound_topic_aliases=options["topic-aliases"],
        validate_utf8_payload=bool(options["validate-utf8"]),
        response_information=options["response-information"],
    )


def _from_plugin(option: str, value: str, make: Callable[[], Any]) -> Any:
    """Call a plugin's factory; a bad argument (a missing file, say) ends twistd with a
    one-line message instead of a traceback: twistd does not catch errors of makeService."""
    try:
        return make()
    except (ValueError, OSError, MQTTError, usage.UsageError) as e:
        raise SystemExit(f"mqttbroker: bad --{option} {value!r}: {e}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the broker service and its listeners from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from mqtt_twisted.interfaces import IAuthorizer
    from mqtt_twisted.service import BrokerService

    store_plugin, store_arg = options["store-plugin"]
    auth_plugin, auth_arg = options["auth-plugin"]
    authenticator = _from_plugin("auth", options["auth"],
                                 lambda: auth_plugin.makeAuthenticator(reactor, auth_arg))
    authorizer = authenticator if IAuthorizer.providedBy(authenticator) else None
    if auth_plugin.name == "anonymous":
        # Nothing to check: skip the calls on the hot path altogether.
        authenticator = authorizer = None
    service = BrokerService(
        reactor,
        _from_plugin("store", options["store"],
                     lambda: store_plugin.makeStore(reactor, store_arg)),
        broker_settings(options),
        authenticator,
        authorizer,
        options["connect-timeout"],
        options["sys-interval"],
    )
    for listener in options["listeners"]:
        adapter = options["adapters"][listener.adapter]
        # An adapter refuses a bad listener key of its own (http=tcp:8081:replay=x) here.
        _from_plugin("listen", listener.describe(),
                     lambda a=adapter, s=listener: service.addListener(a, s))
    service.reload_on_sighup = True  # re-read TLS certificates on SIGHUP
    config = getattr(options, "parent", None)
    if is_twistd(config):
        return TwistdRun(service, config)
    return service
