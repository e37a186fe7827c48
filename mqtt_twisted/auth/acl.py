"""Mosquitto's ACL file: ``--acl /etc/mqtt/acl``.

The format of Mosquitto's ``acl_file`` (``man mosquitto.conf``), one rule a line:

- ``topic [read|write|readwrite|deny] FILTER``: no access word means readwrite.  Before
  the first ``user`` line it applies to anonymous clients (no user name), after it to
  that user;
- ``user USERNAME`` starts that user's section (a user named twice: both sections);
- ``pattern [read|write|readwrite|deny] FILTER``: for every client, ``%c`` replaced by
  its client id and ``%u`` by its user name (a ``%u`` pattern does not apply to a client
  without one; a client id or user name holding ``+`` or ``#`` is refused everything
  the patterns would substitute it into, as Mosquitto does);
- blank lines and ``#`` comments are ignored; anything else is an error
  ``PATH:LINE: what``.

Once an ACL is given, what no line allows is refused.  A ``deny`` line refuses what it
matches even when another line allows it.  Publishing needs write access to the topic;
subscribing needs read access to the whole filter (``$share/GROUP/F`` is checked as
``F``): some read rule R must *cover* F, that is match every topic F can match.  The
check is a sound approximation, level by level: R's ``#`` covers whatever is left of F,
R's ``+`` covers a literal or a ``+``, a literal covers only the same literal.  A deny
rule refuses a filter it covers the same way; a filter that only overlaps a deny rule
(``#`` against ``deny a/b``) is allowed, and then each of its deliveries is checked
against the rules (``IReadAuthorizer``): the ``a/b`` messages never reach it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.auth._files import read_utf8
from mqtt_twisted.codec.topics import parse_shared_filter, validate_topic_filter
from mqtt_twisted.errors import InvalidTopicFilter, ValidationError
from mqtt_twisted.interfaces import IAuthorizer, IReadAuthorizer
from mqtt_twisted.records import owner_of

READ, WRITE, DENY = "read", "write", "deny"
#: Access word -> what it grants; ``deny`` grants nothing and refuses.
ACCESS = {"read": {READ}, "write": {WRITE}, "readwrite": {READ, WRITE}, "deny": {DENY}}
#: Cached answers at most; the cache is emptied when full and on reload.
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``topic`` or ``pattern`` line: its access words and its filter."""

    access: frozenset[str]
    topic_filter: str
    line: int = 0


@dataclass(slots=True)
class AccessList:
    """A parsed ACL file: anonymous rules, each user's, and the patterns."""

    anonymous: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)
    patterns: list[Rule] = field(default_factory=list)

    def rules_for(self, username: str | None, client_id: str | None) -> list[Rule] | None:
        """The rules applying to one client, patterns substituted; None when a pattern
        would substitute a name holding a wildcard (refuse everything)."""
        own = self.anonymous if username is None else self.users.get(username, [])
        rules = list(own)
        for rule in self.patterns:
            text = rule.topic_filter
            if "%u" in text:
                if username is None:
                    continue
                if "+" in username or "#" in username:
                    return None
                text = text.replace("%u", username)
            if "%c" in text:
                cid = client_id or ""
                if "+" in cid or "#" in cid:
                    return None
                text = text.replace("%c", cid)
            rules.append(Rule(rule.access, text, rule.line))
        return rules


def _split_access(rest: str) -> tuple[frozenset[str], str]:
    word, *after = rest.split(None, 1)
    if word in ACCESS:
        return frozenset(ACCESS[word]), after[0].strip() if after else ""
    return frozenset(ACCESS["readwrite"]), rest


def _check_filter(text: str) -> None:
    if not text:
        raise ValueError("expected a topic filter")
    probe = text.replace("%u", "u").replace("%c", "c")
    try:
        if parse_shared_filter(probe) is not None:
            raise ValueError(f"{text!r}: a $share/ filter cannot be a rule (write the filter)")
        validate_topic_filter(probe)
    except InvalidTopicFilter as e:
        raise ValueError(str(e)) from None


def parse_acl(text: str, path: str) -> AccessList:
    """The rules of an ACL file's ``text``; errors are ``PATH:LINE: what``."""
    acl = AccessList()
    current = acl.anonymous
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, *after = line.split(None, 1)
        rest = after[0].strip() if after else ""
        try:
            if keyword == "user":
                if not rest:
                    raise ValueError("expected user USERNAME")
                current = acl.users.setdefault(rest, [])
            elif keyword in ("topic", "pattern"):
                if not rest:
                    raise ValueError(f"expected {keyword} [read|write|readwrite|deny] FILTER")
                access, topic_filter = _split_access(rest)
                _check_filter(topic_filter)
                rule = Rule(access, topic_filter, number)
                (current if keyword == "topic" else acl.patterns).append(rule)
            else:
                raise ValueError(f"unknown line {keyword!r} (expected topic, user or pattern)")
        except ValueError as e:
            raise ValidationError(f"{path}:{number}: {e}") from None
    return acl


def read_acl(path: str) -> AccessList:
    """Read and parse an ACL file (OSError if it cannot be read)."""
    return parse_acl(read_utf8(path), path)


def filter_covers(rule: str, topic_filter: str) -> bool:
    """Whether every topic ``topic_filter`` can match is matched by ``rule`` (sound, not
    complete: ``False`` may be returned for a few covered filters, never ``True`` for one
    that is not).  Both are plain filters; a topic is a filter without wildcards."""
    return levels_cover(rule.split("/"), topic_filter.split("/"))


def levels_cover(r_levels: Sequence[str], f_levels: Sequence[str]) -> bool:
    """:func:`filter_covers` on filters already split into levels (a rule checked often
    is split once)."""
    if f_levels[0][:1] == "$" and r_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]: a leading wildcard does not match $ topics
    for i, r in enumerate(r_levels):
        if r == "#":
            return True  # covers whatever is left, even nothing (a/# covers a)
        if i >= len(f_levels):
            return False
        f = f_levels[i]
        if f == "#" or (f == "+" and r != "+") or (r != "+" and r != f):
            return False
    return len(r_levels) == len(f_levels)


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both filters (exact: ``+`` matches any one level, ``#``
    any rest, even none; a leading wildcard matches no ``$`` topic [MQTT-4.7.2-1])."""
    a_levels = first.split("/")
    b_levels = second.split("/")
    if (a_levels[0][:1] == "$" and b_levels[0] in ("+", "#")) or (
            b_levels[0][:1] == "$" and a_levels[0] in ("+", "#")):
        return False
    for a, b in zip(a_levels, b_levels):
        if a == "#" or b == "#":
            return True
        if a != b and a != "+" and b != "+":
            return False
    if len(a_levels) == len(b_levels):
        return True
    longer = a_levels if len(a_levels) > len(b_levels) else b_levels
    return longer[min(len(a_levels), len(b_levels))] == "#"  # a/# also matches a


def _identity_name(identity: Any) -> str | None:
    """The user whose ``user`` section applies: the one the identity proves, as for
    session ownership (``records.owner_of``): the string itself (passwd, SCRAM, the
    anonymous default), a JWT's user name only when ``usernameClaim`` vouched for it,
    else its subject.  A JWT client's unchecked CONNECT user name must not pick
    another user's section (with ``--auth jwt`` and no ``usernameClaim``, bob's token
    with the user name ``admin`` was given admin's rules)."""
    return owner_of(identity)


def decide(rules: Sequence[Rule] | None, want: str, topic: str) -> bool:
    """Mosquitto's order: a deny rule covering ``topic`` refuses; then any rule granting
    ``want`` and covering it allows; else refused."""
    if rules is None:
        return False
    if any(DENY in r.access and filter_covers(r.topic_filter, topic) for r in rules):
        return False
    return any(want in r.access and filter_covers(r.topic_filter, topic) for r in rules)


@implementer(IAuthorizer, IReadAuthorizer)
class AclAuthorizer:
    """Publish and subscribe checked against a Mosquitto ACL file; answers are cached
    per (user name, client id, action, topic), at most ``cache_size`` of them."""

    log = Logger()
    #: Answers depend on (identity, client id, topic) alone until ``reload()``: the
    #: broker may cache them per connection.
    stableAnswers = True

    def __init__(self, acl: AccessList, *, path: str | None = None,
                 cache_size: int = CACHE_SIZE) -> None:
        self._acl = acl
        self.path = path
        self._cache: dict[tuple[Any, ...], bool] = {}
        self._cache_size = cache_size

    @classmethod
    def from_file(cls, path: str) -> AclAuthorizer:
        """The file's authorizer; ValueError if it cannot be read or parsed."""
        try:
            acl = read_acl(path)
        except OSError as e:
            raise ValueError(f"cannot read ACL file {path}: {e.strerror}") from None
        return cls(acl, path=path)

    def _check(self, identity: Any, client_id: str | None, want: str, topic: str) -> bool:
        name = _identity_name(identity)
        key = (name, client_id, want, topic)
        found = self._cache.get(key)
        if found is not None:
            return found
        answer = decide(self._acl.rules_for(name, client_id), want, topic)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = answer
        return answer

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return self._check(identity, clientId, WRITE, topic)

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> bool:
        try:
            shared = parse_shared_filter(topicFilter)
        except InvalidTopicFilter:
            return False
        return self._check(identity, clientId, READ,
                           shared.topic_filter if shared is not None else topicFilter)

    def mayRead(self, identity: Any, clientId: str | None, topic: str) -> bool:
        return self._check(identity, clientId, READ, topic)

    def filterNeedsReadCheck(self, identity: Any, clientId: str | None,
                             topicFilter: str) -> bool:
        """A granted filter needs its deliveries checked when a deny rule overlaps it, or
        when no single read rule covers it (a ``$share`` filter is its inner filter)."""
        try:
            shared = parse_shared_filter(topicFilter)
        except InvalidTopicFilter:
            return True
        inner = shared.topic_filter if shared is not None else topicFilter
        name = _identity_name(identity)
        key = (name, clientId, "overlap", inner)
        found = self._cache.get(key)
        if found is None:
            rules = self._acl.rules_for(name, clientId)
            found = rules is None or not decide(rules, READ, inner) or any(
                DENY in r.access and filters_overlap(r.topic_filter, inner) for r in rules)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = found
        return found

    def reload(self) -> bool | None:
        """Re-read the file (SIGHUP): True if read; False if it did not parse (the old
        rules stay, one line is logged); None without a file."""
        if self.path is None:
            return None
        try:
            acl = read_acl(self.path)
        except (OSError, ValueError) as e:
            self.log.error("ACL file not reloaded, the old one stays: {error}",
                           action="config_reload", error=e)
            return False
        self._acl = acl
        self._cache.clear()
        self.log.info("ACL file {path} reloaded", action="config_reload", path=self.path)
        return True


@implementer(IAuthorizer, IReadAuthorizer)
class AllAuthorizers:
    """Allows what every one of ``authorizers`` allows (the ACL and the auth backend's
    own authorizer); a plain bool when they all answer one, else a Deferred.
    ``reload()`` reloads the ones in ``reloadable`` (the backend's own reloads with its
    authenticator)."""

    def __init__(self, authorizers: Iterable[Any], reloadable: Iterable[Any] = ()) -> None:
        self.authorizers = tuple(authorizers)
        self.reloadable = tuple(reloadable)
        #: Cacheable when every member's answers are.
        self.stableAnswers = all(getattr(a, "stableAnswers", False) for a in self.authorizers)

    def _all(self, method: str, *args: Any) -> bool | Deferred[bool]:
        for i, authorizer in enumerate(self.authorizers):
            answer = getattr(authorizer, method)(*args)
            if isinstance(answer, Deferred):
                return answer.addCallback(self._rest, i + 1, method, args)
            if not answer:
                return False
        return True

    def _rest(self, answer: Any, start: int, method: str, args: tuple[Any, ...]) -> Any:
        if not answer:
            return False
        rest = AllAuthorizers(self.authorizers[start:])
        return maybeDeferred(rest._all, method, *args)

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> Any:
        return self._all("mayPublish", identity, clientId, topic)

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> Any:
        return self._all("maySubscribe", identity, clientId, topicFilter)

    def filterNeedsReadCheck(self, identity: Any, clientId: str | None,
                             topicFilter: str) -> bool:
        return any(IReadAuthorizer.providedBy(a) and a.filterNeedsReadCheck(
            identity, clientId, topicFilter) for a in self.authorizers)

    def mayRead(self, identity: Any, clientId: str | None, topic: str) -> bool:
        """Each authorizer that checks reads must allow it (the others allowed the
        subscription, which is all they decide)."""
        return all(a.mayRead(identity, clientId, topic) for a in self.authorizers
                   if IReadAuthorizer.providedBy(a))

    def reload(self) -> None:
        for authorizer in self.reloadable:
            authorizer.reload()
