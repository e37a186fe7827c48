"""Per-topic read checks for subscriptions an authorizer grants only in part.

An ACL may let a client subscribe to ``a/#`` and still deny it ``a/secret``: the
subscription is granted (as Mosquitto grants it) and each delivery is checked against
the rules.  Only sessions holding such a filter pay for it: their ``read_check`` is a
function ``topic -> bool`` with its own bounded answer cache, so a ``#`` subscriber
costs one dictionary lookup per message once the topics are known; every other
session's ``read_check`` is None, one attribute test in ``Delivery.deliver``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mqtt_twisted.interfaces import IReadAuthorizer

if TYPE_CHECKING:
    from mqtt_twisted.core.session import Session

#: Topics whose answers one session keeps; the cache is emptied when full.
CACHE_SIZE = 4096


class ReadCheck:
    """Which topics one session may receive, asked of the authorizer once a topic."""

    __slots__ = ("authorizer", "identity", "client_id", "answers")

    def __init__(self, authorizer: Any, identity: Any, client_id: str) -> None:
        self.authorizer = authorizer
        self.identity = identity
        self.client_id = client_id
        self.answers: dict[str, bool] = {}

    def allows(self, topic: str) -> bool:
        answer = self.answers.get(topic)
        if answer is None:
            answer = bool(self.authorizer.mayRead(self.identity, self.client_id, topic))
            if len(self.answers) >= CACHE_SIZE:
                self.answers.clear()
            self.answers[topic] = answer
        return answer


def needs_check(authorizer: Any, session: Session, filters: Iterable[str]) -> bool:
    """Whether any of ``filters`` needs its deliveries checked for ``session``."""
    if authorizer is None or not IReadAuthorizer.providedBy(authorizer):
        return False
    ask = authorizer.filterNeedsReadCheck
    return any(ask(session.identity, session.clientId, f) for f in filters)


def read_check_for(authorizer: Any, session: Session) -> Callable[[str], bool] | None:
    """The session's delivery check for all its subscriptions (None: none needed)."""
    if not needs_check(authorizer, session, session.subscriptions):
        return None
    return ReadCheck(authorizer, session.identity, session.clientId).allows
