"""Authenticators and authorizers shipped with the broker."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mqtt_twisted.interfaces import IAuthenticator, IAuthorizer


@implementer(IAuthenticator, IAuthorizer)
class AllowAnonymous:
    """Lets every client connect and do anything: the default, as in Mosquitto 1.x.

    The identity is the user name the client gave (or None).
    """

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        return succeed(credentials.username)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return True

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        return True
