"""A long read handled a share a turn, and a lost connection's last input handled first.

``MQTTConnection.dataReceived`` handles at most a share of what it read (READ_BUDGET
packets, fewer when they fan out) and keeps the rest in its decoder or backlog for the
next turn: a flood delays the other clients by one share, not by its whole read.  These
are the calls that go on with it, outside the connection's class (which is at its size
limit), and the one rule that ties them to the end of a connection: what a client sent
before it went (a publisher that resets its connection right after a burst: the
transport's drain reads what the kernel kept) is handled before its connection ends,
a share a turn like any other read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqtt_twisted.core.states import CLOSED, CONNECTED

if TYPE_CHECKING:
    from mqtt_twisted.core.connection import MQTTConnection


def pace_backlog(conn: MQTTConnection) -> None:
    """The rest of a held backlog goes on at the next turn, reads paused meanwhile; a
    pending :func:`next_share` is folded into it (it goes on after the backlog)."""
    conn.throttle()
    call = conn._resume_call
    if call is not None and call.active():
        call.cancel()
        conn.unthrottle()  # the share's own pause: the backlog's covers it
    conn._resume_call = conn.broker.clock.callLater(0, resume_backlog, conn)


def resume_backlog(conn: MQTTConnection) -> None:
    conn._resume_call = None
    if conn.state == CLOSED:
        return
    conn.unblock()  # may pace again
    if (conn._resume_call is None and not conn._blocked and conn.decoder.more
            and conn.state != CLOSED):
        conn.dataReceived(b"")  # the read's next share, as next_share would
    conn.unthrottle()
    end_when_read(conn)


def next_share(conn: MQTTConnection) -> None:
    """The next share of what ``conn`` read; reading resumes after the last (unless flow
    control still holds it back: one counter for both)."""
    conn._resume_call = None
    if conn.state == CLOSED:
        return
    conn.dataReceived(b"")  # throttles again if there is still more
    conn.unthrottle()
    end_when_read(conn)


def input_left(conn: MQTTConnection) -> bool:
    """Whether a connected client's packets still wait in its decoder or backlog."""
    return conn.state == CONNECTED and bool(conn.decoder.more or conn._backlog)


def put_off_end(conn: MQTTConnection, reason: Any) -> None:
    """The transport is gone with input left: end the connection once it is handled
    (:func:`end_when_read`).  ``conn.lost`` is set at once: nothing waits for a close."""
    conn.lost = True
    conn._lost_reason = reason
    if conn._resume_call is None and not conn._blocked:
        conn._resume_call = conn.broker.clock.callLater(0, next_share, conn)


def end_when_read(conn: MQTTConnection) -> None:
    """End a lost connection whose last input is handled (what ``connectionLost`` put
    off); a close meanwhile (a protocol error in that input, its keep alive) ended it."""
    if (conn.lost and conn.state == CONNECTED and conn._resume_call is None
            and not conn._blocked and not conn.decoder.more):
        reason, conn._lost_reason = conn._lost_reason, None
        conn.lost = False  # (so that connectionLost ends it now)
        conn.connectionLost(reason)
