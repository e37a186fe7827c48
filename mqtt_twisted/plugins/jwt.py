"""The ``jwt`` authenticator: ``--auth jwt:secret=...`` / ``jwt:publicKey=FILE`` /
``jwt:jwks=FILE`` (docs/user-guide.md, "Token authentication")."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mqtt_twisted.interfaces import IAuthPlugin


@implementer(IAuthPlugin)
class JWTAuthPlugin:
    name = "jwt"
    description = ("JSON Web Tokens as the MQTT password: jwt:secret=S, jwt:publicKey=FILE or "
                   "jwt:jwks=FILE [:audience=A:issuer=I:usernameClaim=C:topicsClaim=C]")

    def makeAuthenticator(self, reactor: Any, argument: str) -> Any:
        from mqtt_twisted.auth.jwt import authenticator_from_options, parse_options

        if not argument:
            raise ValueError("--auth jwt:... needs secret=, secretFile=, publicKey= or jwks=")
        return authenticator_from_options(parse_options(argument), clock=reactor.seconds)


jwtAuth = JWTAuthPlugin()
