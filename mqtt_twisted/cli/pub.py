"""``mqtt-twisted pub``: publish messages, as ``mosquitto_pub`` does.

One message from ``-m``, ``-f``, ``-n`` or ``-s`` (all of stdin), or one message per line
of stdin with ``-l``.  Stdin is read in a daemon thread (pipes, files and terminals alike) a
chunk at a time, and the next chunk is read only once the QoS 1/2 messages in flight
are down to a window: a long ``-l`` run keeps bounded memory.  On a terminal a
progress line (count, rate) is kept up to date on stderr during long ``-l`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from mqtt_twisted.cli._connect import CommandFailed, connect, debug, run_command
from mqtt_twisted.cli._options import (
    UsageError,
    client_parser,
    finish_client_options,
    take_properties,
)
from mqtt_twisted.codec.topics import validate_topic_name

__all__ = ["main", "parse"]

#: QoS 1/2 messages in flight before -l stops reading stdin.
WINDOW = 100
#: Bytes read from stdin at a time for -l.
CHUNK = 64 * 1024


def parse(argv: list[str]) -> argparse.Namespace:
    rest, props = take_properties(argv)
    parser = client_parser("mqtt-twisted pub", "Publish messages (as mosquitto_pub).")
    add = parser.add_argument
    add("-t", "--topic", help="topic to publish to")
    add("-m", "--message", help="message payload")
    add("-f", "--file", help="send the contents of a file as the message")
    add("-l", "--stdin-line", dest="lines", action="store_true",
        help="send one message per line of stdin")
    add("-s", "--stdin-file", dest="whole_stdin", action="store_true",
        help="send all of stdin as one message")
    add("-n", "--null-message", dest="null", action="store_true", help="send an empty message")
    add("-r", "--retain", action="store_true", help="retain the message")
    add("--repeat", type=int, default=1, metavar="N", help="publish -m/-f/-s N times")
    add("--repeat-delay", type=float, default=0.0, metavar="SECONDS")
    args = finish_client_options(parser.parse_args(rest), props, "mqtt_twisted_pub")
    if getattr(args, "url_topic", None):
        args.topic = args.url_topic
    sources = [args.message is not None, args.file is not None, args.lines,
               args.whole_stdin, args.null]
    if sum(sources) > 1:
        raise UsageError("only one type of message can be sent at once")
    if not args.topic or not any(sources):
        raise UsageError("both topic and message must be supplied")
    try:
        validate_topic_name(args.topic)
    except Exception:
        raise UsageError(f"invalid publish topic {args.topic!r}, "
                         "does it contain '+' or '#'?") from None
    if args.repeat < 1 or args.repeat_delay < 0:
        raise UsageError("--repeat takes N >= 1, --repeat-delay SECONDS >= 0")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                args.payload = f.read()
        except OSError as e:
            raise UsageError(f"unable to open file {args.file!r}: {e.strerror}") from None
    elif args.message is not None:
        args.payload = args.message.encode()
    else:
        args.payload = b""
    return args


class Publisher:
    """Publishes with the command line's QoS, retain flag and properties; counts."""

    def __init__(self, reactor: Any, client: Any, args: argparse.Namespace) -> None:
        self.reactor, self.client, self.args = reactor, client, args
        self.sent = 0
        self.inflight: set[Deferred[Any]] = set()
        self.errors: list[BaseException] = []
        self.properties = args.props.get("publish") or None
        self._window_open: Deferred[None] | None = None

    def publish(self, payload: bytes) -> None:
        args = self.args
        debug(args, f"sending PUBLISH (d0, q{args.qos}, r{int(args.retain)}, "
                    f"'{args.topic}', ... ({len(payload)} bytes))")
        d = self.client.publish(args.topic, payload, args.qos, args.retain, self.properties)
        self.sent += 1
        if d.called and not args.qos:
            d.addErrback(self._failed)
            return
        self.inflight.add(d)
        d.addErrback(self._failed).addBoth(self._complete, d)

    def _complete(self, _: Any, d: Deferred[Any]) -> None:
        self.inflight.discard(d)
        if self._window_open is not None and len(self.inflight) < WINDOW:
            w, self._window_open = self._window_open, None
            w.callback(None)

    def _failed(self, failure: Any) -> None:
        self.errors.append(failure.value)

    def window(self) -> Deferred[None]:
        """Fires once fewer than WINDOW messages are in flight."""
        if len(self.inflight) < WINDOW:
            # Let the reactor write what was published before reading more.
            return deferLater(self.reactor, 0, lambda: None)
        self._window_open = Deferred()
        return self._window_open

    def finished(self) -> Deferred[Any]:
        return DeferredList(list(self.inflight), consumeErrors=True)


class LineFeeder:
    """``-l``: splits stdin chunks into lines (the last one may lack its newline)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.rest = b""

    def feed(self, chunk: bytes) -> Deferred[None]:
        if not self.publisher.client.connected:  # stop reading an endless stdin
            raise CommandFailed("the broker closed the connection")
        lines = (self.rest + chunk).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            self.publisher.publish(line)
        return self.publisher.window()

    def end(self) -> None:
        if self.rest:
            self.publisher.publish(self.rest)
            self.rest = b""


def in_daemon_thread(reactor: Any, fn: Any, *args: Any) -> Deferred[Any]:
    """Run ``fn`` in a daemon thread: one blocked on a terminal's stdin must not keep the
    process alive after Ctrl-C (the reactor's thread pool joins its threads)."""
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException:
            failure = Failure()
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True, name="mqtt-twisted-stdin").start()
    return d


def _read_lines(reactor: Any, feeder: LineFeeder, fd: int) -> None:
    """In a thread: read stdin and hand each chunk to the reactor, waiting for it.
    ``os.read`` on the descriptor, not ``sys.stdin``: a daemon thread blocked inside a
    buffered reader aborts the interpreter's shutdown (Ctrl-C)."""
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return
        threads.blockingCallFromThread(reactor, feeder.feed, chunk)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


class Progress:
    """A ``\\r``-rewritten line on a terminal's stderr: messages sent and the rate."""

    def __init__(self, reactor: Any, publisher: Publisher, stream: Any) -> None:
        self.publisher, self.stream = publisher, stream
        self.start = time.monotonic()
        self.shown = False
        self.loop = LoopingCall(self.show)
        self.loop.clock = reactor
        self.loop.start(1.0, now=False)

    def show(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        sent = self.publisher.sent
        self.stream.write(f"\r{sent} messages, {sent / elapsed:,.0f} msg/s, "
                          f"{len(self.publisher.inflight)} in flight ")
        self.stream.flush()
        self.shown = True

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()
        if self.shown:
            self.show()
            self.stream.write("\n")
            self.stream.flush()


async def command(reactor: Any, args: argparse.Namespace) -> int:
    stdin = sys.stdin.fileno()
    if args.whole_stdin:
        args.payload = await in_daemon_thread(reactor, _read_all, stdin)
    client = await connect(reactor, args)
    publisher = Publisher(reactor, client, args)
    if args.lines:
        feeder = LineFeeder(publisher)
        progress = Progress(reactor, publisher, sys.stderr) if sys.stderr.isatty() else None
        try:
            await in_daemon_thread(reactor, _read_lines, reactor, feeder, stdin)
            feeder.end()
        finally:
            if progress is not None:
                progress.stop()
    else:
        for n in range(args.repeat):
            if n and args.repeat_delay:
                await deferLater(reactor, args.repeat_delay, lambda: None)
            publisher.publish(args.payload)
            await (publisher.window() if n + 1 < args.repeat else succeed(None))
    await publisher.finished()
    if client.connected:
        debug(args, "sending DISCONNECT")
        await client.disconnect(properties=args.props.get("disconnect") or None)
    if publisher.errors:
        raise CommandFailed(f"publish failed: {publisher.errors[0]}")
    return 0


def main(argv: list[str]) -> None:
    run_command(argv, parse, command)
