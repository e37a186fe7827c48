"""The HTTP bridge's answers and streams: one ``/subscribe`` request as the sink of its
virtual session, answered as Server-Sent Events or as a long poll, and the response
helpers the resources share (:mod:`mqtt_twisted.adapters.http` is the rest).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters._ssewriter import Paced
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.interfaces import IMessageSink

if TYPE_CHECKING:
    from mqtt_twisted.adapters.http import Bridge

log = Logger(namespace="mqtt_twisted.adapters.http")

#: The reason code a closed stream reports when its session simply ended.
_ENDED = ReasonCode.NORMAL_DISCONNECTION
#: Messages an SSE stream holds before its response starts; beyond, the broker queues.
_PENDING_LIMIT = 100
#: The kernel send buffer of an SSE stream's socket.  Left to autotuning it grows to
#: megabytes, so a client that never reads was not paused (and its stall timer never
#: started) until megabytes had gone its way: 500 such streams held publishing to
#: 1,000 msg/s and only 52 were cut off within 55 s (issue 14).
STREAM_SEND_BUFFER = 64 << 10


#: CPU seconds of cut-offs per reactor turn (at least one cut-off a turn).  Each ends
#: a session and lets go of its stream's backlog (up to 1,000 messages), and its
#: connection's loss is handled a turn later (:data:`LOST_TIME`, counted in advance):
#: 500 streams that stopped reading together stalled together 30 s later, 0.8 s of
#: CPU in one turn when they were cut at once (py-spy), and a bystander's round trip
#: took up to 2.5 s on a loaded machine (bench/hostile.py --attack unread_sse
#: --sse-streams 500).  A count a turn (4) did not follow what a cut-off costs.
CUT_TIME = 0.001
#: CPU seconds of a cut-off stream's ``connectionLost`` (twisted.web's channel and
#: request, the listener's count), in the turn after its cut-off (an estimate).
LOST_TIME = 50e-6


#: CPU seconds of stream openings per reactor turn (at least one a turn): 500 SSE
#: requests accepted 32 a turn were opened as they came, 10-18 ms turns for a second
#: (authentication, a virtual session, its subscriptions, the head; session 8).
OPEN_TIME = 0.001


class CutOffs(Paced):
    """Stalled streams waiting to be cut off, :data:`CUT_TIME` of CPU a reactor turn."""

    def __init__(self, reactor: Any, budget: float = CUT_TIME,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        super().__init__(reactor, budget, cpu, LOST_TIME)

    def add(self, subscription: Subscription) -> None:
        self.run_later(subscription.cut_off)


class Openings(Paced):
    """New ``/subscribe`` requests waiting to be opened, :data:`OPEN_TIME` a turn."""

    def __init__(self, reactor: Any, budget: float = OPEN_TIME,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        super().__init__(reactor, budget, cpu)

    def add(self, subscription: Subscription) -> Deferred[Any]:
        """Fires as ``subscription.open()`` does, once it has had its turn."""
        done: Deferred[Any] = Deferred()
        self.run_later(lambda: subscription.open().chainDeferred(done))
        return done


def _shrink_send_buffer(request: Request) -> None:
    transport = getattr(request.channel, "transport", None)
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    while sock is not None and not hasattr(sock, "setsockopt"):  # TLS: the socket below
        sock = getattr(sock, "socket", None)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,  # type: ignore[union-attr]
                        STREAM_SEND_BUFFER)
    except (AttributeError, OSError):
        pass  # not a socket (a test transport, a UNIX pipe): nothing to shrink


def gone(request: Request) -> bool:
    return bool(request.finished or request._disconnected)


def respond(request: Request, status: int, body: bytes | None = None,
            headers: dict[str, str] | None = None,
            content_type: bytes = b"application/json") -> None:
    """Answer ``request`` at once (nothing, if its client has gone)."""
    if gone(request):
        return
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if body is not None:
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
    request.finish()


class LiveResponse:
    """A live SSE stream's response once its head is written: what the stream still
    needs of twisted.web's ``Request`` (write a chunk, unregister its producer, finish,
    ``channel`` to abort), without the ``Request``: its headers, arguments, addresses,
    cookies and Deferreds were about a third of the ~90 objects an open stream held,
    which full collections walk (500 streams: 48,000; issue 14).

    The channel stays the transport's protocol and producer: it forwards its
    transport's pause and resume to the stream (its request producer still), and the
    connection's loss as ``stopProducing``.  The request leaves the channel's queue, so
    the connection ends with the stream (closed after the last chunk, not kept alive
    for another request: an SSE client opens a new one anyway)."""

    __slots__ = ("channel", "chunked", "producer", "finished", "_disconnected")

    def __init__(self, channel: Any, chunked: bool, producer: Any) -> None:
        self.channel = channel
        self.chunked = chunked
        self.producer = producer
        self.finished = False
        self._disconnected = False

    @classmethod
    def take(cls, request: Request) -> Any:
        """The response of ``request`` (written to already) without the request; the
        request itself where that cannot be done (HTTP/2, another request queued)."""
        channel = request.channel
        if (channel is None or getattr(channel, "requests", None) != [request]
                or request.finished or request._disconnected or not request.startedWriting):
            return request
        channel.requests.remove(request)
        site = getattr(channel, "factory", None) or getattr(channel, "site", None)
        if site is not None:
            site.log(request)  # the access log's line, as finish() would write it
        return cls(channel, bool(request.chunked), request.producer)

    def write(self, data: bytes) -> None:
        if self.finished or self._disconnected or not data:
            return
        if self.chunked:
            self.channel.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.channel.write(data)

    def unregisterProducer(self) -> None:
        self.channel.unregisterProducer()
        self.producer = None

    def finish(self) -> None:
        """The last chunk, then the connection closes (after what is buffered)."""
        if self.finished or self._disconnected:
            return
        if self.chunked:
            self.channel.write(b"0\r\n\r\n")
        self.finished = True
        self.channel.loseConnection()


class Backlog:
    """What a live SSE stream could not write yet: the messages themselves, in order,
    within the session's bounds (``--max-queued`` messages and ``--max-queued-bytes``,
    counted as a queued copy is), the oldest dropped first.  References only: a message
    routed to 500 streams is one object, not 500 records."""

    __slots__ = ("messages", "size", "limit", "byte_limit", "dropped", "counted")

    def __init__(self, limit: int, byte_limit: int) -> None:
        self.messages: deque[Any] = deque()
        self.size = 0
        self.limit = limit
        self.byte_limit = byte_limit or 1 << 62
        #: Messages dropped so far, and of those, counted in the broker's stats.
        self.dropped = self.counted = 0

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, message: Any, bounded: bool = True) -> int:
        """Keep ``message``, dropping the oldest past the bounds (or ``message`` itself,
        larger than all of them); how many that dropped.  ``bounded=False``: a stream
        that reads, whose backlog waits only for the writer's next turn (as many as one
        turn delivers), drops nothing; the bounds apply again once it is paused."""
        messages = self.messages
        size = len(message.payload) + len(message.topic)
        if not bounded:
            messages.append(message)
            self.size += size
            return 0
        if size > self.byte_limit or not self.limit:
            self.dropped += 1
            return 1
        dropped = 0
        while messages and (len(messages) >= self.limit or self.size + size > self.byte_limit):
            old = messages.popleft()
            self.size -= len(old.payload) + len(old.topic)
            dropped += 1
        messages.append(message)
        self.size += size
        self.dropped += dropped
        return dropped

    def pop(self) -> Any:
        message = self.messages.popleft()
        self.size -= len(message.payload) + len(message.topic)
        return message


# --- subscriptions ------------------------------------------------------------------------------

OPENING, LIVE, DONE = range(3)


@implementer(IMessageSink, IPushProducer)
class Subscription:
    """One ``/subscribe`` request: the sink of its virtual session, and (for SSE) the
    producer twisted.web pauses when the client stops reading.

    A live SSE stream whose client does not keep up holds what it could not write in
    its own backlog (:class:`Backlog`): references to the routed messages, encoded
    only when the socket takes them again.  Its session is never paused for it, so
    the broker keeps no per-copy record (``Outbound``) and holds no publisher back
    for a stream: 500 streams that stopped reading held 500,000 queued records, which
    every full collection walked (bystander p99 161-206 ms, issue 14)."""

    def __init__(self, bridge: Bridge, request: Request, sub: api.SubscribeRequest,
                 username: str | None, password: bytes | None) -> None:
        self.bridge = bridge
        self.request = request
        self.sub = sub
        self.persistent = sub.client is not None
        self.client_id = sub.client or bridge.new_client_id()
        self.credentials = bridge.credentials(request, self.client_id, username, password)
        self.log: api.ReplayLog | None = None
        self.local_id = 0
        self.pending: list[bytes] = []
        self.conn: Any = None
        self.state = OPENING
        self.producer_paused = False
        self.timer: Any = None
        #: Nothing written since the heartbeat's last tick; a ping asked for.
        self.idle = False
        self.ping = False
        self.granted: list[dict[str, Any]] = []
        #: Messages routed while the stream could not take them (SSE, LIVE).
        self.backlog: Backlog | None = None

    # --- opening --------------------------------------------------------------------

    @inlineCallbacks
    def open(self) -> Any:
        bridge = self.bridge
        if self.state == DONE:  # the client left while the opening waited its turn
            return
        if self.persistent:
            self.log = bridge.replay_log(self.client_id)
            replay_before = self.log.next  # what the session delivers from now on is new
        try:
            session = yield bridge.service.openSession(self.client_id, self, not self.persistent,
                                                       self.credentials, self.sub.expiry)
        except Exception as e:
            self.state = DONE
            creds = self.credentials
            raise api.error_from(e, anonymous=creds.username is None
                                 and creds.password is None) from None
        self.conn = session.connection
        if self.sub.stream and not self.persistent:
            # (A persistent session's stream pauses it instead: what is queued then
            # outlives the stream, as the session does.)
            settings = bridge.service.settings
            self.backlog = Backlog(getattr(settings, "max_queued", 1000),
                                   getattr(settings, "max_queued_bytes", 16 << 20))
        if self.state == DONE:  # the client left while the session opened
            self.conn.close()
            return
        bridge.subscriptions.add(self)
        try:
            yield self._configure(session)
        except BaseException:
            self.state = DONE
            self.conn.close()
            raise
        if self.state == DONE:
            return
        replayed = (self.log.after(self.sub.last_id, replay_before)
                    if self.log is not None else [])
        if self.sub.stream:
            self._start_stream([api.sse(e, f"{self.log.epoch}-{n}")  # type: ignore[union-attr]
                                for n, e in replayed])
        else:
            self._start_poll([e for _, e in replayed])

    def watch(self) -> None:
        """Hear of the request's end (one Deferred for the listener's count of streams
        and for the client leaving), from the start: the opening waits its turn."""
        self.request.notifyFinish().addBoth(self._finished)

    def _finished(self, result: Any) -> None:
        """The request is done with: no longer one of the listener's streams; a client
        that left (a Failure) ends the session."""
        self.bridge.streams.discard(self)
        if isinstance(result, Failure):
            self.end(None, client_left=True)

    @inlineCallbacks
    def _configure(self, session: Any) -> Any:
        """The session's subscriptions become those of the request."""
        bridge = self.bridge
        if self.log is not None and self.log.session is not session:
            if self.log.session is not None:  # a new session: the old ids mean nothing
                self.log = bridge.replay_log(self.client_id, fresh=True)
            self.log.session = session
        for topic_filter in list(session.subscriptions):
            if topic_filter not in self.sub.filters:
                yield bridge.service.unsubscribe(self.client_id, topic_filter)
        for topic_filter in self.sub.filters:
            if self.state == DONE:  # the client left, or the session was taken over
                return
            granted = yield bridge.service.subscribe(self.client_id, topic_filter, self.sub.qos)
            if self.state == DONE:
                return
            if granted >= 0x80:
                raise api.code_error(granted, topic_filter)
            self.granted.append({"topic": topic_filter, "qos": granted})

    # --- IMessageSink ------------------------------------------------------------------

    def deliver(self, message: Any, qos: int) -> bool:
        """Take one routed message; False asks the broker to queue the next ones (a
        live SSE stream never does: its backlog takes what the client cannot)."""
        if self.state == DONE:
            return False
        if self.state == LIVE and self.sub.stream:
            backlog = self.backlog
            if backlog is None:  # a persistent session's stream: it queues
                self.idle = False
                self.request.write(api.sse(*self._encode(message, qos)))
                return not self.producer_paused
            # Written by the bridge's writer in a later turn, a slice at a time
            # (adapters/_ssewriter.py), not here: this is the publisher's turn.
            if self.producer_paused:
                if backlog.add(message):
                    self._dropped(backlog)
            else:
                backlog.add(message, bounded=False)
                self.bridge.writer.want(self)
            return True
        encoded, event_id = self._encode(message, qos)
        if not self.sub.stream:
            self.pending.append(encoded)
            if self.state == LIVE and self.timer is not None and len(self.pending) == 1:
                self.timer.cancel()  # the first message: answer after this turn's batch
                self.timer = self.bridge.reactor.callLater(0, self.end, None)
            return len(self.pending) < self.sub.max
        self.pending.append(api.sse(encoded, event_id))
        return len(self.pending) < _PENDING_LIMIT

    def _dropped(self, backlog: Backlog) -> None:
        """Count what the backlog dropped where the broker counts what a queue drops
        (``$SYS/broker/messages/dropped``); log at the 1st, 2nd, 4th, 8th... (DropLog)."""
        stats = getattr(self.bridge.service, "stats", None)
        if stats is not None:
            stats.messages_dropped += backlog.dropped - backlog.counted
        if backlog.counted.bit_length() != backlog.dropped.bit_length():
            self.bridge.drop_log.note(self.client_id, backlog.dropped)
        backlog.counted = backlog.dropped

    def _encode(self, message: Any, qos: int) -> tuple[bytes, str]:
        """One message's event JSON and its id, the next of the stream (kept in the
        replay log of a persistent client)."""
        if self.log is not None:
            n, event_id = self.log.new_id()
        else:
            self.local_id += 1
            n, event_id = self.local_id, str(self.local_id)
        encoded = api.event_json(message, qos, message.retain,
                                 self.bridge.reactor.seconds(), event_id)
        if self.log is not None:
            self.log.add(n, encoded)
        return encoded, event_id

    def flush(self, limit: int) -> tuple[int, bool]:
        """The writer's turn (:class:`~mqtt_twisted.adapters._ssewriter.StreamWriter`):
        up to ``limit`` events of the backlog in one chunk; how many, and whether more
        wait (twisted.web pauses the stream from inside ``write`` once its buffer is
        full: then the writer leaves it until ``resumeProducing``)."""
        if self.producer_paused or self.state != LIVE:
            return 0, False
        backlog = self.backlog
        if not backlog:
            if not self.ping:
                return 0, False
            self.ping = self.idle = False
            self.request.write(b": ping\n\n")
            return 1, False
        self.ping = self.idle = False
        encode = self._encode
        frames = []
        for _ in range(min(limit, len(backlog))):
            message = backlog.pop()
            frames.append(api.sse(*encode(message, message.qos)))
        self.request.write(b"".join(frames))
        return len(frames), bool(backlog) and not self.producer_paused and self.state == LIVE

    def sessionClosed(self, reason: Any) -> None:
        """The broker ended the session (taken over, removed, shut down)."""
        if self.state != DONE:
            self.end(ReasonCode.NORMAL_DISCONNECTION if reason is None else int(reason))

    # --- SSE ----------------------------------------------------------------------------

    def _start_stream(self, replayed: list[bytes]) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        hello = api.dumps({"client": self.client_id, "subscriptions": self.granted})
        frames = [b"retry: 2000\n\n", api.sse(hello, name="subscribed"), *replayed,
                  *self.pending]
        self.pending = []
        self.state = LIVE
        _shrink_send_buffer(request)
        request.write(b"".join(frames))
        request.registerProducer(self, True)
        self.request = LiveResponse.take(request)  # the head is out: no Request needed
        self.bridge.heartbeat.add(self)
        if self.conn.paused and not self.producer_paused:
            self.conn.resumeWriting()

    def want_ping(self) -> bool:
        """The heartbeat's tick found the stream idle: a ``: ping`` line at the writer's
        next turn (unless the client is not reading: it would only wait)."""
        if self.state != LIVE or self.producer_paused:
            return False
        self.ping = True
        return True

    def pauseProducing(self) -> None:
        """The client reads slower than messages come: the stream's backlog takes them
        (bounded, oldest dropped first); a client that stays stuck is cut off."""
        self.producer_paused = True
        if self.conn is not None and self.backlog is None:
            self.conn.pauseWriting()
        stall = self.bridge.config.stall_timeout
        if stall and self.timer is None and self.state == LIVE:
            self.timer = self.bridge.reactor.callLater(stall, self._stalled)

    def resumeProducing(self) -> None:
        self.producer_paused = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.state == LIVE:
            if self.backlog:
                self.bridge.writer.want(self)
            if self.conn is not None and self.conn.paused and not self.producer_paused:
                self.conn.resumeWriting()  # what the session queued (opening, persistent)

    def stopProducing(self) -> None:
        """The connection was lost (or is being closed)."""
        if isinstance(self.request, LiveResponse):
            self.request._disconnected = True
        self.end(None, client_left=True)

    def _stalled(self) -> None:
        self.timer = None
        self.bridge.cutoffs.add(self)  # with the others that stalled now, a few a turn

    def cut_off(self) -> None:
        if self.state == DONE:
            return  # ended meanwhile (the client left, the session was taken over)
        log.info("Cutting off SSE client {client}: the stream went unread for {s}s",
                 client=self.client_id, s=self.bridge.config.stall_timeout)
        self.end(None, client_left=True)
        self.request.channel.transport.abortConnection()

    # --- long poll ------------------------------------------------------------------------

    def _start_poll(self, replayed: list[bytes]) -> None:
        self.pending = replayed + self.pending
        self.state = LIVE
        delay = 0.0 if self.pending or not self.sub.timeout else self.sub.timeout
        self.timer = self.bridge.reactor.callLater(delay, self.end, None)

    # --- ending -----------------------------------------------------------------------------

    def end(self, reason: int | None, client_left: bool = False) -> None:
        """Finish the answer (unless the client left) and close the virtual session."""
        if self.state == DONE:
            return
        was_live = self.state == LIVE
        self.state = DONE
        self.bridge.subscriptions.discard(self)
        self.bridge.streams.discard(self)  # (a LiveResponse's request is not finished)
        self.bridge.writer.forget(self)
        self.bridge.heartbeat.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.conn is not None:
            self.conn.pauseWriting()  # what arrives from now on stays with the session
        request = self.request
        if was_live and not client_left and not gone(request):
            if self.sub.stream:
                backlog = self.backlog
                if backlog and not self.producer_paused:  # what the writer had not written
                    frames = []
                    while backlog:
                        message = backlog.pop()
                        frames.append(api.sse(*self._encode(message, message.qos)))
                    request.write(b"".join(frames))
                request.unregisterProducer()
                code = _ENDED if reason is None else reason
                request.write(api.sse(api.dumps({"reason_code": int(code)}), name="close"))
                request.finish()
            elif self.pending:
                respond(request, 200, api.poll_body(self.client_id, self.pending))
            else:
                respond(request, 204)
        elif self.sub.stream and was_live and request.producer is not None:
            request.unregisterProducer()
        self.pending = []
        self.backlog = None
        if self.conn is not None:
            self.conn.close()
        self.bridge.forget_log_ifgone(self.client_id)
