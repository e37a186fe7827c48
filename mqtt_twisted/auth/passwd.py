"""Mosquitto's password file: ``--auth passwd:/etc/mqtt/passwd``.

One ``user:HASH`` line per user, as ``mosquitto_passwd`` writes them, so that an
existing Mosquitto file works unchanged:

- ``$7$ITERATIONS$SALT$HASH``: PBKDF2-HMAC-SHA512 (``mosquitto_passwd``'s default
  since Mosquitto 2.0);
- ``$6$SALT$HASH``: one SHA-512 of the password followed by the salt (Mosquitto 1.6
  and earlier, ``mosquitto_passwd -H sha512``);

salt and hash in standard base64.  Blank lines and ``#`` comments are ignored; any
other line that is not one of these is an error naming the file and the line, so a
typo stops the broker instead of locking a user out.

Only the hashes are kept.  PBKDF2 is slow on purpose, so each check runs in a thread
(the reactor keeps serving other clients meanwhile), and nothing derived from a
password is cached.  Anonymous clients (no user name) are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.auth._files import read_utf8
from mqtt_twisted.auth._threads import Runner, in_thread_pool
from mqtt_twisted.errors import AuthenticationError, AuthorizationError, ValidationError
from mqtt_twisted.interfaces import IAuthenticator

#: What Mosquitto's ``$N$`` prefixes name.
SHA512 = "6"
PBKDF2_SHA512 = "7"
#: Length of a SHA-512 digest: every hash in the file has it.
DIGEST_SIZE = 64



@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One user's hash as the file gives it; ``verify`` recomputes and compares."""

    kind: str
    salt: bytes
    digest: bytes
    iterations: int = 0

    def derive(self, password: bytes) -> bytes:
        if self.kind == PBKDF2_SHA512:
            return hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)
        return hashlib.sha512(password + self.salt).digest()

    def verify(self, password: bytes) -> bool:
        """Blocking (PBKDF2): call it in a thread.  Constant-time comparison."""
        return hmac.compare_digest(self.derive(password), self.digest)

    def encode(self) -> str:
        """The file's form: ``$7$ITERATIONS$SALT$HASH`` or ``$6$SALT$HASH``."""
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        if self.kind == PBKDF2_SHA512:
            return f"${self.kind}${self.iterations}${salt}${digest}"
        return f"${self.kind}${salt}${digest}"


#: What ``mosquitto_passwd`` 2.0 uses: PBKDF2-SHA512, 101 iterations, a 12-byte salt.
DEFAULT_ITERATIONS = 101
SALT_SIZE = 12


def hash_password(password: bytes | str, kind: str = PBKDF2_SHA512,
                  iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """A new random-salted hash of ``password`` in the file's form, as mosquitto_passwd
    writes it (``mqtt-twisted passwd`` uses it)."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    empty = PasswordHash(kind, salt, b"", iterations if kind == PBKDF2_SHA512 else 0)
    return PasswordHash(kind, salt, empty.derive(password), empty.iterations).encode()


#: Checked for unknown users, so that they take as long as known ones to refuse.
_DUMMY = PasswordHash(PBKDF2_SHA512, b"\0" * 12, b"\0" * DIGEST_SIZE, 101)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64") from None


def parse_hash(text: str) -> PasswordHash:
    """Parse ``$6$SALT$HASH`` or ``$7$ITERATIONS$SALT$HASH``; ValueError says what is wrong."""
    parts = text.split("$")
    if len(parts) < 2 or parts[0] != "":
        raise ValueError("expected user:$7$ITERATIONS$SALT$HASH or user:$6$SALT$HASH "
                         "(a plain-text password? hash the file with mosquitto_passwd -U)")
    kind, fields = parts[1], parts[2:]
    if kind == PBKDF2_SHA512:
        if len(fields) != 3:
            raise ValueError("a $7$ hash is $7$ITERATIONS$SALT$HASH")
        if not fields[0].isdigit() or int(fields[0]) < 1:
            raise ValueError(f"iterations {fields[0]!r} is not a positive integer")
        iterations = int(fields[0])
        fields = fields[1:]
    elif kind == SHA512:
        if len(fields) != 2:
            raise ValueError("a $6$ hash is $6$SALT$HASH")
        iterations = 0
    else:
        raise ValueError(f"unknown hash type ${kind}$ (known: $6$ SHA-512, $7$ PBKDF2-SHA512)")
    salt, digest = _b64(fields[0], "salt"), _b64(fields[1], "hash")
    if not salt:
        raise ValueError("the salt is empty")
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"the hash is {len(digest)} bytes, not {DIGEST_SIZE} (SHA-512)")
    return PasswordHash(kind, salt, digest, iterations)


def parse_passwd(text: str, path: str) -> dict[str, PasswordHash]:
    """The users of a password file's ``text``; errors are ``PATH:LINE: what``."""
    users: dict[str, PasswordHash] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        try:
            if not sep or not name:
                raise ValueError("expected user:HASH")
            if name in users:
                raise ValueError(f"user {name!r} is already on line {lines[name]}")
            users[name] = parse_hash(encoded)
        except ValueError as e:
            raise ValidationError(f"{path}:{number}: {e}") from None
        lines[name] = number
    return users


def read_passwd(path: str) -> dict[str, PasswordHash]:
    """Read and parse a password file (OSError if it cannot be read)."""
    return parse_passwd(read_utf8(path), path)


@implementer(IAuthenticator)
class PasswordFileAuthenticator:
    """CONNECT user name and password checked against a Mosquitto password file.

    ``run`` computes the hash away from the reactor; by default in ``reactor``'s
    thread pool.  Tests pass one that runs it at once.
    """

    log = Logger()

    def __init__(self, users: Mapping[str, PasswordHash], *, reactor: Any = None,
                 run: Runner | None = None, path: str | None = None) -> None:
        if run is None:
            if reactor is None:
                raise TypeError("PasswordFileAuthenticator needs a reactor or a run function")
            run = in_thread_pool(reactor)
        self._users = dict(users)
        self._run = run
        self.path = path

    @classmethod
    def from_file(cls, path: str, *, reactor: Any = None,
                  run: Runner | None = None) -> PasswordFileAuthenticator:
        return cls(read_passwd(path), reactor=reactor, run=run, path=path)

    def authenticate(self, credentials: Any) -> Deferred[str]:
        """Fires with the user name, or fails with AuthenticationError (unknown user, wrong
        password: CONNACK 0x86 / 4) or AuthorizationError (no user name: 0x87 / 5)."""
        name = credentials.username
        if name is None:
            return fail(AuthorizationError("anonymous access is not allowed (no user name)"))
        known = self._users.get(name)
        password = credentials.password or b""
        if isinstance(password, str):
            password = password.encode("utf-8")

        def checked(ok: bool) -> str:
            if not ok or known is None:
                raise AuthenticationError("bad user name or password")
            return str(name)

        d: Deferred[bool] = self._run((known or _DUMMY).verify, password)
        return d.addCallback(checked)

    def reload(self) -> bool | None:
        """Re-read the file (SIGHUP): True if read; False if it did not parse (the old
        users stay, the error is logged); None without a file."""
        if self.path is None:
            return None
        try:
            self._users = read_passwd(self.path)
        except (OSError, ValueError) as e:
            self.log.error("Password file not reloaded, the old one stays: {error}",
                           action="config_reload", error=e)
            return False
        self.log.info("Password file {path} reloaded: {n} users",
                      action="config_reload", path=self.path,
                      n=len(self._users))
        return True
