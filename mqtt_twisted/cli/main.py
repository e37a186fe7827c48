"""The ``mqtt-twisted`` console script: ``mqtt-twisted COMMAND [OPTIONS]``.

Each command's module is imported only when it runs, so ``passwd`` does not load
the reactor and a usage error costs no more than argparse.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "pub": "publish messages (mosquitto_pub's options)",
    "sub": "subscribe and print messages (mosquitto_sub's options)",
    "passwd": "manage a password file (mosquitto_passwd's options)",
    "bench": "a short load test against any broker: messages/s, latency percentiles",
}


def usage() -> str:
    lines = ["usage: mqtt-twisted COMMAND [OPTIONS]   (mqtt-twisted COMMAND --help)", ""]
    lines += [f"  {name:<8}{text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("--help", "-h", "help"):
        try:
            print(usage(), flush=True)
        except BrokenPipeError:
            quiet_stdout()
        raise SystemExit(0 if args else 1)
    if args[0] == "--version":
        from mqtt_twisted import __version__
        print(f"mqtt-twisted {__version__}")
        raise SystemExit(0)
    if args[0] not in COMMANDS:
        print(f"Error: unknown command {args[0]!r} (one of: {', '.join(COMMANDS)}; "
              "see mqtt-twisted --help)", file=sys.stderr)
        raise SystemExit(1)
    module = importlib.import_module(f"mqtt_twisted.cli.{args[0]}")
    try:
        module.main(args[1:])
    except BrokenPipeError:
        quiet_stdout()
        raise SystemExit(1) from None


def quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): no more output, and no error from
    the interpreter flushing stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
