"""``mqtt-twisted passwd``: manage a password file, as ``mosquitto_passwd`` does.

The file is Mosquitto's (``user:$7$101$SALT$HASH``), read by ``--auth passwd:FILE``;
the hashing is :func:`mqtt_twisted.auth.passwd.hash_password`, the parsing the
broker's own :func:`~mqtt_twisted.auth.passwd.parse_hash`, so what this writes is
what the broker reads.  Other lines (comments, other users) are kept as they are;
the file is replaced atomically.  Exit codes as mosquitto_passwd: 0 done, 1 an
error (2 when the two passwords typed differ).  No reactor: nothing here waits on
the network.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from typing import NoReturn

from mqtt_twisted.auth.passwd import (
    DEFAULT_ITERATIONS,
    PBKDF2_SHA512,
    SHA512,
    hash_password,
    parse_hash,
)

__all__ = ["main"]

USAGE = """\
usage: mqtt-twisted passwd [-H sha512 | -H sha512-pbkdf2] [-I ITERATIONS] [-c | -D] FILE USER
       mqtt-twisted passwd [-H sha512 | -H sha512-pbkdf2] [-I ITERATIONS] [-c] -b FILE USER PASSWORD
       mqtt-twisted passwd -U FILE

 -b : batch mode: the password is on the command line.
 -c : create a new password file (overwrites an existing one).
 -D : delete USER rather than adding or updating their password.
 -H : hash: sha512-pbkdf2 (default, $7$) or sha512 ($6$, Mosquitto 1.6 and earlier).
 -I : PBKDF2 iterations (default 101, as mosquitto_passwd).
 -U : hash the plain-text passwords of FILE in place (hashed lines are kept).
Without -b the password is asked twice on a terminal, or read from stdin."""


class PasswdError(Exception):
    """One ``Error: ...`` line and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PasswdError(message)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="mqtt-twisted passwd", add_help=False)
    add = parser.add_argument
    add("--help", action="store_true")
    add("-b", dest="batch", action="store_true")
    add("-c", dest="create", action="store_true")
    add("-D", dest="delete", action="store_true")
    add("-U", dest="update", action="store_true")
    add("-H", dest="hash", choices=["sha512-pbkdf2", "sha512"], default="sha512-pbkdf2")
    add("-I", dest="iterations", type=int, default=DEFAULT_ITERATIONS)
    add("words", nargs="*")
    args = parser.parse_args(argv)
    if args.help:
        print(USAGE)
        raise SystemExit(0)
    if args.create + args.delete + args.update > 1:
        raise PasswdError("-c, -D and -U cannot be used together")
    if args.batch and (args.delete or args.update):
        raise PasswdError("-b cannot be used with -D or -U")
    wanted = 1 if args.update else 3 if args.batch else 2
    if len(args.words) != wanted:
        raise PasswdError(f"expected {wanted} argument{'s' * (wanted > 1)} "
                          f"({'FILE' if args.update else 'FILE USER'}"
                          f"{' PASSWORD' if args.batch else ''}); see --help")
    if not 1 <= args.iterations <= 10_000_000:
        raise PasswdError("-I takes 1 to 10000000 iterations")
    if len(args.words) > 1:
        user = args.words[1]
        if ":" in user:
            raise PasswdError("Username must not contain the ':' character.")
        if not user or any(ord(c) < 0x20 for c in user):
            raise PasswdError(f"invalid user name {user!r}")
    return args


def read_password() -> str:
    """Twice with getpass on a terminal; from stdin otherwise (a second line, if there
    is one, must match the first)."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Reenter password: ")
    else:
        lines = sys.stdin.read().splitlines()
        first = lines[0] if lines else ""
        second = lines[1] if len(lines) > 1 else first
    if first != second:
        raise PasswdError("Passwords do not match.", 2)
    if not first:
        raise PasswdError("Empty password.")
    return first


def read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise PasswdError(f"Unable to open password file {path}. No such file or "
                          "directory (create it with -c).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PasswdError(f"Unable to read password file {path}: {e}") from None


def write_lines(path: str, lines: list[str]) -> None:
    """Replace ``path`` atomically, keeping its permissions (0600 for a new file)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    try:
        fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise PasswdError(f"Unable to write password file {path}: {e.strerror}") from None


def _user_of(line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return text.partition(":")[0]


def run(args: argparse.Namespace) -> int:
    path = args.words[0]
    kind = PBKDF2_SHA512 if args.hash == "sha512-pbkdf2" else SHA512

    def new_hash(password: str) -> str:
        return hash_password(password, kind, args.iterations)

    if args.update:
        lines = read_lines(path)
        out = []
        for number, line in enumerate(lines, 1):
            user = _user_of(line)
            if user is None:
                out.append(line)
                continue
            _, sep, value = line.strip().partition(":")
            if not sep or not user:
                raise PasswdError(f"Corrupt password file at line {number}.")
            try:
                parse_hash(value)
                out.append(line)  # already hashed: hashing it again would lock the user out
            except ValueError:
                out.append(f"{user}:{new_hash(value)}")
        write_lines(path, out)
        return 0
    user = args.words[1]
    lines = [] if args.create else read_lines(path)
    kept = [line for line in lines if _user_of(line) != user]
    if args.delete:
        if len(kept) == len(lines):
            print(f"Warning: User {user} not found in password file.", file=sys.stderr)
            return 1
        write_lines(path, kept)
        return 0
    password = args.words[2] if args.batch else read_password()
    if not password:
        raise PasswdError("Empty password.")
    entry = f"{user}:{new_hash(password)}"
    # Keep the user's place in the file when updating.
    out = [entry if _user_of(line) == user else line for line in lines]
    if len(kept) == len(lines):
        out.append(entry)
    write_lines(path, out)
    return 0


def main(argv: list[str]) -> None:
    try:
        code = run(parse(argv))
    except PasswdError as e:
        print(f"Error: {e}", file=sys.stderr)
        code = e.code
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        code = 1
    raise SystemExit(code)
