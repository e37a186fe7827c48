"""The Redis store's connections: a txredisapi connection per link, calls in order,
one deadline timer per link, and the store's OutageLog told when a link goes down or up.

txredisapi connects, authenticates, selects the database and reconnects with backoff;
once a connection is ready its link takes its byte stream over: commands are encoded
here and written once per reactor turn, replies are parsed by the cluster's sans-IO
RESP parser and answer the link's calls in order, a slice per reactor turn when one
read brings many (``cluster.pace.Paced``: a reconnect storm's sessions loaded by the
thousand).  txredisapi's own per-command path
(three Deferreds, a reply queue and a line parser per command) was most of the
broker's CPU for a stored QoS 1 message.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster.pace import Paced
from mqtt_twisted.cluster.resp import Parser, ReplyError, RespProtocolError
from mqtt_twisted.errors import StorageError, StoreUnavailable
from mqtt_twisted.store._redisscripts import SCRIPTS
from mqtt_twisted.store.replicas import ReplicaWait

log = Logger()


def endpoint(reactor: Any, options: Any) -> Any:
    """The client endpoint of the Redis server ``options`` (RedisOptions) names: TCP, or
    TLS verified against ``options.ca`` (default: the system's CAs) with an optional
    client certificate; behind Sentinel (``options.sentinels``), the one
    :class:`~mqtt_twisted.store.sentinel.SentinelEndpoint` the store and the cluster
    share, which finds the master before every connection."""
    if options.sentinels:
        shared = options.shared.get("sentinel")
        if shared is None or shared.reactor is not reactor:
            from mqtt_twisted.store.sentinel import SentinelEndpoint

            shared = options.shared["sentinel"] = SentinelEndpoint(reactor, options)
        return shared
    return plain_endpoint(reactor, options, options.host, options.port)


def plain_endpoint(reactor: Any, options: Any, host: str, port: int,
                   timeout: float | None = None) -> Any:
    """TCP or TLS (see :func:`endpoint`) to ``host:port`` (a sentinel's too:
    ``rediss+sentinel://`` is TLS to both, with the same CA and client certificate)."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    o = options
    tcp = HostnameEndpoint(reactor, host, port,
                           timeout=o.connect_timeout if timeout is None else timeout)
    if not o.tls:
        return tcp
    from twisted.internet import ssl

    trust = None
    if o.ca:
        with open(o.ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    client = None
    if o.cert:
        with open(o.cert, "rb") as f, open(o.key, "rb") as k:
            client = ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())
    creator = ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)
    return wrapClientTLS(creator, tcp)


#: Seconds between two looks at an overdue connection that is still reading replies.
PROGRESS_CHECK = 0.5


class _Call:
    """One command: its arguments, the caller's Deferred, when it gives up, and whether
    it writes (for the outage's count of failed writes).  A record batch
    (``_redisbatch.Batch``) is a call of its own, with the same fields; behind a WAIT
    (``?wait=N``) its call is one of these with the batch instead of arguments.  Either
    way its command is built when the turn's commands are written."""

    __slots__ = ("args", "deferred", "deadline", "done", "is_write", "batch")

    def __init__(self, args: tuple[Any, ...] | None, deadline: float, write: bool | None,
                 batch: Any = None) -> None:
        self.args = args
        self.deferred: Deferred[Any] = Deferred()
        self.deadline = deadline
        self.done = False
        self.is_write = write
        self.batch = batch


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol until the connection is ready, then its link's byte stream
    (see the module's docstring): replies parsed by :class:`Parser`, handed to the link.
    """

    #: Reads from the server (and slices of replies handed) so far: a connection whose
    #: oldest call is overdue is hung only if nothing arrives across a whole check
    #: (Link._sweep), not if this broker was too busy to read the replies waiting for it.
    reads = 0
    #: The link that took the connection over (None: txredisapi still reads it).
    link: Link | None = None
    parser: Parser | None = None
    #: Replies handed to the link a slice per reactor turn (``cluster.pace.Paced``).
    paced: Paced | None = None

    def take_over(self, link: Link) -> None:
        self.link = link
        self.parser = Parser()
        self.paced = Paced(link.store.reactor, self._answer)

    def _answer(self, replies: list[Any]) -> None:
        self.reads += 1  # (progress: see ``reads``)
        link = self.link
        if link is not None:
            link.answered(self, replies)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.reads += 1
        link = self.link
        if link is None:
            super().dataReceived(data, unpause)
            return
        try:
            replies = self.parser.feed(data)  # type: ignore[union-attr]
        except RespProtocolError as error:
            log.warn("Redis sent bytes that are not RESP ({error}): reconnecting",
                     error=error)
            self.paced.flush()  # type: ignore[union-attr]  # (what came before answers)
            self.transport.abortConnection()
            return
        if replies:
            self.paced.feed(replies)  # type: ignore[union-attr]

    def connectionLost(self, why: Any) -> None:
        if self.paced is not None:
            self.paced.flush()  # what was read answers its calls; the rest fail
        super().connectionLost(why)  # the link hears of it first (factory.delConnection)
        link, self.link = self.link, None
        if link is not None:
            link.lost(self)


def encode_command(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: byte strings as they are, ints and strs encoded."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is not bytes:
            arg = b"%d" % arg if type(arg) is int else str(arg).encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` (the turn's commands, at its end) with one ``send`` when nothing
    waits in the transport's buffers: ``transport.write`` would register the socket
    for writing and send on the next turn's write event (two ``epoll_ctl`` calls and a
    reactor event per turn).  What the socket does not take, a TLS transport and a
    connection closing go the reactor's way, which also sees any error."""
    if (type(transport) is tcp.Client and not transport.dataBuffer
            and not transport._tempDataBuffer and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected):
        try:
            sent = transport.socket.send(data)
        except OSError:  # full (EAGAIN), or broken: the reactor's write finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class _QuietClientService(ClientService):
    """Twisted's reconnecting service without its line per connection attempt: with a
    pool of four that is about one line a second during an outage, which the store's
    OutageLog reports once instead."""

    _log = Logger(observer=lambda event: None)


class _Slot(txredisapi._PoolSlot):  # type: ignore[misc]
    """txredisapi's pool slot (its backoff and stop rules) on a _QuietClientService."""

    def __init__(self, factory: Any, endpoint: Any, reconnect: bool = True) -> None:
        super().__init__(factory, endpoint, reconnect)
        self.service = _QuietClientService(endpoint, txredisapi._SlotFactory(factory, self),
                                           retryPolicy=self._retryDelay,
                                           prepareConnection=self._prepareConnection)


class _Factory(txredisapi.RedisFactory):
    """One reconnecting connection (txredisapi does the backoff) reporting to its link."""

    protocol = _Protocol
    initialDelay = 0.1
    maxDelay = 5.0

    def __init__(self, link: Link, options: Any) -> None:
        super().__init__(f"{options.host}:{options.port}", options.db, 1, isLazy=True,
                         charset=None, password=options.password, convertNumbers=False,
                         username=options.username)
        self.link = link

    def startConnecting(self, endpoint: Any) -> None:
        """txredisapi's, with quiet slots (see _QuietClientService)."""
        for _ in range(self.poolsize):
            slot = _Slot(self, endpoint, self.reconnect)
            self.slots.append(slot)
            slot.start()

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        # txredisapi queues every new connection for its own handler; we do not use
        # that queue, so keep it from growing by one dead entry per reconnection.
        pending = self.connectionQueue.pending
        pending[:] = [c for c in pending if c.connected]
        if conn in self.pool:
            self.link.connected(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link.disconnected(conn)


class Link:
    """One connection of the pool and the calls on it, answered in the order they were sent.

    Calls made while it is down wait (in order) until it is up again or their
    deadline passes.  One timer watches the oldest call: a sent call still
    unanswered at its deadline means the connection is stuck, so every call on
    it fails and the connection is dropped (txredisapi reconnects it).
    """

    def __init__(self, store: Any, index: int) -> None:
        self.store = store
        self.index = index
        self.protocol: Any = None
        self.factory: _Factory | None = None
        self.waiting: deque[_Call] = deque()
        self.sent: deque[_Call] = deque()
        self.ready: Deferred[None] | None = Deferred()
        self._timer: Any = None
        self._flush_call: Any = None
        #: Commands written and not yet answered: while any are, the next ones are held
        #: and leave together when the last reply arrives (group commit, see _send).
        self._unanswered = 0
        #: Commands encoded this turn, written together by _flush (a batch: encoded then).
        self._out: list[Any] = []
        #: The batches open on this link (``_redisbatch``), by client id when fenced
        #: (else under None): the record writes made now join them.
        self.batches: dict[bytes | None, Any] = {}
        self.stopped = False
        self._drained: list[Deferred[None]] = []
        self._checked_reads = -1
        o = store.options
        #: ?wait=N: this link's writes confirmed by a WAIT per turn (store/replicas.py).
        self._replicas = ReplicaWait(store.reactor, o.wait, o.wait_timeout, self._send_wait) \
            if o.wait else None

    # --- connection events ---

    def start(self, endpoint: Any, options: Any) -> None:
        self.factory = _Factory(self, options)
        self.factory.deferred.addErrback(self._failed)
        self.factory.startConnecting(endpoint)

    def _failed(self, failure: Failure) -> None:
        # AUTH or SELECT was refused: txredisapi has stopped trying.  We are inside its
        # connection machinery, which must not be stopped reentrantly: report it next turn.
        error = StorageError(f"Redis refused the connection: {failure.getErrorMessage()}")
        self.store.reactor.callLater(0, self._refused, error)

    def _refused(self, error: StorageError) -> None:
        self._resolve_ready(error)
        self._fail(self.waiting, error)

    def _resolve_ready(self, error: Exception | None) -> None:
        ready, self.ready = self.ready, None
        if ready is not None and not ready.called:  # start() may have given up on it
            if error is None:
                ready.callback(None)
            else:
                ready.errback(error)

    def connected(self, protocol: Any) -> None:
        self.protocol = protocol
        self._unanswered = 0
        protocol.take_over(self)
        self._load_scripts(protocol)  # ahead of anything waiting: Redis keeps the order
        waiting, self.waiting = self.waiting, deque()
        for call in waiting:
            if not call.done:
                self._send(protocol, call)
        self._resolve_ready(None)  # (a Redis that is loading: the store starts, in an outage)

    def _load_scripts(self, protocol: Any) -> None:
        deadline = self.store.reactor.seconds() + self.store.options.timeout
        for index, (name, body) in enumerate(SCRIPTS.items()):
            # write=None: an outage does not count them among the broker's failed calls.
            call = _Call((b"SCRIPT", b"LOAD", body.encode("utf-8")), deadline, None)
            call.deferred.addBoth(self._script_answered, name, protocol, index == 0)
            self._send(protocol, call)

    def disconnected(self, protocol: Any) -> None:
        if self.protocol is protocol:
            self.protocol = None
            if not self.stopped:
                self.store.outage.down(self.index, "connection lost")

    def lost(self, protocol: Any) -> None:
        """The connection that was ``protocol`` is gone: what was sent on it and not
        answered fails (the outage, already told by :meth:`disconnected`, says how)."""
        if self._flush_call is not None and self._flush_call.args[0] is protocol:
            self._flush_call.cancel()
            self._flush_call = None
            self._out = []
        if self.protocol is None:  # (the usual case: disconnected() came first)
            self._out = []  # held for the lost connection: they fail below
            self._unanswered = 0
        self.close_batches()
        sent, self.sent = self.sent, deque()
        outage = self.store.outage
        for call in sent:
            if not call.done:
                call.done = True
                call.deferred.errback(outage.error("Redis: Lost connection", call.is_write))
        if self._drained and not self.waiting:
            self._fire_drained()

    def _script_answered(self, result: Any, name: str, protocol: Any, first: bool) -> None:
        """A script's load answered.  The first one's success ends the outage, if any: a
        Redis still loading its data accepts connections and answers -LOADING."""
        if not isinstance(result, Failure):
            if first and self.protocol is protocol:
                self.store.outage.up(self.index)
            return
        failure = result
        if failure.getErrorMessage().startswith("Redis: LOADING"):
            # Redis restarted and reads its data: the outage goes on; this connection
            # is dropped and the next one, after the backoff, loads the scripts again.
            if self.protocol is protocol and protocol.transport is not None:
                self.protocol = None
                self.store.outage.down(self.index, "Redis is loading its data")
                protocol.transport.abortConnection()
            return
        if failure.check(StoreUnavailable) or "Lost connection" in failure.getErrorMessage():
            return  # the connection's loss is the outage; the next one loads them again
        log.warn("Loading Redis script {name} failed: {error}", name=name,
                 error=failure.getErrorMessage())

    def stop(self) -> Deferred[Any]:
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush(self._flush_call.args[0])
        self._resolve_ready(StorageError("Redis store stopped"))
        self._fail(self.waiting, StorageError("Redis store stopped"))
        factory, self.factory = self.factory, None
        if factory is None:  # never started, or stopped already
            return succeed(None)
        # Not from inside txredisapi's connection machinery, which may be running us.
        return deferLater(self.store.reactor, 0, factory.disconnect)

    # --- calls ---

    def call(self, args: tuple[Any, ...], write: bool = True) -> Deferred[Any]:
        if self.batches:
            self.close_batches()  # the record writes after this command go after it
        store = self.store
        call = _Call(args, store.reactor.seconds() + store.options.timeout, write)
        _enqueue(self, call)
        if write and self._replicas is not None:
            return self._replicas.gate(call.deferred)
        return call.deferred

    def open_batch(self, key: bytes | None, batch: Any) -> None:
        """Open ``batch`` (``_redisbatch.Batch``) here, in the order of this link's
        commands: its writes' SharedWrite fires with the script's reply (after the
        turn's WAIT, with ``?wait=N``).  The batch is its own call, answered straight
        into its SharedWrite: no Deferred, unless a WAIT gates it."""
        store = self.store
        deadline = store.reactor.seconds() + store.options.timeout
        if self._replicas is None:
            batch.deadline = deadline
            _enqueue(self, batch)
        else:
            call = _Call(None, deadline, True, batch)
            _enqueue(self, call)
            self._replicas.gate(call.deferred).addBoth(batch.write.fire)
        self.batches[key] = batch

    def close_batches(self) -> None:
        """The open batches take no more writes: the next ones open new batches."""
        for batch in self.batches.values():
            batch.open = False
        self.batches = {}

    def _send_wait(self, replicas: int, milliseconds: int) -> Deferred[Any]:
        return self.call((b"WAIT", replicas, milliseconds), write=False)

    def _send(self, protocol: Any, call: _Call) -> None:
        """Encode the command; the turn's commands are written together by _flush (one
        transport write, one round trip).  While earlier commands are unanswered they
        are held instead, and written with the last reply (``answered``): one write
        and one script call per round trip rather than per turn, the open batch
        taking every record write meanwhile.  A busy broker's turns are short and
        many; each write and each reply was a system call and a reactor event, and
        each batch a script run in Redis.  Nothing waits longer than one round trip
        more, and an acknowledgement still waits for the reply to its write."""
        self.sent.append(call)
        args = call.args  # (None: a batch, itself the call or behind a WAIT's call)
        self._out.append(encode_command(args) if args is not None else call.batch or call)
        if self._flush_call is None and not self._unanswered:
            self._flush_call = self.store.reactor.callLater(0, self._flush, protocol)

    def _flush(self, protocol: Any) -> None:
        self._flush_call = None
        out, self._out = self._out, []
        self.close_batches()  # written now: the next writes open new ones
        if out and protocol.connected and protocol.transport is not None:
            self._unanswered += len(out)
            send_now(protocol.transport, b"".join([
                item if type(item) is bytes else item.encode() for item in out]))

    def answered(self, protocol: Any, replies: list[Any]) -> None:
        """Replies read from ``protocol``: each answers the oldest call sent on it."""
        if protocol is not self.protocol:
            return  # a connection already given up (its calls failed)
        if len(replies) > self._unanswered:
            log.warn("Redis answered more than was asked: reconnecting")
            paced = getattr(protocol, "paced", None)  # (a test's fake has none)
            if paced is not None:
                paced.clear()  # (what else it read answers nothing)
            protocol.transport.abortConnection()
            return
        self._unanswered -= len(replies)
        if self._out and not self._unanswered and self._flush_call is None:
            # The held commands leave at the end of this turn, with what it adds.
            self._flush_call = self.store.reactor.callLater(0, self._flush, protocol)
        sent = self.sent
        for value in replies:
            call = sent.popleft()
            if call.done:
                continue  # it timed out before; the late reply has nowhere to go
            call.done = True
            if type(value) is ReplyError:
                text = str(value)
                if text.startswith("NOSCRIPT"):
                    self._load_scripts(protocol)  # Redis lost its scripts: load them again
                elif text.startswith("READONLY"):
                    self._demoted()
                elif text.startswith("LOADING"):  # not serving yet: part of the outage
                    call.deferred.errback(self.store.outage.error(f"Redis: {text}",
                                                                  call.is_write))
                    continue
                elif text.startswith("ERR "):
                    text = text[4:]
                call.deferred.errback(StorageError(f"Redis: {text}"))
            else:
                call.deferred.callback(value)
        if self._drained and not sent and not self.waiting:
            self._fire_drained()

    def _demoted(self) -> None:
        """A write refused by a replica: the server was a master and is not (a Sentinel
        failover).  Reconnect, through the endpoint that finds the master again."""
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            log.info("Redis refused a write as a replica (READONLY): reconnecting")
            protocol.transport.abortConnection()

    # --- deadlines ---

    def _arm(self) -> None:
        heads = [q[0].deadline for q in (self.waiting, self.sent) if q]
        if heads:
            reactor = self.store.reactor
            delay = max(0.0, min(heads) - reactor.seconds())
            self._timer = reactor.callLater(delay, self._sweep)
        else:
            self._timer = None

    def _sweep(self) -> None:
        store = self.store
        now = store.reactor.seconds()
        timeout = store.options.timeout
        waiting = self.waiting
        while waiting and (waiting[0].done or waiting[0].deadline <= now):
            call = waiting.popleft()
            self.close_batches()  # a batch that failed takes no more writes
            if not call.done:
                call.done = True
                call.deferred.errback(store.outage.error(f"Redis unreachable for {timeout}s",
                                                         call.is_write))
        sent = self.sent
        if sent and sent[0].deadline <= now and self._progressed():
            # Overdue, but replies are arriving: this broker is behind in reading them
            # (a reconnect storm's CONNECTs filled whole reactor turns), Redis is not
            # hung.  Look again after a turn that read the socket.
            self._timer = store.reactor.callLater(PROGRESS_CHECK, self._sweep)
            return
        if sent and sent[0].deadline <= now:
            # A hung or partitioned server: an outage, declared before its calls fail.
            store.outage.down(self.index, f"no reply in {timeout}s")
            self.close_batches()
            while sent:
                call = sent.popleft()
                if not call.done:
                    call.done = True
                    call.deferred.errback(store.outage.error(
                        f"no reply from Redis in {timeout}s", call.is_write))
            protocol = self.protocol
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
        self._arm()
        if self._drained and not self.sent and not self.waiting:
            self._fire_drained()

    def _progressed(self) -> bool:
        """Whether the connection has read anything since the last check."""
        protocol = self.protocol
        reads = getattr(protocol, "reads", None)
        if reads is None or reads == self._checked_reads:
            return False
        self._checked_reads = reads
        return True

    def _fail(self, calls: deque[_Call], error: Exception) -> None:
        self.close_batches()
        while calls:
            call = calls.popleft()
            if not call.done:
                call.done = True
                call.deferred.errback(error)

    def drained(self) -> Deferred[None]:
        """Fires once every call made so far is answered or has failed."""
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        if not self.sent and not self.waiting:
            self._fire_drained()
        return d

    def _fire_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for d in waiters:
            d.callback(None)


def _enqueue(link: Link, call: _Call) -> None:
    """Send ``call`` on ``link`` now, or once connected; its timeout runs either way
    (a command and a record batch go the same way: a function, as the class is at its
    method limit)."""
    protocol = link.protocol
    if protocol is not None:
        link._send(protocol, call)
    else:
        link.waiting.append(call)
    if link._timer is None:
        link._arm()
