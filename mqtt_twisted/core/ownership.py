"""Sessions belong to their user (docs/security.md).

A session records the user that created it (:func:`~mqtt_twisted.records.owner_of` of
the creating identity).  When an authenticator is configured, a CONNECT (or an
adapter's virtual session) naming a client id whose session belongs to another user
never gets that session: it is refused (CONNACK 0x87 / 5, ``--session-owner refuse``,
the default), or, for MQTT clients with ``--session-owner fresh``, it gets a new
clean session of its own under an internal key (:func:`foreign_key`) that leaves the
owner's session and connection alone.  And whenever a session changes hands within
its user (a resume, a re-authentication) its subscriptions are checked again against
the authorizer, since the ACL or the token's claims may have changed: the refused ones
are removed, with the queued messages only they matched.

Sans-IO: authorizer answers may be Deferreds, recognised by their methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from mqtt_twisted.codec.topics import topic_matches
from mqtt_twisted.core._async import gather, when
from mqtt_twisted.records import AWAITING_PUBCOMP, owner_of

if TYPE_CHECKING:
    from mqtt_twisted.core.broker import Broker
    from mqtt_twisted.core.session import Session

#: ``--session-owner`` values.
REFUSE, FRESH = "refuse", "fresh"
MODES = (REFUSE, FRESH)

#: Separates the client id from the user in a foreign session's key.  MQTT strings
#: cannot contain U+0000 [MQTT-1.5.4-2], so no client id can collide with such a key.
_SEPARATOR = "\x00"


def foreign_key(client_id: str, owner: str | None) -> str:
    """The key of the session a client id gets for ``owner`` when another user owns the
    session of that client id (``fresh`` mode); never persisted."""
    return f"{client_id}{_SEPARATOR}{owner or ''}"


def visible_id(key: str) -> str:
    """The client id a session key stands for (a foreign session's key without its user)."""
    return key.split(_SEPARATOR, 1)[0]


def connecting_owner(broker: Broker, identity: Any) -> str | None:
    """Who a client authenticated as ``identity`` is, for the ownership rule: nobody
    without an authenticator (an unchecked user name proves nothing)."""
    return owner_of(identity) if broker.authenticator is not None else None


def is_foreign(broker: Broker, session: Session, owner: str | None) -> bool:
    """Whether a client that is ``owner`` must not have ``session``.  The rule holds only
    with an authenticator; a session that belongs to nobody (made without one, or
    stored before sessions had owners) goes to the first client that resumes it."""
    return (broker.authenticator is not None and session.owner is not None
            and session.owner != owner)


def recheck_subscriptions(broker: Broker, session: Session, identity: Any,
                          done: Callable[[list[str]], None],
                          failed: Callable[[Failure], None], adopting: bool = False) -> None:
    """Ask the authorizer again about every subscription of ``session`` for ``identity``;
    remove the refused ones (and the queued messages that only they matched), then
    ``done(removed filters)``, synchronously when every answer is.  ``adopting``: an
    ownerless session goes to a user who may be someone else than who it served, so
    its unacknowledged in-flight messages that only refused filters matched go too."""
    authorizer = broker.authorizer
    filters = list(session.subscriptions)
    if authorizer is None or not filters:
        done([])
        return
    try:
        answers = [authorizer.maySubscribe(identity, session.clientId, f) for f in filters]
    except Exception:
        failed(Failure())
        return

    def apply(values: list[Any]) -> None:
        refused = [f for f, ok in zip(filters, values, strict=True) if not ok]
        for topic_filter in refused:
            broker.unsubscribe(session, topic_filter)
        if refused:
            _drop_queued(broker, session, refused, adopting)
        done(refused)

    if any(hasattr(a, "addCallbacks") for a in answers):
        when(gather(answers), apply, failed)
    else:
        apply(answers)


def _drop_queued(broker: Broker, session: Session, refused: list[str],
                 in_flight: bool = False) -> None:
    """Forget the queued (not yet sent) messages that only refused filters matched.
    Messages in flight were sent once already, to this same user: they complete,
    unless ``in_flight`` (an adopted session: the user may be another one); a QoS 2
    message already received (waiting for PUBCOMP) completes anyway: only its packet
    id is left to send."""
    if in_flight:
        _drop_in_flight(broker, session, refused)
    if not session.queue:
        return
    kept = [f for f in session.subscriptions if not f.startswith("$share/")]
    gone = set(refused)
    plain = [f for f in refused if not f.startswith("$share/")]

    def unauthorized(out: Any) -> bool:
        if out.group is not None:
            return out.group in gone
        topic = out.message.topic
        return (any(topic_matches(f, topic) for f in plain)
                and not any(topic_matches(f, topic) for f in kept))

    dropped = [out for out in session.queue if unauthorized(out)]
    if not dropped:
        return
    for out in dropped:
        session.queue.remove(out)  # type: ignore[union-attr]
        if out.qos and broker.delivery.durable and session.persistent:
            broker.journal.persist(broker.store.removeOutbound(session.clientId, out.seq))
    broker.log.info("Dropped {n} queued messages of {client} no longer authorized",
                    n=len(dropped), client=session.clientId)


def _drop_in_flight(broker: Broker, session: Session, refused: list[str]) -> None:
    kept = [f for f in session.subscriptions if not f.startswith("$share/")]
    gone = set(refused)
    plain = [f for f in refused if not f.startswith("$share/")]
    for pid, out in list(session.inflight.items()):
        if out.state == AWAITING_PUBCOMP:
            continue
        topic = out.message.topic
        if out.group in gone or (out.group is None and any(
                topic_matches(f, topic) for f in plain) and not any(
                topic_matches(f, topic) for f in kept)):
            del session.inflight[pid]
            if out.qos and broker.delivery.durable and session.persistent:
                broker.journal.persist(broker.store.removeOutbound(session.clientId, out.seq))
