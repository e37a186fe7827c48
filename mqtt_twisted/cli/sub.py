"""``mqtt-twisted sub``: subscribe and print messages, as ``mosquitto_sub`` does.

Same option letters, output (``-v``, ``-N``, ``-F`` formats including ``%j``/``%J``) and
exit codes: 0 after ``-C`` messages or ``-E``, 27 when ``-W`` runs out, the CONNACK
code when refused, 1 for anything else.  Unlike mosquitto_sub it does not reconnect:
a lost connection ends it with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred

from mqtt_twisted.cli._connect import EXIT_TIMEOUT, CommandFailed, connect, debug, run_command
from mqtt_twisted.cli._format import compile_format, default_output
from mqtt_twisted.cli._options import (
    UsageError,
    client_parser,
    finish_client_options,
    take_properties,
)
from mqtt_twisted.cli.main import quiet_stdout
from mqtt_twisted.codec import Subscription, topic_matches
from mqtt_twisted.codec.topics import validate_topic_filter

__all__ = ["main", "parse"]


def parse(argv: list[str]) -> argparse.Namespace:
    rest, props = take_properties(argv)
    parser = client_parser("mqtt-twisted sub",
                           "Subscribe to topics and print the messages (as mosquitto_sub).")
    add = parser.add_argument
    add("-t", "--topic", action="append", default=[], help="topic filter (repeatable)")
    add("-T", "--filter-out", action="append", default=[], metavar="FILTER",
        help="do not print messages whose topic matches FILTER (repeatable)")
    add("-C", "--count", type=int, default=0, help="exit after COUNT messages")
    add("-W", "--timeout", type=float, default=0, metavar="SECONDS",
        help="exit with code 27 after SECONDS")
    add("-E", "--exit-on-suback", dest="exit_after_sub", action="store_true",
        help="exit once the subscriptions are acknowledged")
    add("-v", "--verbose", action="store_true", help="print 'topic payload'")
    add("-R", "--no-retained", dest="no_retained", action="store_true",
        help="do not print retained (stale) messages")
    add("--retained-only", action="store_true",
        help="print retained messages only; exit at the first one not retained")
    add("-N", "--no-newline", dest="no_newline", action="store_true",
        help="no end of line after each message")
    add("-F", "--format", dest="fmt", help="output format (mosquitto_sub's %%t %%p %%j ...)")
    args = finish_client_options(parser.parse_args(rest), props, "mqtt_twisted_sub")
    if getattr(args, "url_topic", None):
        args.topic.insert(0, args.url_topic)
    if not args.topic:
        raise UsageError("you must specify a topic to subscribe to (-t)")
    for topic_filter in args.topic + args.filter_out:
        try:
            validate_topic_filter(topic_filter)
        except Exception:
            raise UsageError(f"invalid subscription topic {topic_filter!r}, "
                             "are all '+' and '#' wildcards correct?") from None
    if args.count < 0 or args.timeout < 0:
        raise UsageError("-C and -W take values >= 0")
    args.render = compile_format(args.fmt) if args.fmt else default_output(args.verbose)
    return args


class Printer:
    """Prints each message; fires ``done`` with the exit code when -C or
    --retained-only says so."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Any) -> None:
        self.reactor, self.args, self.out = reactor, args, out
        self.count = 0
        self.done: Deferred[int] = Deferred()
        self.end = b"" if args.no_newline else b"\n"

    def __call__(self, message: Any) -> None:
        if self.done.called:
            return
        args = self.args
        retain = message.publish.retain
        debug(args, f"received PUBLISH (d{int(message.publish.dup)}, q{message.publish.qos}, "
                    f"r{int(retain)}, m{message.publish.packet_id or 0}, '{message.topic}', "
                    f"... ({len(message.payload)} bytes))")
        if args.retained_only and not retain:
            self.done.callback(0)
            return
        if args.no_retained and retain:
            return
        if any(topic_matches(f, message.topic) for f in args.filter_out):
            return
        try:
            line = args.render(message, self.reactor.seconds())
        except ValueError as e:  # %J with a payload that is not JSON
            print(f"Error: {e}", file=sys.stderr)
            line = None
        if line is not None:
            try:
                self.out.write(line + self.end)
                self.out.flush()
            except BrokenPipeError:  # `| head -3`: done, quietly
                quiet_stdout()
                self.done.callback(0)
                return
        self.count += 1
        if args.count and self.count >= args.count:
            self.done.callback(0)


async def command(reactor: Any, args: argparse.Namespace) -> int:
    printer = Printer(reactor, args, sys.stdout.buffer)
    timer = None
    if args.timeout:
        def expire() -> None:
            if not printer.done.called:
                print("Timed out", file=sys.stderr)
                printer.done.callback(EXIT_TIMEOUT)
        timer = reactor.callLater(args.timeout, expire)
    def interrupted() -> None:  # Ctrl-C, SIGTERM: a normal end, as mosquitto_sub's
        if not printer.done.called:
            printer.done.callback(0)
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        client = await connect(reactor, args, on_message=printer)
    except Exception:
        if timer is not None and timer.active():
            timer.cancel()
        raise
    client.whenClosed().addCallback(
        lambda _: printer.done.called or printer.done.errback(
            CommandFailed("the broker closed the connection")))
    subs = [Subscription(t, args.qos) for t in args.topic]
    for s in subs:
        debug(args, f"sending SUBSCRIBE (Topic: {s.topic_filter}, QoS: {s.qos})")
    granted = await client.subscribe(subs, properties=args.props.get("subscribe") or None)
    debug(args, "received SUBACK")
    refused = [s.topic_filter for s, code in zip(subs, granted) if code >= 0x80]
    if refused and len(refused) == len(subs):
        await client.disconnect()
        raise CommandFailed("All subscription requests were denied.")
    for topic_filter in refused:
        print(f"Warning: subscription to {topic_filter} denied", file=sys.stderr)
    if args.exit_after_sub and not printer.done.called:
        printer.done.callback(0)
    try:
        code = await printer.done
    finally:
        if timer is not None and timer.active():
            timer.cancel()
    if client.connected:
        debug(args, "sending DISCONNECT")
        await client.disconnect(properties=args.props.get("disconnect") or None)
    return code


def main(argv: list[str]) -> None:
    run_command(argv, parse, command)
