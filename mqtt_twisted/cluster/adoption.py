"""The sessions of a dead node on their way to its adopter: who waits for which.

While a node adopts a dead one (``failover.py``), CONNECTs of the dead node's clients
arrive, here and at the other survivors, and the others ask this node to let the
sessions go (``node.py``, a handover).  Answered before its session is restored
here, a handover request let nothing go, and the adoption restored the session here
again afterwards (two copies); so they wait.  They used to wait for the whole
adoption, and were then all answered in one reactor turn: 5,000 sessions in a
reconnect storm made that turn 7 s long, past the node's lease.  An
:class:`Adoption` tells each of them when *its* session is here (restored, or found
to be none of the dead node's), so that they are answered as the adoption goes, a
slice at a time (``pace.py``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed


class Adoption:
    """One dead node's sessions, from the moment their homes are taken here until
    each is restored."""

    def __init__(self) -> None:
        #: The client ids taken from the dead node and not restored yet; None until
        #: their homes are taken (the list is not known).
        self.pending: set[str] | None = None
        self._listed: list[Deferred[None]] = []
        self._waiting: dict[str, list[Deferred[None]]] = {}
        self.over = False

    def listed(self, client_ids: list[str]) -> None:
        """The dead node's client ids are this node's now (their homes taken)."""
        self.pending = set(client_ids)
        waiting, self._listed = self._listed, []
        for d in waiting:
            d.callback(None)

    def when_listed(self) -> Deferred[None]:
        """Fires once the client ids are known (at once if they are)."""
        if self.pending is not None or self.over:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._listed.append(d)
        return d

    def restored(self, client_id: str) -> None:
        """``client_id``'s session is here (or it had none stored): what waits goes on."""
        if self.pending is not None:
            self.pending.discard(client_id)
        for d in self._waiting.pop(client_id, ()):
            d.callback(None)

    def wait_for(self, client_id: str) -> Deferred[None]:
        """Fires once ``client_id``'s session is no longer to come (at once if it is
        none of the dead node's, or is here already)."""
        if self.over:
            return succeed(None)
        if self.pending is None:
            d = self.when_listed()
            d.addCallback(lambda _: self.wait_for(client_id))
            return d
        if client_id not in self.pending:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.setdefault(client_id, []).append(waiter)
        return waiter

    def end(self, _: Any = None) -> Any:
        """The adoption is over (done or failed): nobody waits any longer."""
        self.over = True
        if self.pending is None:
            self.listed([])
        self.pending = set()
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for d in waiters:
                d.callback(None)
        return _
