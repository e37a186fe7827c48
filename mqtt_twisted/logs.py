"""The broker's log output: ``--log-level``, ``--log-format text|json`` and the twistd hook.

Everything in the broker logs through ``twisted.logger`` with structured fields
(``log.info("...", client_id=..., peer=...)``).  This module decides what reaches
the log file and how each event looks there:

- ``text``: one short line per event, ``2026-12-02T02:05:45.123Z info [clients] ...``
  (UTC; the namespace without ``mqtt_twisted.`` and without the class name);
- ``json``: one JSON object per line, ``timestamp`` (ISO 8601, UTC), ``level``,
  ``namespace``, ``event`` (the text) and the event's own fields at the top level,
  for a log shipper (docs/logging.md).

One :class:`~twisted.logger.LogLevelFilterPredicate` filters every observer this
module builds, so :func:`set_log_level` changes the level of a running broker (the
YAML configuration's SIGHUP reload calls it).  :func:`debugging` is the one cheap
check a per-message debug line costs when the level is higher: a global read, no
event built.

Under twistd the observer goes in through twistd's own hook: ``tap.py`` sets
twistd's ``logger`` option (what ``twistd --logger`` sets) to :func:`twistd_observer`,
which writes where twistd would have (stdout with ``-n``, ``--logfile``, rotated on
SIGUSR1 as twistd does; syslog with ``--syslog``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from time import time
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

from mqtt_twisted.turns import after_turn

#: ``--log-level`` values, quietest last.
LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}
#: ``--log-format`` values.
FORMATS = ("text", "json")
#: Keys of a JSON line that an event's own field of the same name cannot replace
#: (such a field is written as ``field_NAME``).
RESERVED = frozenset(("timestamp", "level", "namespace", "event", "traceback"))
#: What a twisted.python.log (legacy) event carries besides its text: not fields.
_LEGACY_KEYS = frozenset(("message", "isError", "system", "time", "format", "why", "failure",
                          "printed"))

#: The level filter of every observer made here: one object, so that changing it
#: changes them all.
#: A level's rank: NamedConstant's own ordering walks every level per comparison
#: (about ten Python calls), and two comparisons were paid per line written.
_RANK = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}


class _RankedPredicate(LogLevelFilterPredicate):
    """``LogLevelFilterPredicate`` comparing levels by their rank (same answers), each
    namespace's lowest rank remembered (Twisted walks the namespace's parents for
    every event) until the levels change."""

    def __init__(self, defaultLogLevel: LogLevel = LogLevel.info) -> None:
        self._floors: dict[str, int] = {}
        super().__init__(defaultLogLevel)

    def __call__(self, event: Any) -> Any:
        level = event.get("log_level", None)
        if level is None:
            return PredicateResult.no
        namespace = event.get("log_namespace", "")
        if not namespace:
            return PredicateResult.no
        floor = self._floors.get(namespace)
        if floor is None:
            floor = self._floors[namespace] = _RANK[self.logLevelForNamespace(namespace)]
        if _RANK.get(level, -1) < floor:
            return PredicateResult.no
        return PredicateResult.maybe

    def setLogLevelForNamespace(self, namespace: str, level: LogLevel) -> None:
        self._floors.clear()
        super().setLogLevelForNamespace(namespace, level)

    def clearLogLevels(self) -> None:
        self._floors.clear()
        super().clearLogLevels()


_predicate = _RankedPredicate(LogLevel.info)


class _Switch:
    """A flag the message path reads as an attribute: no call per message."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


#: Whether debug lines are written (``if DEBUG.on:`` before building a per-message
#: event); set with the level.
DEBUG = _Switch()
_log = Logger(namespace="mqtt_twisted.logs")


def parse_level(name: str) -> LogLevel:
    """``--log-level``'s value as a LogLevel; ValueError names the choices."""
    level = LEVELS.get(name.strip().lower()) if isinstance(name, str) else None
    if level is None:
        raise ValueError(f"{name!r} must be one of {', '.join(LEVELS)}")
    return level


def parse_format(name: str) -> str:
    """``--log-format``'s value; ValueError names the choices."""
    fmt = name.strip().lower() if isinstance(name, str) else name
    if fmt not in FORMATS:
        raise ValueError(f"{name!r} must be text or json")
    return fmt  # type: ignore[no-any-return]


def set_log_level(level: str | LogLevel, announce: bool = False) -> LogLevel:
    """Change the level of every observer made here, at once (start-up, SIGHUP);
    return the level it replaces.  ``level`` is a LogLevel or a ``--log-level`` name;
    ``announce`` (a reload) logs the change, as a ``config_reload`` line."""
    new = parse_level(level) if isinstance(level, str) else level
    old = _predicate.defaultLogLevel
    if announce and new != old:  # info, or the old level if higher: it is written
        _log.emit(max(old, LogLevel.info), "Log level changed from {old} to {new}",
                  action="config_reload", old=old.name, new=new.name)
    _predicate.defaultLogLevel = new
    _predicate.clearLogLevels()
    DEBUG.on = new <= LogLevel.debug
    return old  # type: ignore[no-any-return]



def log_level() -> LogLevel:
    """The level in force."""
    return _predicate.defaultLogLevel  # type: ignore[no-any-return]


def enabled(level: LogLevel) -> bool:
    """Whether a line at ``level`` is written: a client event not written is not built."""
    return _RANK[level] >= _RANK[_predicate.defaultLogLevel]


def debugging() -> bool:
    """Whether debug lines are written: check it before building a per-message event."""
    return DEBUG.on


# --- formats ------------------------------------------------------------------------------


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds: ``2026-12-02T02:05:45.123Z`` (the text of the
    whole second is kept: datetime's isoformat costs more than the rest of a line)."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1e6)  # rounded as datetime rounds, then cut
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if whole != _second[0]:
        _second[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = whole
    millis = micros // 1000
    if millis >= 0:  # (the table's text: a ``:03d`` format is most of this call's cost)
        return _second[1] + _MILLIS[millis]
    return f"{_second[1]}.{millis:03d}Z"


#: Milliseconds -> the timestamp's tail, ``.123Z``.
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def short_namespace(namespace: str) -> str:
    """``mqtt_twisted.core.connection.MQTTConnection`` -> ``core.connection``: what a
    text line names (the JSON line keeps the whole namespace)."""
    if namespace.startswith("mqtt_twisted."):
        namespace = namespace[len("mqtt_twisted."):]
    head, _, last = namespace.rpartition(".")
    if head and last[:1].isupper():
        namespace = head
    return namespace


def _level_name(event: dict) -> str:
    level = event.get("log_level")
    return level.name if level is not None else "info"


def message(event: dict) -> str:
    """The event's text: ``str.format_map`` (C, a few microseconds) for the usual
    format, twisted's ``formatEvent`` (a Python formatter, ten times slower, with the
    ``{call()}`` syntax) for anything else, or when format_map fails."""
    fmt = event.get("log_format")
    if fmt is not None and "()" not in fmt:
        try:
            return fmt.format_map(event)  # type: ignore[no-any-return]
        except Exception:
            pass
    return formatEvent(event)


def _text(event: dict) -> str:
    """The event's message, and a failure's traceback after it."""
    text = message(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}".rstrip("\n")
    return text


def fields_of(event: dict) -> dict[str, Any]:
    """The event's own fields: not twisted's ``log_*`` keys, nor a legacy event's."""
    skip = _LEGACY_KEYS if event.get("log_namespace") == "log_legacy" else ()
    fields = {}
    for key, value in event.items():
        if key[:4] == "log_" or key in skip:
            continue
        fields["field_" + key if key in RESERVED else key] = value
    return fields


def _plain(value: Any) -> Any:
    """A field's value as JSON can hold it: bytes as text, anything else by str()."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


#: One encoder for every line (json.dumps with options builds one per call).
_encoder = json.JSONEncoder(default=_plain, ensure_ascii=False, separators=(",", ":"))


def json_line(event: dict) -> str:
    """One JSON object and a newline (see the module's docstring)."""
    failure = event.get("log_failure")
    line: dict[str, Any] = {
        "timestamp": timestamp(event.get("log_time") or 0.0),
        "level": _level_name(event),
        "namespace": event.get("log_namespace") or "",
        "event": message(event),
    }
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    line.update(fields_of(event))
    return _encoder.encode(line) + "\n"


#: Namespace -> its short form (:func:`short_namespace`): a process logs under a few
#: dozen namespaces, and a connection's two lines under one.
_SHORT: dict[str, str] = {}
#: Level -> its name as a text line pads it.
_PADDED = {level: f"{level.name:<5}" for level in LogLevel.iterconstants()}


def text_line(event: dict) -> str:
    """``TIMESTAMP LEVEL [NAMESPACE] TEXT`` and a newline (a failure's traceback after)."""
    namespace = event.get("log_namespace") or ""
    if namespace == "log_legacy":
        namespace = event.get("log_system") or event.get("system") or "-"
    short = _SHORT.get(namespace)
    if short is None:
        short = short_namespace(namespace)
        if len(_SHORT) < 4096:
            _SHORT[namespace] = short
    padded = _PADDED.get(event.get("log_level")) or f"{_level_name(event):<5}"
    fmt = event.get("log_format")
    text = None
    if fmt is not None and "()" not in fmt and "log_failure" not in event:
        try:  # (message's usual case, inline: a client's lines are all this)
            text = fmt.format_map(event)
        except Exception:
            pass
    if text is None:
        text = _text(event)
    return f"{timestamp(event.get('log_time') or 0.0)} {padded} [{short}] {text}\n"


class LineFormat:
    """The formatter of an observer: text or JSON, switchable while running."""

    def __init__(self, fmt: str = "text") -> None:
        self.format = parse_format(fmt)

    def __call__(self, event: dict) -> str:
        try:
            return json_line(event) if self.format == "json" else text_line(event)
        except Exception as e:  # a log line must never be what breaks the broker
            return f"{timestamp(event.get('log_time') or 0.0)} error [logs] unformattable " \
                   f"event {event.get('log_format')!r}: {e!r}\n"


#: The formatter of every file observer made here (one, as the predicate).
line_format = LineFormat()


def set_log_format(fmt: str) -> str:
    """Switch every file observer made here to ``text`` or ``json``; return the old one."""
    old, line_format.format = line_format.format, parse_format(fmt)
    return old


#: Lines below this rank are flushed with the rest of their reactor turn's lines; a
#: warning or an error is flushed at once (with what came before it).
_FLUSH_AT_ONCE = _RANK[LogLevel.warn]


class TurnFlushedLogObserver(FileLogObserver):
    """``FileLogObserver`` that writes a reactor turn's lines at once, not each alone.

    A connection cycle writes two info lines, each a flushed write (a system call) of
    its own; here a turn's lines are kept and written together, with one flush, when
    the turn's events are handled (``turns.after_turn``).  A warning or an error is
    written at once (after the lines before it); so is every line while the reactor is
    not running (start-up, shutdown, no reactor given), and what is left at shutdown
    goes then.  A process killed outright loses at most its last turn's info lines."""

    def __init__(self, out: IO[Any], formatEvent: Any, reactor: Any = None) -> None:
        super().__init__(out, formatEvent)
        self.reactor = reactor
        self._lines: list[str] = []
        if reactor is not None:
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: Any) -> None:
        text = self.formatEvent(event)
        if text:
            self.keep(text, _RANK.get(event.get("log_level"), _FLUSH_AT_ONCE))

    def keep(self, text: str, rank: int) -> None:
        """Keep a line of level ``rank`` for the turn's write (at once: see above)."""
        lines = self._lines
        lines.append(text)
        reactor = self.reactor
        if reactor is None or not reactor.running or rank >= _FLUSH_AT_ONCE:
            self.flush()
        elif len(lines) == 1:  # (the turn's first: its flush is not due yet)
            after_turn(reactor, TurnFlushedLogObserver.flush, self)

    def flush(self) -> None:
        """Write and flush the lines kept (in one write; nothing if there are none)."""
        lines = self._lines
        if not lines:
            return
        text = lines[0] if len(lines) == 1 else "".join(lines)
        lines.clear()
        out = self._outFile
        out.write(text if self._encoding is None else text.encode(self._encoding))
        out.flush()


@implementer(ILogObserver)
class LevelFilteredObserver:
    """``FilteringLogObserver(observer, [the level predicate])``, the predicate called
    directly: Twisted's goes through a ``partial`` and a loop over its predicates (three
    Python calls more per line written).  The same answer: an event the predicate says
    ``no`` to is dropped, any other goes on."""

    __slots__ = ("observer",)

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: Any) -> None:
        if _predicate(event) is PredicateResult.no:
            return
        if "log_trace" in event:
            event["log_trace"].append((self, self.observer))
        self.observer(event)


def write_direct(logger: Logger, level: LogLevel, fmt: str, fields: dict) -> bool:
    """:func:`write_line` of ``fmt`` filled from ``fields`` (False, nothing written: the
    format fails, as ``text_line`` would then take the event's way)."""
    try:
        text = fmt.format_map(fields)
    except Exception:
        return False
    return write_line(logger, level, text)


def write_line(logger: Logger, level: LogLevel, text: str) -> bool:
    """Write ``text``, an event's message, as a text line straight into the turn's lines
    of the observer made here (True), when that is all ``logger.emit`` would come to:
    ``logger`` publishes to a publisher whose only observer is one made here, writing
    text (twistd's, as ``tap.py`` sets it up).  The same line, without the event dict,
    the publisher, the filter and the formatter (about seven Python calls of a client's
    connect or disconnect line), and the message made by its caller: an f-string,
    not a dict of fields and its format's ``format_map`` (``core/clientlog.py``: the
    two lines 67k -> 40k instructions, the connect cycle 304k -> 276k).  False: emit the event instead
    (another observer, JSON, a namespace not seen yet); a line below the namespace's
    level is dropped (True)."""
    observers = getattr(logger.observer, "_observers", None)
    if observers is None or len(observers) != 1:
        return False
    sole = observers[0]
    if type(sole) is not LevelFilteredObserver:
        return False
    out = sole.observer
    if (type(out) is not TurnFlushedLogObserver or out.formatEvent is not line_format
            or line_format.format != "text"):
        return False
    namespace = logger.namespace
    floor = _predicate._floors.get(namespace)
    short = _SHORT.get(namespace)
    if floor is None or short is None:  # (the event's way learns both, once)
        return False
    rank = _RANK[level]
    if rank < floor:
        return True  # (filtered out: nothing to write)
    out.keep(f"{timestamp(time())} {_PADDED[level]} [{short}] {text}\n", rank)
    return True


#: The reactor whose turns the twistd observer flushes with (:func:`flush_per_turn`).
_reactor: list[Any] = [None]


def flush_per_turn(reactor: Any) -> None:
    """Have the observer twistd asks for (made after the service: ``tap.makeService``
    calls this) flush its lines once per turn of ``reactor``."""
    _reactor[0] = reactor


def observer(out: IO[Any], level: str | LogLevel = "info", fmt: str = "text",
             reactor: Any = None) -> ILogObserver:
    """A filtered observer writing one line per event to ``out`` (sets the shared
    level and format: the last call wins, as for one broker per process); with a
    ``reactor``, flushed once per turn of it (:class:`TurnFlushedLogObserver`)."""
    set_log_level(level)
    set_log_format(fmt)
    return LevelFilteredObserver(TurnFlushedLogObserver(out, line_format, reactor))


# --- twistd -------------------------------------------------------------------------------


def check_destination(config: Any) -> None:
    """ValueError for a destination twistd would refuse only after starting: a daemon
    cannot log to stdout."""
    if config.get("logfile") == "-" and not config.get("nodaemon") and not config.get("syslog"):
        raise ValueError("a daemon cannot log to stdout (--logfile -): give -n, or "
                         "--logfile FILE")


#: What :func:`twistd_logger` builds from: twistd's options, the level and the format.
_twistd_settings: tuple[Any, str, str] | None = None
#: The dotted name twistd's ``logger`` option is given (twistd imports it by name).
TWISTD_LOGGER = "mqtt_twisted.logs.twistd_logger"


def use_for_twistd(config: Any, level: str, fmt: str) -> None:
    """Have twistd log through :func:`twistd_logger` (its ``logger`` option, which it
    resolves by name after our options and calls once it starts logging)."""
    global _twistd_settings
    _twistd_settings = (config, level, fmt)
    config["logger"] = TWISTD_LOGGER


def twistd_logger() -> ILogObserver:
    """The observer twistd calls for (see :func:`use_for_twistd`)."""
    if _twistd_settings is None:  # ``twistd --logger mqtt_twisted.logs.twistd_logger``
        return observer(sys.stdout)
    return twistd_observer(*_twistd_settings)


def twistd_observer(config: Any, level: str, fmt: str) -> ILogObserver:
    """Where twistd would log (``UnixAppLogger``): syslog (``--syslog``, text only),
    stdout (``-n`` without ``--logfile``, or ``--logfile -``), else ``--logfile``
    (default ``twistd.log``), rotated on SIGUSR1; filtered by ``level``."""
    if config.get("syslog"):
        from twisted.python import syslog

        set_log_level(level)
        legacy = LegacyLogObserverWrapper(syslog.SyslogObserver(config.get("prefix") or
                                                                "twisted").emit)
        return FilteringLogObserver(legacy, [_predicate])
    name = config.get("logfile") or ""
    if name == "-" or (config.get("nodaemon") and not name):
        return observer(sys.stdout, level, fmt, _reactor[0])
    from twisted.python.logfile import LogFile

    out = LogFile.fromFullPath(name or "twistd.log")
    _rotate_on_sigusr1(out)
    return observer(out, level, fmt, _reactor[0])


def _rotate_on_sigusr1(out: Any) -> None:
    """As twistd does for its own log file: SIGUSR1 rotates it, unless taken."""
    import signal

    if not hasattr(signal, "SIGUSR1") or signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)
