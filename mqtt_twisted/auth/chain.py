"""Several auth backends on one broker: ``--auth passwd:FILE --auth jwt:...``.

:class:`AuthChain` tries its backends in the order given.  The first that accepts the
credentials wins; one that refuses them (unknown user, wrong password, not a token)
passes them to the next; when all refuse, the last refusal is the answer.  A backend
that fails in an unexpected way is logged and counts as a refusal, so a broken backend
cannot crash a CONNECT nor let anyone in.

Clients that present no credentials at all (no user name, no password, no TLS client
certificate) never reach the backends: they are refused (CONNACK 0x87 / 5) unless
``allow_anonymous`` (``--allow-anonymous``), and then let in with the identity ``None``
(the ACL file's anonymous section applies to them).  A client with only a certificate
is offered to the backends (a plugin may authenticate by certificate); if none takes
it, it is anonymous.

The identity a backend answers is wrapped in a :class:`ChainIdentity` naming the
backend, so that the chain's authorizer asks *that* backend's authorizer (a JWT's
topic claims for a JWT user; nothing more for a password-file user): a token's claims
never restrict, nor widen, what a password user may do.  The ACL file still applies to
everyone (``tap.py`` combines both with ``AllAuthorizers``).

MQTT 5 enhanced authentication works through the chain: its ``methods`` are those of
its backends, and an exchange is run by the first backend that has the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.errors import AuthenticationError, AuthorizationError, MQTTError
from mqtt_twisted.interfaces import (
    IAuthExchange,
    IAuthorizer,
    IEnhancedAuthenticator,
)


@dataclass(frozen=True)
class ChainIdentity:
    """Who a backend of the chain says the client is: ``identity`` as that backend
    answered it, and the ``backend`` (its position in the chain, and its name)."""

    backend: int
    name: str
    identity: Any

    @property
    def username(self) -> str | None:
        """The user name the ACL file's sections are chosen by (the backend identity's)."""
        inner = self.identity
        if inner is None or isinstance(inner, str):
            return inner
        found = getattr(inner, "username", None)
        return found if isinstance(found, str) else None

    @property
    def sessionOwner(self) -> str | None:
        """Who this client's sessions belong to: what the backend's identity says (its
        own ``sessionOwner``, e.g. a JWT's subject when no ``usernameClaim`` vouched for
        the user name), else its user name.  The wrapper never changes the owner."""
        inner = self.identity
        if inner is None or isinstance(inner, str):
            return inner
        if hasattr(inner, "sessionOwner"):
            found = inner.sessionOwner
            return found if isinstance(found, str) else None
        return self.username

    def __str__(self) -> str:
        return str(self.identity)


@dataclass(frozen=True)
class Backend:
    """One ``--auth`` of the chain: its name, its authenticator and (if it has one) its
    authorizer."""

    name: str
    authenticator: Any
    authorizer: Any = None


def _no_credentials(credentials: Any) -> bool:
    return (getattr(credentials, "username", None) is None
            and not getattr(credentials, "password", None))


def _anonymous(credentials: Any) -> bool:
    """Nothing at all to check: no user name, no password, no TLS client certificate."""
    return _no_credentials(credentials) and not getattr(credentials, "certificateIdentity",
                                                        None)


@implementer(IAuthExchange)
class _ChainExchange:
    """A backend's exchange whose final identity is wrapped as the chain's."""

    def __init__(self, exchange: Any, index: int, name: str) -> None:
        self._exchange = exchange
        self._index = index
        self._name = name

    def step(self, data: bytes | None) -> Deferred[Any]:
        def wrap(step: Any) -> Any:
            if step.done:
                step.identity = ChainIdentity(self._index, self._name, step.identity)
            return step

        return maybeDeferred(self._exchange.step, data).addCallback(wrap)


@implementer(IEnhancedAuthenticator, IAuthorizer)
class AuthChain:
    """Authenticates with the first of ``backends`` that accepts; authorizes with the
    authorizer of the backend that authenticated the client."""

    log = Logger()

    def __init__(self, backends: Sequence[Backend], *, allow_anonymous: bool = False) -> None:
        if not backends:
            raise ValueError("an auth chain needs at least one backend")
        self.backends = tuple(backends)
        self.allow_anonymous = allow_anonymous
        methods: list[str] = []
        for backend in self.backends:
            for method in getattr(backend.authenticator, "methods", ()):
                if method not in methods:
                    methods.append(method)
        self.methods = tuple(methods)

    # IAuthenticator

    def authenticate(self, credentials: Any) -> Deferred[Any]:
        if _anonymous(credentials):
            return self._anonymous()
        d = self._try(credentials, 0, [])
        if self.allow_anonymous and _no_credentials(credentials):
            # Only a certificate, which no backend took: an anonymous client after all.
            d.addErrback(lambda _: self._anonymous())
        return d

    def _anonymous(self) -> Deferred[Any]:
        if self.allow_anonymous:
            return succeed(None)
        return fail(AuthorizationError(
            "anonymous access is not allowed (no credentials; see --allow-anonymous)"))

    def _try(self, credentials: Any, index: int, refusals: list[Failure]) -> Deferred[Any]:
        if index >= len(self.backends):
            return fail(self._refusal(refusals))
        backend = self.backends[index]
        d = maybeDeferred(backend.authenticator.authenticate, credentials)

        def accepted(identity: Any) -> ChainIdentity:
            return ChainIdentity(index, backend.name, identity)

        def refused(failure: Failure) -> Deferred[Any]:
            if not failure.check(MQTTError):
                self.log.failure("auth backend {backend} failed on {client}; counted as a "
                                 "refusal", failure, backend=backend.name,
                                 client=getattr(credentials, "clientId", None))
                failure = Failure(AuthenticationError("internal error"))
            return self._try(credentials, index + 1, [*refusals, failure])

        return d.addCallbacks(accepted, refused)

    def _refusal(self, refusals: list[Failure]) -> Failure:
        """The last backend's refusal (its reason code), saying what each one answered
        when there were several (for the log line and the v5 reason string)."""
        last = refusals[-1]
        if len(refusals) == 1 or type(last.value) not in (AuthenticationError,
                                                          AuthorizationError):
            return last
        said = "; ".join(f"{backend.name}: {failure.getErrorMessage()}"
                         for backend, failure in zip(self.backends, refusals))
        return Failure(type(last.value)(said, last.value.reason_code))

    # IEnhancedAuthenticator

    def startExchange(self, method: str, credentials: Any) -> _ChainExchange:
        for index, backend in enumerate(self.backends):
            if method in getattr(backend.authenticator, "methods", ()):
                exchange = backend.authenticator.startExchange(method, credentials)
                return _ChainExchange(exchange, index, backend.name)
        raise AuthenticationError(f"authentication method {method!r} not supported")

    # IAuthorizer

    def _ask(self, method: str, identity: Any, clientId: str | None, topic: str) -> Any:
        """Ask the authorizer of the backend that made ``identity``.  A backend without
        one (passwd) allows, and so does the chain for an anonymous client it let in:
        the ACL file decides for them.  An identity the chain did not make is refused."""
        if identity is None:
            return self.allow_anonymous
        if not isinstance(identity, ChainIdentity):
            return False
        if not 0 <= identity.backend < len(self.backends):
            return False
        backend = self.backends[identity.backend]
        if backend.name != identity.name:
            return False
        if backend.authorizer is None:
            return True
        return getattr(backend.authorizer, method)(identity.identity, clientId, topic)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> Any:
        return self._ask("mayPublish", identity, clientId, topic)

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> Any:
        return self._ask("maySubscribe", identity, clientId, topicFilter)

    # SIGHUP

    def reload(self) -> None:
        """Reload every backend that can (a password file)."""
        for backend in self.backends:
            reload = getattr(backend.authenticator, "reload", None)
            if reload is not None:
                reload()
