"""Plain QoS 0 PUBLISHes crossing nodes as the bytes their publisher sent.

Why: a plain QoS 0 message (no properties, not retained, an ordinary topic) costs a
node ~0.3 µs in the compiled batch (``core/qos0.py``), but one that crossed to a peer
cost ~11 µs on its publisher's node and ~8 on the subscriber's (``python
bench/cluster.py --qos 0 --scenario cross``, session 12): a ``Message`` each, the
general dispatch, a msgpack record each, and the same again on the other side.  Now
a peer node with a match is one more target of the batch's runs, a :class:`RawLane`
that looks like a connection to it: the run's bytes are written to it as to a local
subscriber, and the lanes of a reactor turn leave in the turn's QoS 0 pub/sub message
for that node (``batch.Outbox``).  The receiving node writes them in runs to its own
subscribers (``inbox0.py``, ``qos0.deliver_raw``), and hands any PUBLISH whose receivers need more
(a paused or v3/v5-mismatched one, a share group, ...) to the general path as a
``Message``, as before.

A raw pub/sub message is ``b"R"`` then ``msgpack [origin, [sender, v5, bytes, ...]]``:
per lane the publisher's client id (for no-local), whether the bytes are MQTT 5's
(a zero properties length in each PUBLISH) and the PUBLISHes themselves.  A msgpack
push starts with an array's byte (``0x9N``), so the two kinds never meet.

Order: a lane is queued for its node when the batch first looks it up, and closed
(a new one queued after) when the general path queues a message for that node, so a
publisher's messages leave in the order it sent them (``Outbox.publish``).
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from mqtt_twisted.cluster.batch import Outbox

#: A raw pub/sub message's first byte.
RAW = b"R"
#: A lane's bytes at most (then the node's pushes leave at once, and a new lane starts):
#: a pub/sub message stays small, as a batch does (``batch.MAX_BATCH_BYTES``).
RAW_MAX = 1 << 16

_pack = msgpack.Packer(use_bin_type=True).pack


class RawLane:
    """A peer node among a run's targets (``core/qos0.py``): ``transport.write``
    gathers the run's bytes for node ``to``; never paused, no size limit of its own
    (a node takes what a client may send it)."""

    __slots__ = ("to", "sender", "v5", "transport")
    #: Counted as forwarded, not as sent (``qos0.read_share``).
    remote = 1
    paused = False
    max_send_size = 0

    def __init__(self, to: str, sender: str, v5: bool) -> None:
        self.to = to
        self.sender = sender
        self.v5 = v5
        self.transport = BytesIO()


class RawLanes:
    """The lanes open this turn, per node and publisher (``ClusterRouter.raw_lanes``)."""

    __slots__ = ("outbox", "open")

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        #: node -> publisher's connection -> its open lane.
        self.open: dict[str, dict[Any, RawLane]] = {}

    def lane(self, to: str, conn: Any) -> RawLane:
        """``conn``'s open lane to node ``to``; a new one, queued in the outbox after
        what it has for ``to``, if there is none or it is full."""
        lanes = self.open.get(to)
        if lanes is None:
            lanes = self.open[to] = {}
        lane = lanes.get(conn)
        if lane is not None:
            if lane.transport.tell() < RAW_MAX:
                return lane
            self.outbox.send_pushes(to)  # (closes the node's lanes)
            lanes = self.open[to] = {}
        lane = lanes[conn] = RawLane(to, conn.client_id, conn.version == 5)
        self.outbox.queue(to, lane)
        return lane

    def close(self, to: str | None = None) -> None:
        """No more bytes in node ``to``'s open lanes (every node's with None)."""
        if to is None:
            self.open.clear()
        else:
            self.open.pop(to, None)


def encode(origin: str, lanes: list[RawLane]) -> bytes | None:
    """A raw pub/sub message of ``lanes`` (None if they are all empty)."""
    runs: list[Any] = []
    for lane in lanes:
        data = lane.transport.getvalue()
        if data:
            runs += (lane.sender, lane.v5, data)
    return RAW + _pack([origin, runs]) if runs else None


def decode(data: bytes) -> tuple[str, list[Any]]:
    """A raw pub/sub message's origin and flat ``[sender, v5, bytes, ...]``."""
    origin, runs = msgpack.unpackb(memoryview(data)[1:], raw=False)
    if type(origin) is not str or type(runs) is not list or len(runs) % 3:
        raise ValueError("a raw QoS 0 message is [origin, [sender, v5, bytes, ...]]")
    return origin, runs
