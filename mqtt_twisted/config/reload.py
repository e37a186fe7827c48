"""SIGHUP: the configuration file read again; what changed is applied, or named.

The command line of the running broker is parsed again with the file re-read, through
the very checks of start-up (a broken file changes nothing and says why, with its line).
Each key whose value changed is then either applied at once (a :class:`~.keys.Key` with
``live``: a BrokerSettings field, read when it is next used, so new connections and
new messages get it; or an option with a hook in :data:`LIVE_HOOKS`; or a listener's
connection limit, which its adapter reads from the listener's settings at every
accept), or logged as needing a restart (listeners added, removed or changed otherwise,
store, auth backends, cluster, the other listener defaults).
The files themselves (password, ACL, TLS certificates) are re-read by
``BrokerService.reload`` before this runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.usage import UsageError

from mqtt_twisted import logs
from mqtt_twisted.config.keys import Key
from mqtt_twisted.config.schema import active_keys

#: option -> ``hook(service, value)`` applying a changed option that is no BrokerSettings
#: field: the log level and format change without a restart.
LIVE_HOOKS: dict[str, Callable[[Any, Any], None]] = {
    "log-level": lambda service, level: logs.set_log_level(level, announce=True),
    "log-format": lambda service, fmt: logs.set_log_format(fmt),
}


#: Options whose changes reach the running listeners through their settings objects.
LISTENER_OPTIONS = ("listen", "max-connections")


def _listener(settings: Any, *, limit: bool = True) -> tuple[Any, ...]:
    """A listener's settings, comparable; without ``maxConnections`` if not ``limit``."""
    fields = dataclasses.asdict(settings)
    if not limit:
        fields.pop("maxConnections")
    return tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                        for k, v in fields.items()))


def _value(options: Any, option: str) -> Any:
    """An option's parsed value, comparable between two parses."""
    if option == "listen":
        return tuple(_listener(s) for s in options["listeners"])
    if option == "admin-user":
        return tuple(options["admin-users"])
    if option == "auth":
        return tuple(options["auth"])
    return options.get(option)


def _section(key: Key) -> str:
    """How a change is named: ``storage`` for its two keys, else the key."""
    return key.path.partition(".")[0] if key.option == "store" else key.path


class ConfigReloader:
    """Called by ``BrokerService.reload`` when the broker was started with ``--config``."""

    log = Logger(namespace="mqtt_twisted.config")

    def __init__(self, service: Any, options: Any) -> None:
        self.service = service
        self.options_class = type(options)
        self.argv = list(options.argv)
        self.path = options["config"]
        #: The settings objects the running listeners read their connection limit from.
        self.listeners = list(options["listeners"])
        #: What the running broker uses, by option.
        self.applied = {key.option: _value(options, key.option)
                        for key in active_keys(self.options_class)}

    def __call__(self) -> None:
        new = self.options_class()
        try:
            new.parseOptions(self.argv)
        except UsageError as e:
            self.log.error("{path} not reloaded, the configuration in use stays: {error}",
                           path=self.path, error="; ".join(str(e).splitlines()))
            return
        from mqtt_twisted.tap import broker_settings

        settings = broker_settings(new)
        applied: list[str] = []
        restart: list[str] = []
        seen: set[str] = set()
        limits_only = self._connection_limits(new["listeners"], applied)
        for key in active_keys(self.options_class):
            old, value = self.applied[key.option], _value(new, key.option)
            if old == value or key.option in seen:
                continue
            seen.add(key.option)
            if key.option in LISTENER_OPTIONS and limits_only:
                self.applied[key.option] = value  # applied above, listener by listener
                if key.option != "listen":
                    applied.append(f"{key.path} {_show(old)} -> {_show(value)}")
                continue
            if key.live is not None:
                setattr(self.service.broker.settings, key.live, getattr(settings, key.live))
            elif key.option in LIVE_HOOKS:
                LIVE_HOOKS[key.option](self.service, new[key.option])
            else:
                restart.append(_section(key))
                continue
            self.applied[key.option] = value
            applied.append(f"{key.path} {_show(old)} -> {_show(value)}")
        self.log.info("Configuration reloaded from {path}: {changes}", path=self.path,
                      changes="; ".join(applied) if applied else "nothing to apply")
        for name in restart:
            self.log.warn("{key} changed in {path}; restart to apply", key=name,
                          path=self.path)

    def _connection_limits(self, listeners: list[Any], applied: list[str]) -> bool:
        """If the listeners differ from the running ones in their connection limits only,
        set the new limits on the running listeners' settings (read at every accept) and
        return True; otherwise change nothing (a restart applies it)."""
        if len(listeners) != len(self.listeners) or any(
                _listener(old, limit=False) != _listener(new, limit=False)
                for old, new in zip(self.listeners, listeners)):
            return False
        for old, new in zip(self.listeners, listeners):
            if old.maxConnections != new.maxConnections:
                applied.append(f"{old.describe()} max_connections {old.maxConnections} -> "
                               f"{new.maxConnections}")
                old.maxConnections = new.maxConnections
        return True


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return "none" if value is None else str(value)
