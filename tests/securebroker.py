"""A real broker with TLS and WebSocket listeners, and paho clients for them.

``SecureBrokerTestCase`` starts a :class:`BrokerService` with the listeners a test
asks for (through the real adapters, as ``--listen`` does) on ephemeral loopback
ports; ``SecurePaho`` is the reactor-friendly paho client of ``tests/pahoclient.py``
over TLS and/or WebSocket.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.interfaces import IAdapter
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from tests.pahoclient import PahoClient

_CALLBACKS = ("on_connect", "on_disconnect", "on_message", "on_subscribe", "on_unsubscribe",
              "on_publish")


class SecurePaho(PahoClient):
    """PahoClient over TLS (``ca`` given) and/or WebSocket (``transport="websockets"``)."""

    def __init__(self, reactor: Any, port: int, client_id: str = "", *,
                 transport: str = "tcp", path: str = "/mqtt", ca: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 username: str | None = None, password: str | None = None,
                 protocol: int = mqtt.MQTTv311, headers: dict[str, str] | None = None) -> None:
        super().__init__(reactor, port, client_id, username=username, password=password)
        plain = self.client
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
            transport=transport, reconnect_on_failure=False,
            **({"clean_session": True} if protocol != mqtt.MQTTv5 else {}),
        )
        for name in _CALLBACKS:
            setattr(self.client, name, getattr(plain, name))
        if username is not None:
            self.client.username_pw_set(username, password)
        if transport == "websockets":
            self.client.ws_set_options(path=path, headers=headers)
        if ca is not None:
            self.client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)


def listener_settings(value: str) -> Any:
    """``--listen`` parsing of ``value``, with the adapters' own keys."""
    adapters = plugins_by_name(IAdapter)
    keys = {name: list(getattr(a, "options", {}) or {}) for name, a in adapters.items()}
    return adapters, parse_listener(value, "mqtt", keys)


@inlineCallbacks
def start_service(reactor: Any, *listeners: str, authenticator: Any = None,
                  authorizer: Any = None, connect_timeout: float = 10.0) -> Any:
    """A started BrokerService listening on each ``--listen`` value; fires with
    ``(service, [listener services])`` once every listener listens."""
    service = BrokerService(reactor, MemoryStore(reactor), None, authenticator,
                            authorizer, connect_timeout, sys_interval=0)
    built = []
    for value in listeners:
        adapters, settings = listener_settings(value)
        check = getattr(adapters[settings.adapter], "checkListener", None)
        if check is not None:
            check(settings)
        built.append(service.addListener(adapters[settings.adapter], settings))
    service.startService()
    yield service.ready
    for listener in built:
        yield listener.whenListening()
    return service, built


def port_of(listener: Any) -> int:
    return listener.port.getHost().port


class SecureBrokerTestCase(unittest.TestCase):
    """A test case that starts brokers with ``self.start(...)`` and stops them after."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    @inlineCallbacks
    def start(self, *listeners: str, **kwargs: Any) -> Any:
        service, built = yield start_service(self.reactor, *listeners, **kwargs)
        self.addCleanup(service.stopService)
        self.service = service
        return [port_of(listener) for listener in built]

    @inlineCallbacks
    def paho(self, port: int, client_id: str = "", connect: bool = True,
             **kwargs: Any) -> Any:
        """A SecurePaho (stopped after the test), connected (CONNACK 0) unless told otherwise."""
        client = SecurePaho(self.reactor, port, client_id, **kwargs)
        self.addCleanup(client.stop)
        if connect:
            result = yield client.connect()
            self.assertEqual(result.rc, 0)
        return client


class ChildProcess(ProcessProtocol):
    """A child process's output, ``seen(text)`` (fires when the output first holds ``text``)
    and ``ended`` (fires with the exit code, None if a signal ended it)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.finished = False
        self.signal: int | None = None
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def seen(self, text: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((text.encode(), d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self._waiting):
            if item[0] in self.output:
                self._waiting.remove(item)
                item[1].callback(None)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.finished = True
        self.signal = getattr(reason.value, "signal", None)
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(code)
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(AssertionError(f"process ended (exit {code}) before the expected "
                                     f"output:\n{self.text}"))

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


def spawn(case: Any, reactor: Any, args: list[str], env: dict[str, str] | None = None,
          **kwargs: Any) -> ChildProcess:
    """Start ``args``; the test kills it (SIGKILL) at cleanup if it is still running."""
    proc = ChildProcess()
    transport = reactor.spawnProcess(proc, args[0], args, env=env, **kwargs)
    proc.transport = transport

    def kill() -> Any:
        if not proc.finished:
            transport.signalProcess("KILL")
        return proc.ended

    case.addCleanup(kill)
    return proc


def within(d: Deferred[Any], reactor: Any, seconds: float, what: str) -> Deferred[Any]:
    """``d`` failing with a message naming ``what`` after ``seconds``."""
    from twisted.internet.defer import CancelledError, TimeoutError

    def timed_out(failure: Any) -> Any:
        failure.trap(TimeoutError, CancelledError)
        raise AssertionError(f"timed out after {seconds}s waiting for {what}")

    return d.addTimeout(seconds, reactor).addErrback(timed_out)
