"""A new subscription's retained messages: a slice per reactor turn, one write per slice.

Paced (issue 14): a ``#`` subscriber over 100,000 retained messages must neither block
the other clients nor fill its own queue, so the matches are taken lazily from the
store (``iterRetained``, which yields None now and then while it looks at topics that
do not match: store/retained_index.py) a slice at a time; a slice ends at
:data:`SLICE_BYTES` of PUBLISHes or :data:`SLICE_SECONDS` of work, and the next one waits while the client's
transport is full (``paused``: ``Delivery.pump`` resumes it) or its queue is long.

Batched (issue 19): the usual retained delivery, QoS 0 to an MQTT connection that has
room, needs no record, no queue and no per-message encoding cache, so a slice's
PUBLISHes are encoded into one buffer (``codec.encode_publishes``, compiled where
built) and written at once.  Everything else (QoS 1/2, a v5 message with properties
or a subscription identifier, a queue to keep behind, a virtual link, a message that
may exceed the client's maximum packet size) goes through ``Delivery.deliver`` one by
one, in order, at most :data:`RETAINED_SLICE` of them a slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mqtt_twisted.codec import encode_publishes
from mqtt_twisted.core._async import when
from mqtt_twisted.core.states import CONNECTED
from mqtt_twisted.message import Message, expired
from mqtt_twisted.records import SubscriptionOptions

if TYPE_CHECKING:
    from mqtt_twisted.core.delivery import Delivery
    from mqtt_twisted.core.session import Session

#: Retained messages delivered one by one (``Delivery.deliver``) per slice at most.
RETAINED_SLICE = 100
#: PUBLISH bytes per slice: twice what Twisted writes to a socket per call (SEND_LIMIT);
#: more only lengthens the turn, the next slice waits for the transport to drain anyway.
SLICE_BYTES = 256 * 1024
#: CPU time a slice may take, read on the broker's clock every CLOCK_EVERY messages
#: (expired messages deleted, or an ACL refusing most topics, cost without writing).
SLICE_SECONDS = 0.002
CLOCK_EVERY = 64
#: What a PUBLISH adds to its topic and payload, counted against SLICE_BYTES.
_OVERHEAD = 5


def send_retained(delivery: Delivery, session: Session, topic_filter: str,
                  options: SubscriptionOptions) -> None:
    """Deliver the retained messages matching a new subscription, retain=1, in slices."""
    sessions = delivery.broker.sessions

    def got(messages: list[Message | None]) -> None:
        if sessions.get(session.clientId) is session:
            send_slice(delivery, session, iter(messages), options)

    iterate = getattr(delivery.store, "iterRetained", None)
    matches = iterate(topic_filter) if iterate is not None else None
    if matches is not None:  # lazily: not even the list is built in one go
        send_slice(delivery, session, matches, options)
        return
    when(delivery.store.matchRetained(topic_filter), got, delivery.journal.store_failed)


def send_slice(delivery: Delivery, session: Session, messages: Iterator[Message | None],
               options: SubscriptionOptions) -> None:
    """One slice; the rest is scheduled, or parked until ``pump`` empties the queue."""
    broker = delivery.broker
    if broker.sessions.get(session.clientId) is not session:
        return  # discarded or replaced meanwhile
    clock = delivery.clock
    now = clock.seconds()
    deadline = now + SLICE_SECONDS
    sub_ids = (options.subscription_id,) if options.subscription_id else None
    max_qos = options.qos
    read_check = session.read_check
    conn: Any = session.connection
    batch = _batch_link(session, conn, sub_ids)
    v5 = batch is not None and conn.version == 5
    limit = conn.max_send_size if batch is not None else 0
    topics: list[str] = []
    payloads: list[bytes] = []
    size = one_by_one = seen = 0
    for message in messages:
        seen += 1
        if message is None:  # the store looked at topics without a match: time's up?
            if clock.seconds() >= deadline:
                break
            continue
        props = message.properties
        if props and expired(message, now):
            broker.retained_quota.forget(message.topic)
            delivery.journal.persist(delivery.store.deleteRetained(message.topic))
            continue
        topic = message.topic
        payload = message.payload
        size += len(topic) + len(payload) + _OVERHEAD
        if (batch is not None and not (max_qos and message.qos) and not (v5 and props)
                and not (limit and len(payload) + 4 * len(topic) + 10 > limit)):
            if read_check is None or read_check(topic):
                topics.append(topic)
                payloads.append(payload)
        else:
            if topics:
                _write(delivery, batch, topics, payloads)
                topics, payloads = [], []
            delivery.deliver(session, message, min(message.qos, max_qos), True, sub_ids)
            one_by_one += 1
            if batch is not None and (batch.paused or session.queue):
                batch = None  # what follows keeps its place behind the queue
            if one_by_one >= RETAINED_SLICE or len(session.queue) >= delivery.high_water:
                break
        if size >= SLICE_BYTES or (not seen % CLOCK_EVERY and clock.seconds() >= deadline):
            break
    else:
        if topics:
            _write(delivery, batch, topics, payloads)
        return
    if topics:
        _write(delivery, batch, topics, payloads)
    conn = session.connection
    if conn is not None and (conn.paused or len(session.queue) >= delivery.high_water):
        if not session.retained_backlog:
            session.retained_backlog = []
        session.retained_backlog.append((messages, options))  # pump resumes
    else:
        clock.callLater(0, send_slice, delivery, session, messages, options)


def _batch_link(session: Session, conn: Any, sub_ids: tuple[int, ...] | None) -> Any:
    """The connection when this slice's QoS 0 messages can be written as one buffer."""
    if (conn is None or conn.paused or session.queue or conn.state != CONNECTED
            or not hasattr(conn, "send_publishes") or (sub_ids and conn.version == 5)):
        return None
    return conn


def _write(delivery: Delivery, conn: Any, topics: list[str], payloads: list[bytes]) -> None:
    delivery.stats.deliveries += len(topics)  # the work a slice made (fairness per turn)
    conn.send_publishes(encode_publishes(topics, payloads, conn.version, True), len(topics))
