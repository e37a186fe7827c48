"""A thin Twisted client for :mod:`mqtt_twisted.cluster.resp`: one reconnecting
connection to Redis, commands pipelined, replies matched in order.

``command(*args)`` writes the command at once and returns a Deferred of its reply;
the transport sends every command of a reactor turn in one write, so a burst of
``XADD``\\ s costs one round trip, not one each.  ``pipeline([args, ...])`` writes
several as one and returns one Deferred, of the last one's reply (a ``MULTI`` ...
``EXEC``: only ``EXEC``'s reply says anything), which saves a Deferred and its
callbacks per command.  On a plain TCP connection the turn's commands are sent by this
module at the end of the turn (``mqtt_twisted.turns.after_turn``), in one ``send``
straight to the socket: the reactor's way (``startWriting``) is an ``epoll_ctl`` to
watch the socket, a poll that finds it writable, the write, and another ``epoll_ctl``,
for every batch a node sends (``adapters/_leanserver.py`` does the same for clients).
While the connection is down, commands wait (in order) and are written when it is back; a command that waits, or
that has been sent and is unanswered, longer than ``timeout`` fails with
:class:`~mqtt_twisted.errors.StorageError`, and an unanswered one also drops the
connection (a hung server), which then reconnects with backoff.

The replies of one read are handed to their callbacks a slice per reactor turn
(``pace.Paced``): in a reconnect storm one read brings thousands, each resuming a
session.  An ``urgent`` client (the lease's) sends each command at once
(:func:`write_now`) instead of when the reactor next polls.

A connection in pub/sub mode gets messages it did not ask for: ``on_push`` takes
every ``message``/``smessage`` array; the replies to ``SUBSCRIBE`` come back in
order as for any command (subscribe one channel per command).  ``on_connect(client)``
runs before anything waiting is written (``AUTH``, ``SELECT``, ``SUBSCRIBE``, a
resync), its commands first in line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster import resp
from mqtt_twisted.cluster.pace import Paced
from mqtt_twisted.cluster.resp import Parser, ReplyError, RespProtocolError
from mqtt_twisted.errors import StorageError
from mqtt_twisted.turns import after_turn

log = Logger()

PUSH_KINDS = (b"message", b"smessage", b"pmessage")
#: Error replies of a master that became a replica: a write refused, a blocking read
#: ended.
DEMOTED = ("READONLY", "UNBLOCKED")


class _Pending:
    __slots__ = ("deferred", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deferred: Deferred[Any] = Deferred()
        self.deadline = deadline


class _Unheard:
    """A command of a pipeline whose reply nobody waits for (``pipeline``): it only
    holds its place in the order of replies, and its deadline."""

    __slots__ = ("deadline",)
    deferred = None

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline


class RedisProtocol(Protocol):
    """One connection: commands out, replies (and pub/sub pushes) in."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.parser = Parser()
        self.sent: deque[_Pending] = deque()
        #: Reads (and slices of replies handed) so far, and as of the last sweep that
        #: found a command overdue: a connection that still reads is behind (this node
        #: is busy), not hung.
        self.reads = 0
        self.checked_reads = -1
        #: Replies handed to their callbacks a slice per reactor turn (``pace.Paced``).
        self.paced = Paced(client.reactor, self._replies)
        #: The turn's commands, sent at its end (``send_out``); None: each written to
        #: the transport (not a TCP connection of the reactor's, or an urgent client).
        self.out: list[bytes] | None = None

    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        if isinstance(self.transport, Connection) and not self.client.urgent:
            self.out = []
        self.client._connected(self)

    def send(self, pending: _Pending, data: bytes, unheard: int = 0) -> None:
        """Write ``data``: ``unheard`` commands (``pipeline``) and ``pending``'s."""
        if unheard:
            self.sent.extend([_Unheard(pending.deadline) for _ in range(unheard)])
        self.sent.append(pending)
        out = self.out
        if out is not None:
            out.append(data)
            if len(out) == 1:
                after_turn(self.client.reactor, send_out, self)
            return
        self.transport.write(data)
        if self.client.urgent:
            write_now(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.reads += 1
        try:
            replies = self.parser.feed(data)
        except RespProtocolError as e:
            log.warn("Redis sent bytes that are not RESP ({error}): reconnecting", error=e)
            self.paced.flush()  # (what came before answers its commands)
            self.transport.abortConnection()
            return
        if replies:
            self.paced.feed(replies)

    def _replies(self, replies: list[Any]) -> None:
        """Replies (and pub/sub messages) read, in order: each answers the oldest
        command sent (``Paced`` calls this a chunk at a time)."""
        self.reads += 1
        sent = self.sent
        push = self.client.on_push
        for reply in replies:
            if push is not None and type(reply) is list and reply and reply[0] in PUSH_KINDS:
                push(reply)
                continue
            if not sent:
                log.warn("Redis sent a reply to no command: reconnecting")
                self.paced.clear()
                self.transport.abortConnection()
                return
            d = sent.popleft().deferred
            if isinstance(reply, ReplyError):
                if reply.args[0].startswith(DEMOTED):
                    # A master turned replica (Sentinel failover): reconnect, through
                    # the endpoint that finds the master again.
                    self.transport.abortConnection()
                if d is not None:
                    d.errback(reply)
            elif d is not None:
                d.callback(reply)

    def connectionLost(self, reason: Any = None) -> None:
        self.paced.flush()  # what was read answers its commands; the rest fail
        sent, self.sent = self.sent, deque()
        self.client._disconnected(self)
        error = StorageError(f"Redis connection lost: {reason.getErrorMessage()}"
                             if reason is not None else "Redis connection lost")
        for pending in sent:
            if pending.deferred is not None:
                pending.deferred.errback(error)


class _Factory(Factory):
    noisy = False

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return RedisProtocol(self.client)


class _QuietService(ClientService):
    """No line per connection attempt (the store's OutageLog reports an outage once)."""

    _log = Logger(observer=lambda event: None)


class RedisClient:
    """A reconnecting connection with pipelined commands (see the module docstring)."""

    def __init__(self, reactor: Any, endpoint: Any, *, timeout: float = 5.0,
                 on_connect: Callable[[RedisClient], Any] | None = None,
                 on_push: Callable[[list[Any]], None] | None = None,
                 name: str = "redis", urgent: bool = False) -> None:
        self.reactor = reactor
        #: Each command written to the socket at once (``write_now``), not when the
        #: reactor next polls: the lease's renewals (``node.py``).
        self.urgent = urgent
        self.endpoint = endpoint
        self.timeout = timeout
        self.on_connect = on_connect
        self.on_push = on_push
        self.name = name
        self.protocol: RedisProtocol | None = None
        #: Commands made while the connection is down: (pending, bytes, the commands
        #: before it in those bytes whose replies nobody waits for: ``pipeline``).
        self.waiting: deque[tuple[_Pending, bytes, int]] = deque()
        self._service: ClientService | None = None
        self._sweeper: LoopingCall | None = None
        self._ready: list[Deferred[None]] = []
        self.stopped = False

    # --- lifecycle ---

    def start(self) -> None:
        self._service = _QuietService(self.endpoint, _Factory(self), retryPolicy=_backoff)
        self._service.startService()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(min(1.0, self.timeout / 2), now=False)

    def ready(self) -> Deferred[None]:
        """Fires once connected (and ``on_connect``'s commands are written)."""
        if self.protocol is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    def stop(self) -> Deferred[Any]:
        self.stopped = True
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._fail_waiting(StorageError(f"{self.name}: stopped"))
        for d in self._ready:
            d.errback(StorageError(f"{self.name}: stopped"))
        self._ready = []
        if self._service is None:
            return succeed(None)
        service, self._service = self._service, None
        return service.stopService()  # type: ignore[no-any-return]

    def _connected(self, protocol: RedisProtocol) -> None:
        self.protocol = protocol
        waiting, self.waiting = self.waiting, deque()
        if self.on_connect is not None:
            try:
                self.on_connect(self)
            except Exception:
                log.failure("{name}: on_connect failed", name=self.name)
        for pending, data, unheard in waiting:
            if not pending.deferred.called:
                protocol.send(pending, data, unheard)
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(None)

    def _disconnected(self, protocol: RedisProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None

    # --- commands ---

    def command(self, *args: Any) -> Deferred[Any]:
        """Send one command; a Deferred of its reply (a ReplyError reply fails it)."""
        pending = _Pending(self.reactor.seconds() + self.timeout)
        if self._service is None:  # not started, or stopped: nothing would ever send it
            pending.deferred.errback(StorageError(f"{self.name}: not connected"))
            return pending.deferred
        data = resp.encode_command(*args)
        protocol = self.protocol
        if protocol is not None:
            protocol.send(pending, data)
        else:
            self.waiting.append((pending, data, 0))
        return pending.deferred

    def pipeline(self, commands: list[tuple[Any, ...]]) -> Deferred[Any]:
        """Send ``commands`` (each a command's arguments) in one write; a Deferred of
        the last one's reply only (a ReplyError reply fails it; the others' replies are
        dropped, an error among them too: for ``MULTI`` ... ``EXEC``, whose ``EXEC``
        fails when a command could not be queued)."""
        pending = _Pending(self.reactor.seconds() + self.timeout)
        if self._service is None:
            pending.deferred.errback(StorageError(f"{self.name}: not connected"))
            return pending.deferred
        data = resp.encode_commands(commands)
        protocol = self.protocol
        if protocol is not None:
            protocol.send(pending, data, len(commands) - 1)
        else:
            self.waiting.append((pending, data, len(commands) - 1))
        return pending.deferred

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        waiting = self.waiting
        while waiting and (waiting[0][0].deferred.called or waiting[0][0].deadline <= now):
            pending = waiting.popleft()[0]
            if not pending.deferred.called:
                pending.deferred.errback(StorageError(
                    f"{self.name}: Redis unreachable for {self.timeout}s"))
        protocol = self.protocol
        if protocol is not None and protocol.sent and protocol.sent[0].deadline <= now:
            if protocol.reads != protocol.checked_reads:  # replies still arriving
                protocol.checked_reads = protocol.reads
                return
            log.warn("{name}: no reply from Redis in {timeout}s: reconnecting",
                     name=self.name, timeout=self.timeout)
            protocol.transport.abortConnection()

    def command_blocking(self, block: float, *args: Any) -> Deferred[Any]:
        """A command that Redis holds for up to ``block`` seconds (``XREADGROUP ...
        BLOCK``): its deadline is ``block`` later than an ordinary command's."""
        d = self.command(*args)
        queue = self.protocol.sent if self.protocol is not None else None
        if queue:
            queue[-1].deadline += block
        elif self.waiting:
            self.waiting[-1][0].deadline += block
        return d

    def _fail_waiting(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, deque()
        for pending, _, _ in waiting:
            if not pending.deferred.called:
                pending.deferred.errback(error)


def write_now(transport: Any) -> None:
    """Send what ``transport`` has buffered now.  A Twisted transport writes when the
    reactor next polls, and then after the sockets that poll found readable: in a
    reconnect storm, after thousands of CONNECTs were read and handled, up to a second
    or more later.  A lease renewal written behind them left late, and two such turns
    in a row let the lease lapse (docs/cluster.md, "Reconnect storm").  Under TLS the
    TCP transport underneath is the one with the buffer."""
    for _ in range(3):
        do_write = getattr(transport, "doWrite", None)
        if do_write is not None:
            do_write()  # (an error is the reactor's to find on its next poll)
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


def send_out(protocol: RedisProtocol) -> None:
    """The end of the turn: send ``protocol``'s commands in one ``send`` to its socket
    (module docstring); what the socket does not take, and anything under TLS or behind
    bytes the transport still holds, goes through the transport as usual."""
    out = protocol.out
    if not out:
        return
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    transport: Any = protocol.transport
    if not transport.connected or transport.disconnecting:
        return  # (its commands fail with the connection: RedisProtocol.connectionLost)
    if not transport.TLS and not transport.dataBuffer and not transport._tempDataBuffer:
        try:
            sent = transport.socket.send(data)
        except OSError:  # full (EAGAIN), or failed: the reactor sees to it when it polls
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _backoff(attempt: int) -> float:
    """Seconds before reconnection attempt ``attempt``: 0.1 doubling to 5."""
    return float(min(5.0, 0.1 * (2 ** min(attempt, 6))))


def errback_logged(failure: Failure, what: str) -> None:
    """Log a failed background command once, quietly for a lost connection."""
    if failure.check(StorageError):
        log.info("{what}: {error}", what=what, error=failure.getErrorMessage())
    else:
        log.failure(what, failure)
