"""The broker service: owns the broker, the store and the listeners' lifecycle."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.errors import StartError, StorageError
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.store.overlay import SysRetainedOverlay, purge_sys_retained

#: How long shutdown waits for clients to go before closing the store anyway.
SHUTDOWN_GRACE = 5.0
#: Seconds between the points of the admin API's rate history.
ADMIN_SAMPLE = 1.0
#: Sessions loaded from the store at once when the broker starts.
RESTORE_BATCH = 500


class BrokerService(MultiService):
    """One broker shared by every listener, whatever its adapter: its lifecycle (store,
    restored sessions, listeners, SIGHUP, ``$SYS``, shutdown).  Adapters reach the
    broker only through :attr:`gateway`."""

    log = Logger()
    #: Whether a running broker re-reads what its listeners can reload (TLS certificates)
    #: on SIGHUP; ``twistd mqttbroker`` turns it on.
    reload_on_sighup = False
    _previous_sighup: Any = None

    def __init__(
        self,
        reactor: Any,
        store: Any,
        settings: BrokerSettings | None = None,
        authenticator: Any = None,
        authorizer: Any = None,
        connect_timeout: float = 10.0,
        sys_interval: float = 10.0,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.store = store
        # $SYS retained messages stay in this process, never in the store (overlay.py).
        self.broker = Broker(reactor, SysRetainedOverlay(store), settings, authenticator,
                             authorizer, connect_timeout)
        #: What every adapter gets: the broker's IBrokerService.
        self.gateway = Gateway(self.broker)
        self._listeners: list[Service] = []
        self.ready: Deferred[None] = Deferred()
        self.sys_interval = sys_interval
        self._sys_loop: LoopingCall | None = None
        self._admin_loop: LoopingCall | None = None
        #: The cluster node (``cluster/node.py``) when the broker is one of several.
        self.cluster: Any = None
        #: Called on SIGHUP after the files below are re-read (``tap.py`` adds the
        #: configuration file's reloader, ``config/reload.py``).
        self.reloaders: list[Callable[[], Any]] = []
        #: Called on SIGHUP too: processes that re-read their own (``--workers``).
        self.sighup_followers: list[Callable[[], Any]] = []

    @property
    def stats(self) -> Any:
        return self.broker.stats

    def addListener(self, adapter: Any, settings: Any) -> Service:
        """Create the listener for ``settings`` with ``adapter``; it starts with the broker."""
        service = adapter.buildListener(self.reactor, self.gateway, settings.endpoint, settings)
        service.setName(settings.describe())
        service.listener_settings = settings  # type: ignore[attr-defined]  # for the log
        self._listeners.append(service)
        return service

    def joinCluster(self, name: str) -> Any:
        """Make this broker node ``name`` of a cluster on its Redis store's server
        (``--cluster``): the cluster router goes in front of the local one now, the
        node joins when the service starts."""
        from mqtt_twisted.cluster.node import ClusterNode

        options = getattr(self.store, "options", None)
        if getattr(self.store, "name", None) != "redis" or options is None:
            raise ValueError("a cluster needs the Redis store (--store redis://...)")
        self.cluster = ClusterNode(self.reactor, options, name, self.broker)
        self.cluster.install()
        return self.cluster

    # --- lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        """Open the store, restore stored sessions, then start listening."""
        Service.startService(self)
        if self.reload_on_sighup:
            self.reactor.callWhenRunning(self._install_sighup)
        d = self.store.start()
        if self.cluster is not None:
            d.addCallback(lambda _: self.cluster.start())
        d.addCallback(lambda _: self._purge_sys_retained())
        d.addCallback(lambda _: self._restore_sessions())
        if self.cluster is not None:
            d.addCallback(lambda _: self.cluster.restored())
        d.addErrback(self._store_failed)
        d.addCallback(lambda _: self._start_listeners())
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _store_failed(self, failure: Failure) -> None:
        """An unreachable store is an operator's problem, told in one line; anything
        else is a bug, whose traceback _start_failed logs."""
        failure.trap(StorageError, OSError, ConnectError)
        name = getattr(self.store, "name", None) or type(self.store).__name__
        raise StartError(f"store {name}", failure.value)

    def _start_listeners(self) -> None:
        for service in self._listeners:
            try:
                service.setServiceParent(self)
            except (CannotListenError, OSError) as e:
                raise StartError(f"listener {service.name}", e) from e
            self._log_listener("Listening: {listener}", "listener_start", service)
        # The admin API's and dashboard's rate history: one point a second.
        self._admin_loop = LoopingCall(self.gateway.admin.sample)
        self._admin_loop.clock = self.reactor
        self._admin_loop.start(ADMIN_SAMPLE, now=True).addErrback(
            lambda f: self.log.failure("Admin sampling failed", f))
        if self.sys_interval:
            self._sys_loop = LoopingCall(SysTopics(self.broker).tick)
            self._sys_loop.clock = self.reactor
            self._sys_loop.start(self.sys_interval, now=True).addErrback(
                lambda f: self.log.failure("$SYS publisher failed", f))

    def _log_listener(self, fmt: str, action: str, service: Any) -> None:
        settings = getattr(service, "listener_settings", None)
        self.log.info(fmt, action=action, listener=service.name,
                      adapter=getattr(settings, "adapter", None),
                      endpoint=getattr(settings, "endpoint", None))

    def _start_failed(self, failure: Any) -> None:
        if failure.check(StartError):
            self.log.critical("The broker could not start: {error}", error=failure.value,
                              action="start_failed")
        else:
            self.log.failure("The broker could not start", failure, action="start_failed")
        self.ready.errback(failure)
        # twistd starts services before the reactor runs: stop it once it does.
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def _purge_sys_retained(self) -> Deferred[None]:
        """Remove the $SYS messages earlier versions stored; a failure only delays that."""
        def done(count: int) -> None:
            if count:
                self.log.info("Removed {n} retained $SYS messages from the store (they are "
                              "kept in memory now)", n=count)

        d = purge_sys_retained(self.store)
        d.addCallbacks(done, lambda f: self.log.warn(
            "Could not remove the $SYS messages from the store: {error}",
            error=f.getErrorMessage()))
        return d

    @inlineCallbacks
    def _restore_sessions(self) -> Any:
        client_ids = yield self.store.listSessions()
        if self.cluster is not None:  # each node restores the sessions that live on it
            client_ids = yield self.cluster.restorable(client_ids)
        # Loaded a batch at a time: a network store answers a batch in one round trip.
        for start in range(0, len(client_ids), RESTORE_BATCH):
            batch = client_ids[start:start + RESTORE_BATCH]
            states = yield gatherResults([self.store.loadSession(c) for c in batch])
            for client_id, state in zip(batch, states):
                if state is not None and client_id not in self.broker.sessions:
                    self.broker.restore_session(state)
                    if self.cluster is not None:  # how far its stream was delivered
                        self.cluster.restart.loaded(state)
        if client_ids:
            self.log.info("Restored {n} stored sessions", n=len(client_ids))

    @inlineCallbacks
    def stopService(self) -> Any:
        """Close listeners, disconnect clients (v5: 0x8B), then flush and close the store."""
        Service.stopService(self)
        self._uninstall_sighup()
        for loop in (self._sys_loop, self._admin_loop):
            if loop is not None and loop.running:
                loop.stop()
        for service in reversed(list(self)):
            # Stopped explicitly: removeService() skips stopService() once we are not running.
            if service.running:
                yield service.stopService()
                if service in self._listeners:
                    self._log_listener("Stopped listening: {listener}", "listener_stop",
                                       service)
            yield service.disownServiceParent()
        # A closed connection leaves broker.connections at once, but its DISCONNECT is
        # written only when the reactor next runs: wait for the transports themselves,
        # or twistd stops the reactor and drops the unwritten bytes.
        closing = list(self.broker.connections)
        self.broker.close_all(ReasonCode.SERVER_SHUTTING_DOWN)
        waited = 0.0
        while waited < SHUTDOWN_GRACE and (
                self.broker.connections or not all(getattr(c, "lost", True) for c in closing)):
            yield deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        self.broker.deadlines.stop()  # (the wheel's timer runs out lazily otherwise)
        saves = []
        for session in list(self.broker.sessions.values()):
            if session.persistent:
                saves.append(self.store.saveSession(session))
            for call in (session.expiry_call, session.will_call):
                if call is not None and call.active():
                    call.cancel()
        # All at once (pipelined; each fails by the store's own timeout if it cannot
        # answer), and the store is closed whatever became of them.
        results = yield DeferredList(saves, consumeErrors=True)
        failed = [r for ok, r in results if not ok]
        if failed:
            self.log.warn("{n} of {total} sessions could not be saved at shutdown: {error}",
                          n=len(failed), total=len(saves), error=failed[0].getErrorMessage())
        if self.cluster is not None:
            yield self.cluster.stop()
        yield self.store.stop()

    # --- SIGHUP: reload ------------------------------------------------------------------

    def reload(self) -> None:
        """Have every listener that can re-read its files (TLS certificates) do so, and
        the authenticator (a password file) and the authorizer (an ACL file): new
        connections use what was read, open ones carry on.  Then the :attr:`reloaders`
        (the configuration file)."""
        self.log.info("Reloading (SIGHUP): certificates, password and ACL files{config}",
                      config=" and the configuration" if self.reloaders else "",
                      action="config_reload")
        reload_auth = getattr(self.broker.authenticator, "reload", None)
        if reload_auth is not None:
            reload_auth()
        if self.broker.authorizer is not self.broker.authenticator:
            reload_acl = getattr(self.broker.authorizer, "reload", None)  # an ACL file
            if reload_acl is not None:
                reload_acl()
        self.broker.refresh_read_checks()  # the rules may have changed under every session
        for service in self._listeners:
            reload = getattr(service, "reload", None)
            if reload is not None:
                reload()
        for reloader in self.reloaders:
            reloader()
        for follower in self.sighup_followers:
            follower()

    def _install_sighup(self) -> None:
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not \
                threading.main_thread() or not self.running:
            return
        reactor = self.reactor

        def on_sighup(signum: int, frame: Any) -> None:
            reactor.callFromThread(self.reload)  # out of the signal handler, into the reactor

        self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)

    def _uninstall_sighup(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
