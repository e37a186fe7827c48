"""A session leaving this node for another one (a CONNECT of its client id there).

Sans-IO, on the broker's own parts: the connection (if any) is taken over as for a
takeover on one node (v5 DISCONNECT 0x8E, its will [MQTT-3.1.4-3]); a persistent
session is then saved as it is at that moment (subscriptions, queue, in-flight and
QoS 2 state, one atomic store call) and forgotten here without being deleted, so
that the other node loads it from the store and resumes it.  A delayed will is not
sent: the session is being resumed [MQTT-3.1.3-9].
"""

from __future__ import annotations

from typing import Any


def release_session(broker: Any, client_id: str) -> Any:
    """Let ``client_id``'s session go; the store write to wait for, or None."""
    session = broker.sessions.get(client_id)
    if session is None:
        return None
    conn = session.connection
    if conn is not None:
        broker.stats.takeovers += 1
        conn.taken_over()  # detaches it; a clean session is discarded with it
    session = broker.sessions.get(client_id)
    if session is None:
        return None
    for call in (session.expiry_call, session.will_call):
        if call is not None and call.active():
            call.cancel()
    session.expiry_call = session.will_call = None
    saved = broker.store.saveSession(session)  # encoded now, before anything is forgotten
    del broker.sessions[client_id]
    broker.offline.back(session)
    for topic_filter in session.subscriptions:
        broker.router.remove(client_id, topic_filter)
    return saved
