"""SCRAM-SHA-256 (RFC 7677) as an MQTT 5 enhanced authentication method.

The SCRAM arithmetic comes from ``scramp``, a maintained implementation of
RFC 5802/7677 (also used by pg8000): hand-written SCRAM is easy to get
subtly wrong.  ``--auth scram:FILE`` reads one line per user in the format
PostgreSQL stores SCRAM secrets in::

    alice:SCRAM-SHA-256$4096:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

so the file never holds a password, nor anything a client could log in with
directly (RFC 5802 §3: StoredKey and ServerKey only let the server check a
proof and prove itself).  A plain ``user:password`` line is refused, naming the
line; ``python -m mqtt_twisted.auth.scram USER`` (password on stdin) prints a
line, and ``--convert FILE`` turns an old plain-text file into the new format.
The same users may also log in with a plain CONNECT user name and password: the
keys are derived from the password given and compared.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scramp import ScramException, ScramMechanism
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.auth._files import read_utf8
from mqtt_twisted.auth._threads import Runner, in_thread_pool
from mqtt_twisted.errors import AuthenticationError, ValidationError
from mqtt_twisted.interfaces import IAuthExchange, IAuthorizer, IEnhancedAuthenticator

METHOD = "SCRAM-SHA-256"
#: RFC 7677 §4: at least 4096 iterations.
MIN_ITERATIONS = 4096
DEFAULT_ITERATIONS = 4096
SALT_SIZE = 16



@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What the server keeps of one user's password (RFC 5802 §3)."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def line(self, user: str) -> str:
        """The file line for ``user`` (PostgreSQL's format)."""
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return (f"{user}:{METHOD}${self.iterations}:{b64(self.salt)}"
                f"${b64(self.stored_key)}:{b64(self.server_key)}")

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """What scramp's server wants from its lookup function."""
        return self.salt, self.stored_key, self.server_key, self.iterations

    def verify(self, password: bytes) -> bool:
        """A plain password checked against StoredKey (blocking: PBKDF2), derived by scramp
        as a SCRAM client's would be (SASLprep included).  Constant-time comparison."""
        try:
            text = password.decode("utf-8")
            _, stored, _, _ = ScramMechanism(METHOD).make_auth_info(
                text, iteration_count=self.iterations, salt=self.salt)
        except (UnicodeDecodeError, ScramException):
            return False
        return hmac.compare_digest(stored, self.stored_key)


def make_secret(password: str, iterations: int = DEFAULT_ITERATIONS) -> ScramSecret:
    """A fresh secret for ``password`` with a random salt, derived as scramp derives it
    (SASLprep included), so that a SCRAM client's proof verifies."""
    salt, stored, server, count = ScramMechanism(METHOD).make_auth_info(
        password, iteration_count=iterations, salt=os.urandom(SALT_SIZE))
    return ScramSecret(count, salt, stored, server)


def _b64(text: str, what: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64") from None
    if not value:
        raise ValueError(f"the {what} is empty")
    return value


def parse_secret(text: str) -> ScramSecret:
    """Parse ``SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY``; ValueError says what
    is wrong (a plain-text password, say)."""
    method, dollar, rest = text.partition("$")
    if method != METHOD or not dollar:
        raise ValueError(
            "expected user:SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY; plain-text "
            "passwords are not accepted (convert the file: python -m mqtt_twisted.auth.scram "
            "--convert FILE)")
    params, dollar, keys = rest.partition("$")
    iterations, colon, salt = params.partition(":")
    stored, colon2, server = keys.partition(":")
    if not (dollar and colon and colon2):
        raise ValueError("a SCRAM secret is SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY")
    if not iterations.isdigit() or int(iterations) < MIN_ITERATIONS:
        raise ValueError(f"iterations {iterations!r}: at least {MIN_ITERATIONS} (RFC 7677)")
    secret = ScramSecret(int(iterations), _b64(salt, "salt"), _b64(stored, "StoredKey"),
                         _b64(server, "ServerKey"))
    for what, key in (("StoredKey", secret.stored_key), ("ServerKey", secret.server_key)):
        if len(key) != hashlib.sha256().digest_size:
            raise ValueError(f"the {what} is {len(key)} bytes, not 32 (SHA-256)")
    return secret


def parse_users(text: str, path: str) -> dict[str, ScramSecret]:
    """The users of a SCRAM file's ``text``; errors are ``PATH:LINE: what``."""
    users: dict[str, ScramSecret] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        try:
            if not sep or not name:
                raise ValueError("expected user:SCRAM-SHA-256$...")
            if name in users:
                raise ValueError(f"user {name!r} is listed twice")
            users[name] = parse_secret(encoded.strip())
        except ValueError as e:
            raise ValidationError(f"{path}:{number}: {e}") from None
    return users


def read_users(path: str) -> dict[str, ScramSecret]:
    """Read and parse a SCRAM file (OSError if it cannot be read)."""
    return parse_users(read_utf8(path), path)


@dataclass(slots=True)
class AuthStep:
    """One answer of an exchange: more to do (``done`` False) or finished."""

    done: bool
    data: bytes | None = None
    identity: Any = None


@implementer(IAuthExchange)
class _ScramExchange:
    """Server side of one SCRAM conversation: client-first, then client-final."""

    def __init__(self, mechanism: ScramMechanism, auth_info: Mapping[str, Any]) -> None:
        self._server = mechanism.make_server(self._lookup)
        self._auth_info = auth_info
        self._user: str | None = None
        self._round = 0

    def _lookup(self, username: str) -> Any:
        info = self._auth_info.get(username)
        if info is None:
            raise ScramException("unknown user")
        self._user = username
        return info

    def step(self, data: bytes | None) -> Deferred[AuthStep]:
        try:
            text = (data or b"").decode("utf-8")
            if self._round == 0:
                self._round = 1
                self._server.set_client_first(text)
                return succeed(AuthStep(False, self._server.get_server_first().encode()))
            if self._round == 1:
                self._round = 2
                self._server.set_client_final(text)
                return succeed(AuthStep(True, self._server.get_server_final().encode(),
                                        self._user))
        except (ScramException, UnicodeDecodeError) as e:
            return fail(AuthenticationError(f"SCRAM failed: {e}"))
        return fail(AuthenticationError("SCRAM exchange already finished"))


#: Checked for unknown users, so that they take as long as known ones to refuse.
_DUMMY = ScramSecret(MIN_ITERATIONS, b"\0" * SALT_SIZE, b"\0" * 32, b"\0" * 32)


@implementer(IEnhancedAuthenticator, IAuthorizer)
class ScramAuthenticator:
    """SCRAM-SHA-256 via MQTT 5 AUTH, and plain user name/password for everyone else.

    ``users`` maps names to :class:`ScramSecret`; a plain ``str`` password is turned
    into one at once (for tests and programs; the file never holds passwords).  ``run``
    computes a plain login's PBKDF2 away from the reactor (the plugin passes the
    reactor's thread pool); by default at once.
    """

    methods = (METHOD,)
    log = Logger()

    def __init__(self, users: Mapping[str, ScramSecret | str],
                 iterations: int = DEFAULT_ITERATIONS, *, run: Runner | None = None,
                 path: str | None = None) -> None:
        self._mechanism = ScramMechanism(METHOD)
        self._use({
            name: make_secret(secret, iterations) if isinstance(secret, str) else secret
            for name, secret in users.items()
        })
        self._run: Runner = run or maybeDeferred
        self.path = path

    @classmethod
    def from_file(cls, path: str, *, reactor: Any = None,
                  run: Runner | None = None) -> ScramAuthenticator:
        """The file's users; with a ``reactor``, plain-password checks run in its
        thread pool (as the password file's do)."""
        if run is None and reactor is not None:
            run = in_thread_pool(reactor)
        return cls(read_users(path), run=run, path=path)

    def _use(self, secrets: dict[str, ScramSecret]) -> None:
        self._secrets = secrets
        self._auth_info = {name: s.auth_info() for name, s in secrets.items()}

    def reload(self) -> bool | None:
        """Re-read the file (SIGHUP): True if read; False if it did not parse (the old
        users stay, the error is logged); None without a file."""
        if self.path is None:
            return None
        try:
            self._use(read_users(self.path))
        except (OSError, ValueError) as e:
            self.log.error("SCRAM file not reloaded, the old one stays: {error}",
                           action="config_reload", error=e)
            return False
        self.log.info("SCRAM file {path} reloaded: {n} users",
                      action="config_reload", path=self.path,
                      n=len(self._secrets))
        return True

    def startExchange(self, method: str, credentials: Any) -> _ScramExchange:
        return _ScramExchange(self._mechanism, self._auth_info)

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        """Plain CONNECT credentials, checked against the same users' StoredKey."""
        name = credentials.username
        known = self._secrets.get(name) if name is not None else None
        given = credentials.password or b""
        if isinstance(given, str):
            given = given.encode("utf-8")

        def checked(ok: bool) -> str:
            if not ok or known is None:
                raise AuthenticationError("bad user name or password")
            return str(name)

        return self._run((known or _DUMMY).verify, given).addCallback(checked)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return True

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        return True


# --- python -m mqtt_twisted.auth.scram --------------------------------------------------------


def convert(text: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """An old ``user:password`` file as SCRAM lines (comments, blanks and lines already
    converted are kept)."""
    out = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if (not line.strip() or line.lstrip().startswith("#") or not sep
                or rest.startswith(METHOD + "$")):
            out.append(line)
        else:
            out.append(make_secret(rest, iterations).line(name))
    return "".join(f"{line}\n" for line in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_twisted.auth.scram",
        description="Print a --auth scram:FILE line for USER, the password read from the "
                    "first line of standard input; or --convert an old user:password file "
                    "(written to standard output).")
    parser.add_argument("user", nargs="?", help="the user name")
    parser.add_argument("--convert", metavar="FILE", help="a user:password file to convert")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"PBKDF2 iterations (at least {MIN_ITERATIONS}; default "
                             f"{DEFAULT_ITERATIONS})")
    args = parser.parse_args(argv)
    if args.iterations < MIN_ITERATIONS:
        parser.error(f"--iterations: at least {MIN_ITERATIONS} (RFC 7677)")
    if (args.user is None) == (args.convert is None):
        parser.error("give either USER or --convert FILE")
    if args.convert is not None:
        try:
            text = read_utf8(args.convert)
        except (OSError, ValueError) as e:
            parser.error(f"--convert {args.convert}: {getattr(e, 'strerror', None) or e}")
        sys.stdout.write(convert(text, args.iterations))
        return 0
    if ":" in args.user or not args.user.strip():
        parser.error("a user name cannot be empty or hold ':'")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        parser.error("no password on standard input")
    print(make_secret(password, args.iterations).line(args.user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
