"""Handover requests this node answers: sessions let go for other nodes, a slice per turn.

A CONNECT on node N for a client whose session lives here makes N ask this node, on
its control channel, to let the session go (``node.py``); this node takes the
connection over, saves the session and answers "released" once the save is stored
(``handover.release_session``), with how far the session had each origin's messages
(``barrier.py``, "Message identity").  A request waits while the session is still to be
restored by an adoption under way here (``adoption.py``): released before, it would
be restored here again afterwards.

In a reconnect storm half of a dead node's clients reconnect to the other survivor,
and their requests come by the thousand.  Each release costs a save, a route change
and its forwarding set-up: :class:`Releases` does them a slice per reactor turn
(``pace.py``), so that the lease is renewed and the sockets read between slices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgpack
from twisted.internet.defer import maybeDeferred

from mqtt_twisted.cluster.handover import release_session
from mqtt_twisted.cluster.pace import in_slices

if TYPE_CHECKING:
    from mqtt_twisted.cluster.node import ClusterNode

_Request = tuple[str, str, Any]


class Releases:
    """The queue of sessions to let go, and who asked for each."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.queue: deque[_Request] = deque()
        self.running = False
        #: Sessions let go so far (for tests and the log).
        self.released = 0

    def request(self, client_id: str, to: str, request: Any) -> None:
        """Node ``to`` asks for ``client_id``'s session (its request number): let it go
        once no adoption here is still to restore it, in turn."""
        d = self.node.failover.wait_for(client_id)
        d.addCallback(lambda _: self._queue((client_id, to, request)))
        d.addErrback(self.node._failed, f"letting {client_id}'s session go")

    def _queue(self, item: _Request) -> None:
        self.queue.append(item)
        if self.running:
            return
        self.running = True
        d = in_slices(self.node.reactor, self._pending(), self._release)
        d.addErrback(self.node._failed, "answering handovers")
        d.addBoth(self._stopped)

    def _pending(self) -> Iterator[_Request]:
        queue = self.queue
        while queue:
            yield queue.popleft()

    def _stopped(self, _: Any) -> None:
        self.running = False

    def _release(self, item: _Request) -> None:
        client_id, to, request = item
        node = self.node
        self.released += 1
        delivered: dict[str, int] = {}
        d = maybeDeferred(self._let_go, client_id, to, delivered)
        d.addErrback(node._failed, f"saving {client_id}'s session for {to}")
        d.addBoth(lambda _: node.commands.command(
            b"PUBLISH", node.keys.ctl(to),
            msgpack.packb(["released", client_id, node.name, request, delivered])))
        d.addErrback(node._failed, "answering a handover")

    def _let_go(self, client_id: str, to: str, delivered: dict[str, int]) -> Any:
        """Let the session go; ``delivered`` gets how far it has had each origin's
        messages, for the answer (``barrier.py``, "Message identity")."""
        node = self.node
        node.barriers.flush(client_id)  # what it held goes into the session
        session = node.broker.sessions.get(client_id)
        if session is not None and session.subscriptions:
            # Until every node routes its messages to `to`, forward them there.
            node.moved.left(client_id, to, session.subscriptions)
        saved = release_session(node.broker, client_id)
        if node.failover.delivering():
            # A dead node's sessions or stream are still coming here: messages of any
            # origin, numbered below what was delivered from this node's stream, may
            # still come for the session from there (this node forwards them):
            # no positions, the new node takes what is forwarded as new.
            return saved
        # What of each origin the session has had as it was saved (barrier.py): taking
        # its connection over lets this node's stream reader go on (flow control), and
        # what it delivers meanwhile is in the saved session.
        delivered.update(node.delivered)
        delivered[node.name] = node.router.seq
        return saved
