"""Share groups cluster-wide: each message to one member of a group, in the whole cluster.

Sans-IO.  Every node registers, for each ``$share/{name}/{filter}`` group it has
members of, a **weight**: how many of those members have their client online
(``P:cluster:shared:{node}``, a hash key -> weight, with a change on the routes
channel).  The node a message is published on (the ingress) picks **one node per
matching group** — itself or a peer — and sends the message there naming the group;
that node gives it to one of its members (the local strategy, online members first).

Why weighted by online members, picked by smooth weighted round robin (nginx's):

- by *member* rather than by node, so that a node with one member and a node with
  ten do not get half each (the one member would get ten times the others' load);
- *online* members, as the local strategy prefers them: a node whose members are all
  offline (persistent sessions whose clients are away) gets nothing while another
  node has an online member, and when nobody is online anywhere every node with
  members is picked in turn (the message queues, as it would on one node);
- round robin, not hashing: the split is even over any number of topics (a hash of
  the topic sends one busy topic to one node), and it is what a single node does.
  Each ingress node keeps its own turn, so the split is exact per ingress node and
  even overall.

Weights follow connections within a tick (``ClusterStats``, 1 s) and membership at
once; a node picked for a group it no longer has members of sends the message on
to another node that has (once: a message sent on is not sent on again).
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from mqtt_twisted.codec.topics import parse_shared_filter
from mqtt_twisted.core.journal import SharedWrite
from mqtt_twisted.core.shared import SharedGroup
from mqtt_twisted.core.topic_tree import TopicTree
from mqtt_twisted.errors import InvalidTopicFilter

#: A copy's kind, the first byte of its groups field: an ordinary copy (for the plain
#: subscriptions too), one sent on (``SENT_ON``: for the groups it names only, never sent
#: on again), or one a node wrote into its *own* stream for its own clean members
#: (``OWN``: for the groups only, the plain subscribers here had theirs; sent on once
#: if the member is gone), so that its adopter finds it there if it dies
#: (``has_clean_member``).
SENT_ON = 1
OWN = 2


def encode_groups(groups: list[str], resent: int) -> bytes:
    """A stream entry's ``g`` field: the copy's kind (``0``, ``1``: sent on, ``2``: this
    node's own, see :data:`OWN`), then the group keys NUL-separated (no topic filter
    has a NUL [MQTT-1.5.4-2]); cheaper to make and read than msgpack, and one field
    instead of two."""
    return (b"2" if resent == OWN else b"1" if resent else b"0") + \
        "\0".join(groups).encode("utf-8")


def decode_groups(value: bytes) -> tuple[list[str], int]:
    """``(group keys, kind)`` from :func:`encode_groups`' bytes (kind 0, 1 or 2)."""
    return value[1:].decode("utf-8").split("\0"), value[0] - 48


def online_members(group: SharedGroup, sessions: Any) -> int:
    """A group's members on this node whose client is connected: its weight."""
    count = 0
    for client_id in group.members:
        session = sessions.get(client_id)
        if session is not None and session.connection is not None:
            count += 1
    return count


def has_clean_member(group: SharedGroup, sessions: Any) -> bool:
    """Whether ``group`` has a clean member here at QoS 1/2: a copy given to it would be
    in this node's memory only.  A QoS 1/2 message published here that this node serves
    such a group with goes through its own stream (an entry naming the group, kind
    :data:`OWN`), as a peer's copy does: the publisher is acknowledged once Redis has
    the entry, the entry once the member's copy is done with
    (``ClusterRouter.hold_copy``), and if this node dies its adopter finds the entry
    and gives it to a live member.  A group of persistent members only is served at
    once: their copies are stored."""
    for client_id, options in group.members.items():
        session = sessions.get(client_id)
        if session is not None and not session.persistent and options.qos:
            return True
    return False


class HeldCopies:
    """The share copies that one delivery from a node's stream (one ``writes_of``, an
    entry) gave to clean members, which are in this node's memory only: one write the
    entry's XACK waits for, fired once the last of them is done with (``fire`` once
    per copy, ``Outbound.held``), failed if one fails (sent on to another node and
    refused there).  One write per entry rather than one per copy: a SharedWrite per
    copy, and the XACK's ``gatherResults`` over each, cost the receiving node 45.2
    Python calls per crossing share message against 33.6 before holding; this, 38.9
    (``MQTT_TWISTED_PURE=1 bench/calls_per_message.py --cluster --share``, 100 a
    turn)."""

    __slots__ = ("left", "write", "owner")

    def __init__(self, owner: Any) -> None:
        self.left = 0
        self.write = SharedWrite()
        #: The journal's collection this write went into (``Journal.collecting``).
        self.owner = owner

    def fire(self, result: Any) -> None:
        """One copy is done with (``result``: None, or a failure to send it on)."""
        if isinstance(result, Failure):
            self.write.fire(result)
            return
        self.left -= 1
        if not self.left:
            self.write.fire(None)


class SharedRoutes:
    """The peers' share groups: group key -> {node: weight}, indexed by inner filter."""

    __slots__ = ("me", "tree", "groups", "_turns")

    def __init__(self, me: str) -> None:
        self.me = me
        #: inner filter -> (group key, the dict of its nodes' weights in ``groups``).
        self.tree: TopicTree[dict[str, int]] = TopicTree()
        self.groups: dict[str, dict[str, int]] = {}
        #: group key -> node -> its current value in the weighted round robin.
        self._turns: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def set(self, node: str, key: str, weight: int) -> None:
        """``node`` has members of ``key``, ``weight`` of them online."""
        if node == self.me:
            return
        nodes = self.groups.get(key)
        if nodes is None:
            try:
                parsed = parse_shared_filter(key)
            except InvalidTopicFilter:
                return
            if parsed is None:
                return
            nodes = self.groups[key] = {}
            self.tree.add(parsed[1], key, nodes)
        nodes[node] = max(0, weight)

    def remove(self, node: str, key: str) -> None:
        nodes = self.groups.get(key)
        if nodes is None or node not in nodes:
            return
        del nodes[node]
        if not nodes:
            del self.groups[key]
            self._turns.pop(key, None)
            parsed = parse_shared_filter(key)
            if parsed is not None:
                self.tree.remove(parsed[1], key)

    def reset(self, node: str) -> None:
        """``node`` is gone, or has forgotten everything: none of its groups are left."""
        for key in [k for k, nodes in self.groups.items() if node in nodes]:
            self.remove(node, key)

    def of(self, node: str) -> dict[str, int]:
        """The groups ``node`` has and their weights (tests, snapshots)."""
        return {k: nodes[node] for k, nodes in self.groups.items() if node in nodes}

    def match(self, topic: str) -> list[tuple[Any, dict[str, int]]]:
        """(group key, {node: weight}) of every peer group whose filter matches."""
        return self.tree.match(topic)

    def choose(self, key: str, candidates: dict[str, int],
               exclude: str | None = None) -> str | None:
        """The node that gets ``key``'s next message among ``candidates`` (node ->
        weight): smooth weighted round robin over the nodes with a weight, or over
        all of them when none has (nobody is online: it queues, as on one node)."""
        if exclude is not None and exclude in candidates:
            candidates = {n: w for n, w in candidates.items() if n != exclude}
        if not candidates:
            return None
        if len(candidates) == 1:
            return next(iter(candidates))
        weighted = {n: w for n, w in candidates.items() if w > 0}
        if not weighted:
            weighted = dict.fromkeys(candidates, 1)
        turns = self._turns.setdefault(key, {})
        total = 0
        best: str | None = None
        best_value = 0
        for node in sorted(weighted):
            weight = weighted[node]
            total += weight
            value = turns.get(node, 0) + weight
            turns[node] = value
            if best is None or value > best_value:
                best, best_value = node, value
        turns[best] -= total  # type: ignore[index]
        for node in [n for n in turns if n not in weighted]:
            del turns[node]
        return best
