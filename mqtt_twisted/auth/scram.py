"""SCRAM-SHA-256 (RFC 7677) as an MQTT 5 enhanced authentication method.

The SCRAM arithmetic comes from ``scramp``, a maintained implementation of
RFC 5802/7677 (also used by pg8000): hand-written SCRAM is easy to get
subtly wrong.  Users come from a file of ``username:password`` lines; only the
derived SCRAM keys are kept in memory.  The same users may also log in with a
plain CONNECT user name and password.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scramp import ScramException, ScramMechanism
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mqtt_twisted.errors import AuthenticationError, ValidationError
from mqtt_twisted.interfaces import IAuthExchange, IAuthorizer, IEnhancedAuthenticator

METHOD = "SCRAM-SHA-256"


@dataclass(slots=True)
class AuthStep:
    """One answer of an exchange: more to do (``done`` False) or finished."""

    done: bool
    data: bytes | None = None
    identity: Any = None


def read_users(path: str) -> dict[str, str]:
    """Parse a ``username:password`` file (``#`` comments and blank lines allowed)."""
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, password = line.partition(":")
            if not sep or not name:
                raise ValidationError(f"{path}:{number}: expected username:password")
            users[name] = password
    return users


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


@implementer(IEnhancedAuthenticator, IAuthorizer)
class ScramAuthenticator:
    """SCRAM-SHA-256 via MQTT 5 AUTH, and plain user name/password for everyone else."""

    methods = (METHOD,)

    def __init__(self, users: Mapping[str, str], iterations: int = 4096) -> None:
        self._mechanism = ScramMechanism(METHOD)
        self._passwords = dict(users)
        self._auth_info = {
            name: self._mechanism.make_auth_info(password, iteration_count=iterations)
            for name, password in users.items()
        }

    def startExchange(self, method: str, credentials: Any) -> _ScramExchange:
        return _ScramExchange(self._mechanism, self._auth_info)

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        """Plain CONNECT credentials, checked against the same users."""
        name = credentials.username
        expected = self._passwords.get(name) if name is not None else None
        given = credentials.password or b""
        if expected is None or not hmac.compare_digest(expected.encode(), given):
            return fail(AuthenticationError("bad user name or password"))
        return succeed(name)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return True

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        return True
