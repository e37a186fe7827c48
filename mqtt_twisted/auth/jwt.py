"""JSON Web Token authentication and topic authorization (PyJWT).

The client sends the token as its MQTT password.  The token's signature is
checked with a shared secret (HS256), a public key (RS256, ES256, ...) or the
keys of a JWKS file (chosen by the token's ``kid``); then its expiry, not-before,
audience and issuer.  Optionally the CONNECT user name must equal a claim
(``usernameClaim=sub``), and a claim lists the topic filters the client may
publish and subscribe to (``topicsClaim=acl``).  Anything wrong with the token
is an ``AuthenticationError``: CONNACK 0x86 (v5) / 0x04 (v3.1.1), and the broker
logs the refusal with the reason.

``--auth jwt:KEY=VALUE[:KEY=VALUE...]`` (``\\:`` for a colon inside a value), or
``--auth jwt:config=FILE`` with ``key = value`` lines; see docs/user-guide.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mqtt_twisted._strings import split_colons
from mqtt_twisted.auth.acl import levels_cover
from mqtt_twisted.codec.topics import parse_shared_filter, validate_topic_filter
from mqtt_twisted.errors import AuthenticationError, InvalidTopicFilter
from mqtt_twisted.interfaces import IAuthenticator, IAuthorizer

#: Keys of ``--auth jwt:...``, with their help text.
JWT_OPTIONS = {
    "secret": "HS256 shared secret (visible in ps: prefer secretFile)",
    "secretFile": "file holding the HS256 shared secret",
    "publicKey": "PEM public key (RSA: RS256, EC: ES256/384/512, Ed25519: EdDSA)",
    "jwks": "JWKS file (JSON Web Key Set); the token's kid picks the key",
    "algorithms": "comma-separated algorithms accepted (default: those of the key)",
    "audience": "comma-separated audiences; the token's aud must name one",
    "issuer": "comma-separated issuers; the token's iss must be one",
    "leeway": "seconds of clock skew allowed on exp and nbf (default 0)",
    "requireExp": "yes (default): refuse tokens without an exp claim",
    "usernameClaim": "claim the CONNECT user name must equal, or that is the user name "
                     "when none is sent (default: any user name)",
    "topicsClaim": "claim listing the topic filters allowed (default: all topics)",
    "config": "file of key = value lines with any of these keys",
}
_RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512",
                  "secp256k1": "ES256K"}
_HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
#: Shortest HMAC secret accepted, in bytes (HS256's hash size).
MIN_SECRET = 32


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithms: list[str]


class KeySource:
    """Chooses the key (and the algorithms allowed with it) for a token's header."""

    def __init__(self, keys: Mapping[str | None, _Key]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_secret(cls, secret: bytes, algorithms: Sequence[str] | None = None) -> KeySource:
        allowed = list(algorithms or ["HS256"])
        _check_algorithms(allowed, _HMAC_ALGORITHMS, "a shared secret")
        if len(secret) < MIN_SECRET:
            # RFC 7518 3.2: an HMAC key at least as long as the hash; a short one can be
            # brute-forced from any token.
            raise ValueError(f"the JWT secret is {len(secret)} bytes; HMAC needs at least "
                             f"{MIN_SECRET} bytes (RFC 7518 3.2)")
        return cls({None: _Key(secret, allowed)})

    @classmethod
    def from_public_key(cls, pem: bytes, algorithms: Sequence[str] | None = None) -> KeySource:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as e:
            raise ValueError(f"not a PEM public key: {e}") from None
        if isinstance(key, rsa.RSAPublicKey):
            usable = _RSA_ALGORITHMS
        elif isinstance(key, ec.EllipticCurvePublicKey):
            usable = [_EC_ALGORITHMS.get(key.curve.name, "ES256")]
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            usable = ["EdDSA"]
        else:
            raise ValueError(f"unsupported public key type {type(key).__name__}")
        allowed = list(algorithms) if algorithms else usable
        _check_algorithms(allowed, usable, f"this {type(key).__name__}")
        return cls({None: _Key(key, allowed)})

    @classmethod
    def from_jwks(cls, text: str, algorithms: Sequence[str] | None = None) -> KeySource:
        try:
            keyset = jwt.PyJWKSet.from_json(text)
        except (jwt.PyJWTError, ValueError) as e:
            raise ValueError(f"not a usable JWKS: {e}") from None
        keys: dict[str | None, _Key] = {}
        for jwk in keyset.keys:
            if jwk.public_key_use not in (None, "sig"):
                continue
            allowed = [jwk.algorithm_name]
            if algorithms and jwk.algorithm_name not in algorithms:
                continue
            keys[jwk.key_id] = _Key(jwk, allowed)
        if not keys:
            raise ValueError("the JWKS has no signing key for the algorithms allowed")
        return cls(keys)

    def for_header(self, header: Mapping[str, Any]) -> _Key:
        kid = header.get("kid")
        if kid is not None and kid in self._keys:
            return self._keys[kid]
        if len(self._keys) == 1:
            (only,) = self._keys.values()
            if kid is None or None in self._keys:
                return only
        if kid is None:
            raise AuthenticationError("token has no kid and the key set has several keys")
        raise AuthenticationError(f"token signed with an unknown key (kid {kid!r})")


def _check_algorithms(allowed: Sequence[str], usable: Sequence[str], what: str) -> None:
    wrong = [a for a in allowed if a not in usable]
    if wrong:
        raise ValueError(f"algorithms {', '.join(wrong)} cannot be used with {what} "
                         f"(usable: {', '.join(usable)})")


# --- topic rules ---------------------------------------------------------------------------


def _rule(claim: str, text: str) -> str | None:
    """One claim entry as the MQTT filter it grants; None grants nothing (an empty entry).

    A filter with a wildcard is taken as it is.  One without keeps its documented meaning
    as a prefix: ``devices/42`` (or ``devices/42/``) grants ``devices/42/#``, that is the
    topic itself and every topic below it."""
    text = text.strip()
    if not text:
        return None
    if "+" not in text and "#" not in text:
        text = text + ("#" if text.endswith("/") else "/#")
    try:
        validate_topic_filter(text)
        if parse_shared_filter(text) is not None:
            raise InvalidTopicFilter("a $share/ filter")
    except InvalidTopicFilter as e:
        raise AuthenticationError(f"claim {claim!r}: {text!r} is not a topic filter: {e}") from None
    return text


@dataclass(frozen=True)
class TopicFilters:
    """The MQTT filters a token grants, matched with the ACL file's covering test: a
    topic (publish) or a whole subscription filter must be covered by one of them.  So
    ``#`` grants every topic but the ``$`` ones [MQTT-4.7.2-1], ``/#`` only the topics
    starting with ``/``, and no filter grants nothing."""

    filters: tuple[str, ...]
    #: Checked on every PUBLISH, so split once: ``P/#`` filters without another wildcard
    #: as their literal levels ``P`` (a tuple comparison covers them), the rest as levels.
    prefixes: tuple[tuple[str, ...], ...] = field(default=(), repr=False, compare=False)
    others: tuple[tuple[str, ...], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls, values: Sequence[str], claim: str = "topics") -> TopicFilters:
        rules = tuple(r for r in (_rule(claim, v) for v in values) if r is not None)
        prefixes, others = [], []
        for rule in rules:
            levels = tuple(rule.split("/"))
            if levels[-1] == "#" and "+" not in levels and "#" not in levels[:-1]:
                prefixes.append(levels[:-1])
            else:
                others.append(levels)
        return cls(rules, tuple(prefixes), tuple(others))

    def _covers(self, levels: list[str]) -> bool:
        """Whether one filter covers the topic or filter split into ``levels``: what
        :func:`~mqtt_twisted.auth.acl.filter_covers` answers, faster for prefixes."""
        for prefix in self.prefixes:
            n = len(prefix)
            if n == 0:
                if levels[0][:1] != "$":  # '#': every topic but $ ones [MQTT-4.7.2-1]
                    return True
            elif len(levels) >= n and tuple(levels[:n]) == prefix:
                return True
        return any(levels_cover(rule, levels) for rule in self.others)

    @property
    def grants_all(self) -> bool:
        """Whether it grants every (non-``$``) topic."""
        return "#" in self.filters

    def allows_topic(self, topic: str) -> bool:
        return self._covers(topic.split("/"))

    def allows_filter(self, topic_filter: str) -> bool:
        try:
            shared = parse_shared_filter(topic_filter)
        except InvalidTopicFilter:
            return False
        if shared is not None:
            topic_filter = shared.topic_filter
        return self._covers(topic_filter.split("/"))


@dataclass(frozen=True)
class JWTIdentity:
    """Who a token says the client is, and what it may do until when."""

    subject: str | None
    username: str | None
    claims: Mapping[str, Any] = field(repr=False)
    publish: TopicFilters | None = None  # None: any topic
    subscribe: TopicFilters | None = None
    expires: float | None = None
    #: Whether the CONNECT user name was checked against the token (``usernameClaim``).
    username_verified: bool = False

    def __str__(self) -> str:
        return self.subject or self.username or ""

    @property
    def sessionOwner(self) -> str | None:
        """Who the sessions of this client belong to: the user name only when the token
        vouched for it (``usernameClaim``), since without that any client may send any
        user name with its own token; else the token's subject."""
        if self.username_verified:
            return self.username
        return self.subject


def _filter_list(value: Any, claim: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise AuthenticationError(f"claim {claim!r} must list topic filters")


def topic_rules(value: Any, claim: str) -> tuple[TopicFilters, TopicFilters]:
    """(publish, subscribe) filters from a claim: a list (both), or an object with
    ``pub``/``publish``, ``sub``/``subscribe`` and ``all`` lists."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"pub", "publish", "sub", "subscribe", "all"}
        if unknown:
            raise AuthenticationError(f"claim {claim!r} has unknown keys {sorted(unknown)}")
        both = _filter_list(value.get("all", []), claim)
        pub = both + _filter_list(value.get("pub", value.get("publish", [])), claim)
        sub = both + _filter_list(value.get("sub", value.get("subscribe", [])), claim)
        return TopicFilters.parse(pub, claim), TopicFilters.parse(sub, claim)
    both = _filter_list(value, claim)
    return TopicFilters.parse(both, claim), TopicFilters.parse(both, claim)


# --- the authenticator ----------------------------------------------------------------------


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"token claim {name} is not a number")
    return float(value)


@implementer(IAuthenticator, IAuthorizer)
class JWTAuthenticator:
    """Authenticates a CONNECT by the JWT in its password; authorizes by its claims.

    Publishing and subscribing stop being allowed once the token expires (the
    connection stays; a reconnect needs a new token).
    """

    def __init__(self, keys: KeySource, *, audience: Sequence[str] | None = None,
                 issuer: Sequence[str] | None = None, leeway: float = 0.0,
                 require_exp: bool = True, username_claim: str | None = None,
                 topics_claim: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.audience = list(audience) if audience else None
        self.issuer = list(issuer) if issuer else None
        self.leeway = leeway
        self.require_exp = require_exp
        self.username_claim = username_claim
        self.topics_claim = topics_claim
        self.clock = clock

    @property
    def grants_all_topics(self) -> bool:
        """Whether every valid token may use every topic (no ``topicsClaim``): the broker
        warns at start-up unless an ACL file restricts them."""
        return self.topics_claim is None

    # IAuthenticator

    def authenticate(self, credentials: Any) -> Deferred[JWTIdentity]:
        try:
            return succeed(self.verify(credentials.password, credentials.username))
        except AuthenticationError as e:
            return fail(e)

    def verify(self, password: bytes | str | None, username: str | None) -> JWTIdentity:
        """The identity a token proves; AuthenticationError says why not."""
        if not password:
            raise AuthenticationError("no token: send the JWT as the MQTT password")
        try:
            token = password.decode("ascii") if isinstance(password, bytes) else password
        except UnicodeDecodeError:
            raise AuthenticationError("the password is not a JWT") from None
        token = token.strip()
        try:
            key = self.keys.for_header(jwt.get_unverified_header(token))
            claims = jwt.decode(
                token, key.key, algorithms=key.algorithms,
                audience=self.audience,
                issuer=self.issuer[0] if self.issuer and len(self.issuer) == 1 else self.issuer,
                # exp and nbf are checked below against our clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as e:
            raise AuthenticationError(f"bad token: {e}") from None
        now = self.clock()
        expires = _number(claims, "exp")
        if expires is None:
            if self.require_exp:
                raise AuthenticationError("token has no exp claim")
        elif now >= expires + self.leeway:
            raise AuthenticationError("token expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and now + self.leeway < not_before:
            raise AuthenticationError("token not valid yet (nbf)")
        if self.username_claim is not None:
            expected = claims.get(self.username_claim)
            if expected is None:
                raise AuthenticationError(f"token has no {self.username_claim} claim")
            if username is None:
                # No user name beside the token (an HTTP Bearer token, an MQTT 5 CONNECT
                # with only a password): the signed claim is the user name.
                username = str(expected)
            elif username != str(expected):
                raise AuthenticationError(
                    f"user name does not match the token's {self.username_claim} claim")
        publish = subscribe = None
        if self.topics_claim is not None:
            rules = claims.get(self.topics_claim, [])  # none listed: none allowed
            publish, subscribe = topic_rules(rules, self.topics_claim)
        subject = claims.get("sub")
        return JWTIdentity(str(subject) if subject is not None else None, username, claims,
                           publish, subscribe,
                           expires + self.leeway if expires is not None else None,
                           self.username_claim is not None)

    # IAuthorizer

    def _valid(self, identity: Any) -> bool:
        return isinstance(identity, JWTIdentity) and (
            identity.expires is None or self.clock() < identity.expires)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        if not self._valid(identity):
            return False
        return identity.publish is None or identity.publish.allows_topic(topic)

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        if not self._valid(identity):
            return False
        return identity.subscribe is None or identity.subscribe.allows_filter(topicFilter)


# --- --auth jwt:... ---------------------------------------------------------------------------


def _split_argument(text: str) -> list[str]:
    """Split on ':' not escaped by a backslash, dropping the escapes."""
    return split_colons(text, keep_escapes=False)


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def parse_options(argument: str) -> dict[str, str]:
    """``KEY=VALUE[:KEY=VALUE...]`` (or a config file path) as a dict; ValueError if bad."""
    options: dict[str, str] = {}
    parts = [p for p in _split_argument(argument) if p]
    if len(parts) == 1 and "=" not in parts[0]:
        parts = [f"config={parts[0]}"]
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE, got {part!r}")
        if key == "config":
            for number, line in enumerate(_read_text(value, "JWT config").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                k, eq, v = line.partition("=")
                if not eq:
                    raise ValueError(f"{value}:{number}: expected key = value")
                options.setdefault(k.strip(), v.strip())
            continue
        options[key] = value
    unknown = set(options) - set(JWT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown jwt option(s) {', '.join(sorted(unknown))} (known: "
                         f"{', '.join(k for k in JWT_OPTIONS if k != 'config')})")
    return options


def _list(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def authenticator_from_options(options: Mapping[str, str],
                               clock: Callable[[], float] = time.time) -> JWTAuthenticator:
    """Build the authenticator ``--auth jwt:...`` describes; ValueError if it cannot."""
    sources = [k for k in ("secret", "secretFile", "publicKey", "jwks") if options.get(k)]
    if len(sources) != 1:
        raise ValueError("give exactly one of secret, secretFile, publicKey or jwks")
    algorithms = _list(options.get("algorithms"))
    source = sources[0]
    if source == "secret":
        keys = KeySource.from_secret(options["secret"].encode(), algorithms)
    elif source == "secretFile":
        secret = _read_text(options["secretFile"], "JWT secret file").strip()
        keys = KeySource.from_secret(secret.encode(), algorithms)
    elif source == "publicKey":
        pem = _read_text(options["publicKey"], "JWT public key").encode()
        keys = KeySource.from_public_key(pem, algorithms)
    else:
        keys = KeySource.from_jwks(_read_text(options["jwks"], "JWKS file"), algorithms)
    try:
        leeway = float(options.get("leeway", "0") or 0)
    except ValueError:
        raise ValueError(f"leeway={options['leeway']!r} is not a number") from None
    require = options.get("requireExp", "yes").strip().lower()
    if require not in ("yes", "no", "true", "false"):
        raise ValueError(f"requireExp={options['requireExp']!r}: expected yes or no")
    return JWTAuthenticator(
        keys,
        audience=_list(options.get("audience")),
        issuer=_list(options.get("issuer")),
        leeway=leeway,
        require_exp=require in ("yes", "true"),
        username_claim=options.get("usernameClaim") or None,
        topics_claim=options.get("topicsClaim") or None,
        clock=clock,
    )
