"""The plain QoS 0 PUBLISH, forwarded as the bytes it came in, with no Message (sans-IO).

Most PUBLISHes of a busy broker are the plain kind: QoS 0, not retained, no
properties, an ordinary topic, to MQTT clients that can take them now.  For those the
general path (``inbound.on_publish``: a ``Message``, ``router.dispatch``, the tree's
match, ``delivery.deliver``, ``send_publish``, ``wire.publish_bytes``, the write) ends
in writing ``Publish.raw`` to every receiver, eight Python calls to get there.  This
handler goes straight there, and hands every other PUBLISH to ``inbound.on_publish``
unchanged, before it has done anything: the fast path is taken exactly when the
general path would have written the received bytes to every receiver at once.

What each message checks (all attribute reads, no call):

- the packet: ``raw`` set by the decoder (QoS 0, not retained, no DUP), no
  properties (v5: no alias, expiry or anything a receiver's copy would change), a
  topic no longer than the topic limits' short length and not a ``$`` topic, debug
  logging off, no authorizer or this client's cached grant for the topic;
- the router: this node's own (``LocalRouter``: a cluster router forwards, so it
  takes the general path), delivering with the broker's own ``deliver`` (a cluster
  swaps it at times), with no share group at all;
- every receiver (its sessions' merged subscriptions, cached by topic below): an MQTT
  connection of the publisher's own class and wire format (v5 or not), nothing queued,
  not paused (flow control then decides), no per-topic read check, no outbound topic
  aliases, no subscription identifier for a v5 receiver, the packet within its
  maximum packet size, and no no-local subscription of the publisher's own that would
  drop only some of its subscriptions.

The receivers of a topic are cached per router (``LocalRouter.qos0_routes``): the client
ids with the merged no-local and subscription-identifier state of their
subscriptions, keyed by topic and tied to the very list the topic tree's match cache
holds for it.  The tree makes a new list after any change to the subscriptions
(it clears its cache), so an entry is used only with the match it was made from.
Sessions and their connections are looked up per message, so a reconnect, a
takeover or a session's end is seen at once.

``core/_qos0.pyx`` compiles this very file (``include``) where a C compiler works;
``core/fastpath.py`` chooses.  Compiled, the helpers a lone message goes through
(``receivers``, ``_count``, ``_write``) are C functions called directly (``@cython.ccall``)
and the batch's positions and counts C integers (``@cython.locals``): the generic Python
arithmetic, the ``range`` of the top-topics sample and a call protocol each less
(``docs/benchmarks.md``, session 12); run as Python the decorators change nothing.  The counters are those of the general path:
``messages_received`` (and the top-topics sample), ``deliveries``, ``messages_sent``
and ``bytes_sent``.
"""

# (No ``from __future__ import annotations``: Cython's ``include`` wants none, so the two
# names only a type checker sees are quoted.)
from typing import TYPE_CHECKING, Any

from mqtt_twisted.core import inbound

try:  # compiled (core/_qos0.pyx): Cython's own, whose decorators make C functions
    import cython
except ImportError:  # run as Python without Cython installed: they change nothing
    from mqtt_twisted.core import _nocython as cython  # type: ignore[no-redef]
from mqtt_twisted.core.router import LocalRouter
from mqtt_twisted.core.states import CLOSED
from mqtt_twisted.core.stats import TOPIC_SAMPLE
from mqtt_twisted.errors import MQTTError
from mqtt_twisted.logs import DEBUG
from mqtt_twisted.message import Message

if TYPE_CHECKING:
    from mqtt_twisted.codec.packets import Publish
    from mqtt_twisted.core.connection import MQTTConnection

#: A receiver's subscriptions that match a topic: none, all or some of them no-local
#: (the publisher's own copy is dropped, or, for some, made from the others).
NL_NONE, NL_ALL, NL_SOME = 0, 1, 2
#: Topics whose receivers a router keeps (emptied when full, as the tree's cache).
ROUTES_CACHED = 4096

_general = inbound.on_publish
#: The holder of a peer node's PUBLISHes (``deliver_raw``): nobody here.
REMOTE = object()


def on_publish(conn: "MQTTConnection", packet: "Publish") -> None:
    """A client's PUBLISH: the plain QoS 0 kind written to its receivers here, any other
    handed to ``inbound.on_publish``."""
    raw = packet.raw
    if raw is None or packet.properties:
        _general(conn, packet)
        return
    size = len(raw)
    targets = receivers(conn, packet.topic, size)
    if targets is None:
        _general(conn, packet)
        return
    remote = 0
    for link in targets:
        link.transport.write(raw)
        remote += link.remote
    _count(conn.broker.stats, packet.topic, 1, len(targets) - remote, size)
    if remote:
        conn.broker.router.forwarded += remote


@cython.ccall
@cython.locals(topic=str, size=cython.Py_ssize_t)
def receivers(conn: "MQTTConnection", topic: str, size: int,
              held: bool = False) -> "list[Any] | None":
    """The connections to write a plain QoS 0 PUBLISH of ``size`` bytes (0: any size)
    on ``topic`` from ``conn`` to, or None if the general path must route it.  With
    ``held``, a paused receiver too while flow control holds ``conn`` back for it
    (:func:`_holding`: the general path would write through to it)."""
    broker = conn.broker
    router = broker.router
    cluster: Any = None
    lanes: Any = None
    if type(router) is not LocalRouter:
        # A cluster node's (cluster/rawlane.py): the peers with a match get the run's
        # bytes through a lane each, while no share group or departing session is about.
        cluster = router
        lanes = getattr(cluster, "raw_lanes", None)
        if (lanes is None or cluster.shared_weights or cluster.routes.shared.groups
                or cluster.leaving):
            return None
        router = cluster.local
    if broker.authorizer is not None:
        grants = conn.publish_grants
        if grants is None or grants.get(topic) is not True:
            return None
    targets = local_targets(broker, router, topic, size, conn.client_id, conn.version == 5,
                            type(conn), conn if held else None)
    if cluster is not None and targets is not None:
        routes = cluster.routes
        hit = routes.cache.get(topic) or routes.route(topic)
        for node in hit[0]:
            targets.append(lanes.lane(node, conn))
    return targets


@cython.ccall
@cython.locals(topic=str, size=cython.Py_ssize_t, v5=cython.bint)
def local_targets(broker: Any, router: Any, topic: str, size: int, sender: str, v5: bool,
                  cls: Any, holder: Any) -> "list[Any] | None":
    """The local connections (``router``: this node's ``LocalRouter``) to write a plain
    QoS 0 PUBLISH of ``size`` bytes on ``topic`` from client ``sender`` to, each of
    class ``cls`` and v5 or not as ``v5``; None if the general path must route it.  A
    paused receiver counts only while flow control holds ``holder`` back for it, or
    (``holder`` :data:`REMOTE`) always: the caller asks flow control per run."""
    if (router.shared_groups or router.deliver is not broker.deliver
            or len(topic) > broker.short_topic or topic.startswith("$") or DEBUG.on):
        return None
    entry = route_entry(router, topic)
    sessions = router.sessions
    targets: list[Any] = []
    for client_id, no_local, ids in entry[1]:
        if no_local and client_id == sender:
            if no_local == NL_ALL:
                continue  # [MQTT-3.8.3-3] not back to its publisher
            return None
        session = sessions[client_id]
        link = session.connection
        if (link is None or type(link) is not cls or session.queue
                or (link.paused and not (holder is not None and (
                    holder is REMOTE or _holding(broker, link, holder))))
                or session.read_check is not None or link._aliases_out is not None
                or (link.version == 5) != v5 or (ids and v5)
                or (size and link.max_send_size and size > link.max_send_size)):
            return None
        targets.append(link)
    return targets


@cython.ccall
@cython.locals(topic=str)
def route_entry(router: Any, topic: str) -> "tuple[list[Any], tuple[Any, ...]]":
    """``router.qos0_routes``' entry for ``topic`` (:func:`receivers_of`), made again
    when the topic tree's match for it is not the one it was made from."""
    tree = router.tree
    matches = tree._cache.get(topic)  # (TopicTree.match's own cache, without the call)
    if matches is None:
        matches = tree.match(topic)
    routes = router.qos0_routes
    entry = routes.get(topic)
    if entry is None or entry[0] is not matches:
        entry = receivers_of(routes, topic, matches)
    return entry


def _holding(broker: Any, link: Any, conn: Any) -> bool:
    """Whether flow control holds ``conn`` back for the full ``link`` and is within its
    grace: ``FlowControl.hold_back_publisher`` then only counts the bytes written through
    (up to the queued-bytes limit, checked per run by :func:`_written_through`)."""
    state = broker.flow.congested.get(link)
    return (state is not None and conn in state.waiters
            and broker.clock.seconds() - state.since <= broker.settings.slow_consumer_grace)


def _written_through(broker: Any, links: list[Any], size: int) -> bool:
    """Count ``size`` bytes (payloads and topics, as ``Delivery.deliver`` counts them)
    written through to each paused link of ``links``; False, nothing counted, if one
    would pass the queued-bytes limit (the general path then queues)."""
    congested = broker.flow.congested
    limit = broker.settings.max_queued_bytes or 1 << 62
    for link in links:
        if link.paused and congested[link].written + size > limit:
            return False
    for link in links:
        if link.paused:
            congested[link].written += size
    return True


def _taken_through(broker: Any, links: list[Any], size: int) -> bool:
    """A peer's run of ``size`` bytes (payloads and topics) to ``links``: each paused one
    takes them through (``FlowControl.take_through``), or False, nothing counted, and
    the run queues."""
    flow = broker.flow
    for link in links:
        if link.paused and not flow.take_through(link, size, False):
            return False
    for link in links:
        if link.paused:
            flow.take_through(link, size)
    return True


@cython.ccall
@cython.locals(messages=cython.Py_ssize_t, receivers=cython.Py_ssize_t,
               size=cython.Py_ssize_t, before=cython.Py_ssize_t, after=cython.Py_ssize_t,
               sample=cython.Py_ssize_t, notes=cython.Py_ssize_t, sent=cython.Py_ssize_t)
def _count(stats: Any, topic: str, messages: int, receivers: int, size: int) -> None:
    """The general path's counters for ``messages`` PUBLISHes of ``size`` bytes in all,
    each written to ``receivers`` connections (the top-topics sample: 1 in 16)."""
    before = stats.messages_received
    after = before + messages
    stats.messages_received = after
    sample = TOPIC_SAMPLE
    notes = after // sample - before // sample
    while notes > 0:  # (compiled: a C loop, no range object)
        stats.topics.note(topic)
        notes -= 1
    if receivers:
        sent = messages * receivers
        stats.deliveries += sent
        stats.messages_sent += sent
        stats.bytes_sent += receivers * size


def receivers_of(routes: dict[str, Any], topic: str,
                 matches: list[Any]) -> tuple[list[Any], tuple[tuple[str, int, bool], ...]]:
    """Cache and return ``(matches, receivers)``: one ``(client id, no-local state,
    any subscription id)`` per client in ``matches`` (``TopicTree.match``'s), in its
    order, as ``LocalRouter.match`` merges them."""
    merged: dict[str, list[Any]] = {}
    for client_id, options in matches:
        nl = NL_ALL if options.no_local else NL_NONE
        has_id = bool(options.subscription_id)
        seen = merged.get(client_id)
        if seen is None:
            merged[client_id] = [nl, has_id]
        else:
            if seen[0] != nl:
                seen[0] = NL_SOME
            seen[1] = seen[1] or has_id
    entry = (matches, tuple((c, nl, has_id) for c, (nl, has_id) in merged.items()))
    if len(routes) >= ROUTES_CACHED:
        routes.clear()
    routes[topic] = entry
    return entry


# --- a whole read at once -------------------------------------------------------------

#: The work of one share of a batched read (:func:`read_share`), in units where a plain
#: PUBLISH of a run is one and a write to a run's receiver, or any other packet and each
#: of its deliveries, is ``PACKET_COST``: a share of other packets only is the general
#: path's (``connection.WORK_BUDGET``, 256), one of plain PUBLISHes four times as many.
SHARE_WORK = 1024
PACKET_COST = 4
#: A run's bytes written at once, at most: a receiver whose transport fills up pauses
#: (``pauseWriting``) after at most this much more than one PUBLISH would have added,
#: and the next run sees it and leaves the rest to flow control (core/flow.py).
RUN_BYTES = 16384
#: Topic bytes -> the topic, checked as the decoder checks it (as many as ROUTES_CACHED).
_NAMES: dict[bytes, str] = {}


@cython.locals(n=cython.Py_ssize_t, v5=cython.Py_ssize_t, pos=cython.Py_ssize_t,
               count=cython.Py_ssize_t, work=cython.Py_ssize_t, run_start=cython.Py_ssize_t,
               cost=cython.Py_ssize_t, end=cython.Py_ssize_t, packets=cython.Py_ssize_t,
               longer=cython.Py_ssize_t, fresh=cython.bint, remote=cython.Py_ssize_t)
def read_share(conn: "MQTTConnection", data: bytes, handlers: Any) -> int:
    """One share of a connected client's read (with the bytes its decoder kept): plain
    QoS 0 PUBLISHes gathered into runs, each run's bytes written as one slice to each of
    its receivers (a run: consecutive PUBLISHes whose topics have the same receivers),
    every other packet decoded alone and handed to its handler after the run before it
    is written: the order of the read holds for every receiver.  Returns the packets
    handled.

    A share ends at ``SHARE_WORK``, when the connection blocks or closes, or at a packet
    not yet whole; what is left stays in the decoder (``decoder.more``: whole packets).
    Errors are the decoder's and the handlers', handled as ``dataReceived`` does."""
    decoder = conn.decoder
    whole = decoder.take(data)
    if whole is None:
        return 0
    data = bytes(whole) if type(whole) is not bytes else whole
    n = len(data)
    broker = conn.broker
    stats = broker.stats
    limit = decoder.limits.max_packet_size  # (the property, without its call)
    v5 = 1 if conn.version == 5 else 0
    pos = count = work = 0
    held = False  # a receiver of the run is paused: flow control's bytes counted
    run: Any = None  # the receivers of the run gathered from run_start to pos
    run_start = run_limit = remote = 0
    known: dict[bytes, Any] = {}  # topic bytes -> (topic, receivers) until a run is written
    while n - pos >= 2:
        if work >= SHARE_WORK:
            break
        if data[pos] == 0x30:
            name = _plain_topic(data, pos, n, v5)
            found = known.get(name) if name is not None else None
            if found is None and name is not None:
                topic = _NAMES.get(name) or _topic_of(name)
                found = known[name] = (
                    topic, None if topic is None else receivers(conn, topic, 0, True))
            if found is not None and found[1] is not None:
                topic, targets = found
                if run is not None and (targets != run or pos - run_start >= RUN_BYTES):
                    _write(run, data, run_start, pos)
                    run = None
                    known.clear()
                    continue  # (the write may have paused a receiver: looked up again)
                fresh = run is None
                cost = PACKET_COST * len(targets) if fresh else 0
                if fresh:
                    run_limit, held, remote = _run_limits(targets, limit)
                end, packets, longer = _scan_run(
                    data, pos, n, name, v5, run_limit, max(1, SHARE_WORK - work - cost),
                    (pos if fresh else run_start) + RUN_BYTES)  # type: ignore[arg-type]
                if packets and (not held or _written_through(
                        broker, targets, _counted(end - pos, longer, packets, name,
                                                  topic, v5))):  # type: ignore[arg-type]
                    if fresh:
                        run, run_start = targets, pos
                    _count(stats, topic, packets, len(targets) - remote, end - pos)
                    if remote:
                        broker.router.forwarded += packets * remote
                    count += packets
                    work += packets + cost
                    pos = end
                    continue
        if run is not None:  # (a packet for the general path: the run goes first)
            _write(run, data, run_start, pos)
            run = None
        known.clear()  # (what it does may change any receiver)
        end = _packet_end(data, pos, n)
        try:
            packets_ = decoder.feed(data[pos:end] if end > 0 else data[pos:], 1)
        except MQTTError as e:
            conn.violation(e)
            return count
        if not packets_:
            return count  # (a packet not yet whole: the decoder keeps it)
        if end > 0:
            pos = end
        else:  # (the decoder framed it: the rest is in it)
            rest = decoder.take(b"")
            data = rest if rest is not None else b""
            pos, n = 0, len(data)
        packet = packets_[0]
        before = stats.deliveries
        try:
            handlers[packet.type](conn, packet)
        except MQTTError as e:
            conn.violation(e)
            return count
        count += 1
        work += PACKET_COST * (1 + stats.deliveries - before)
        if conn.state == CLOSED:
            return count
        if conn._blocked:
            if pos < n:
                decoder.keep(data[pos:] if pos else data)
            return count
    if run is not None:
        _write(run, data, run_start, pos)
    if pos < n:
        decoder.keep(data[pos:] if pos else data, n - pos >= 2)
    return count


@cython.locals(n=cython.Py_ssize_t, v5=cython.Py_ssize_t, pos=cython.Py_ssize_t,
               end=cython.Py_ssize_t, packets=cython.Py_ssize_t, longer=cython.Py_ssize_t,
               run_start=cython.Py_ssize_t, run_limit=cython.Py_ssize_t,
               written=cython.Py_ssize_t, fresh=cython.bint, receivers=cython.Py_ssize_t,
               held=cython.bint)
def deliver_raw(broker: Any, router: Any, sender: str, v5: int, data: bytes, cls: Any,
                general: Any) -> int:
    """A peer node's plain QoS 0 PUBLISHes from client ``sender`` (``v5``: MQTT 5's
    wire format), the bytes their publisher sent (``cluster/rawlane.py``): written in
    runs to this node's receivers (``router``: its LocalRouter; connections of class
    ``cls``) as :func:`read_share` writes them, and each PUBLISH whose receivers need
    the general path handed to ``general`` as a ``Message``.  Returns the PUBLISHes
    written here; raises ValueError at bytes that are not such a PUBLISH (those before
    it are delivered)."""
    n = len(data)
    stats = broker.stats
    pos = written = run_start = run_limit = 0
    run: Any = None
    held = False  # a receiver of the run is paused: its bytes taken through, counted
    known: dict[bytes, Any] = {}
    while pos < n:
        name = _plain_topic(data, pos, n, v5) if n - pos >= 2 and data[pos] == 0x30 else None
        topic = None if name is None else _NAMES.get(name) or _topic_of(name)
        if topic is None:
            if run is not None:  # (what came before is delivered)
                _write(run, data, run_start, pos)
            raise ValueError(f"not a plain QoS 0 PUBLISH at byte {pos}")
        found = known.get(name)
        if found is None:
            found = known[name] = (topic, local_targets(broker, router, topic, 0, sender,
                                                        v5 == 1, cls, REMOTE))
        topic, targets = found
        if targets is not None:
            if run is not None and (targets != run or pos - run_start >= RUN_BYTES):
                _write(run, data, run_start, pos)
                run = None
                known.clear()
                continue  # (the write may have paused a receiver: looked up again)
            fresh = run is None
            if fresh:
                run_limit, held, _ = _run_limits(targets, 1 << 30)
            end, packets, longer = _scan_run(
                data, pos, n, name, v5, run_limit, n,
                (pos if fresh else run_start) + RUN_BYTES)  # type: ignore[arg-type]
            if packets and (not held or _taken_through(
                    broker, targets, _counted(end - pos, longer, packets, name, topic,
                                              v5))):  # type: ignore[arg-type]
                if fresh:
                    run, run_start = targets, pos
                receivers = len(targets)
                if receivers:
                    stats.deliveries += packets * receivers
                    stats.messages_sent += packets * receivers
                    stats.bytes_sent += receivers * (end - pos)
                written += packets
                pos = end
                continue
        if run is not None:  # (a PUBLISH for the general path: the run goes first)
            _write(run, data, run_start, pos)
            run = None
        known.clear()  # (what it does may change any receiver)
        end = _packet_end(data, pos, n)
        general(_message_at(data, pos, end, name, topic, v5, sender))
        pos = end
    if run is not None:
        _write(run, data, run_start, pos)
    return written


def _message_at(data: bytes, pos: int, end: int, name: bytes, topic: str, v5: int,
                sender: str) -> Message:
    """The whole plain QoS 0 PUBLISH from ``pos`` to ``end`` (topic bytes ``name``) as a
    ``Message`` from ``sender``, with its bytes for receivers of its wire format."""
    start = pos + (3 if data[pos + 1] & 0x80 else 2) + 2 + len(name) + v5
    message = Message(topic, data[start:end], 0, False, None, None, 0.0, sender)
    message.wire = {(5 if v5 else 4, 0, False): (data[pos:end], 0)}
    return message


@cython.ccall
@cython.locals(limit=cython.Py_ssize_t, remote=cython.Py_ssize_t, held=cython.bint)
def _run_limits(targets: list[Any], limit: int) -> tuple[int, bool, int]:
    """A run's receivers: the smallest maximum packet size (``limit`` at most), whether
    one is paused (flow control counts the run's bytes), and how many are peer nodes'
    lanes (``cluster/rawlane.py``: counted as forwarded, not sent)."""
    held = False
    remote = 0
    for link in targets:
        remote += link.remote
        if link.max_send_size and link.max_send_size < limit:
            limit = link.max_send_size
        held = held or link.paused
    return limit, held, remote


@cython.ccall
@cython.locals(size=cython.Py_ssize_t, longer=cython.Py_ssize_t,
               packets=cython.Py_ssize_t, v5=cython.Py_ssize_t)
def _counted(size: int, longer: int, packets: int, name: bytes, topic: str,
             v5: int) -> int:
    """What the general path counts of a run of ``packets`` PUBLISHes in ``size`` bytes
    on topic ``topic`` (``name`` encoded; ``longer`` with a 2-byte length): payloads and
    topics, as ``Delivery.deliver`` counts them."""
    return size - longer - packets * (4 + len(name) + v5 - len(topic))


@cython.ccall
@cython.locals(start=cython.Py_ssize_t, end=cython.Py_ssize_t)
def _write(links: list[Any], data: bytes, start: int, end: int) -> None:
    """A run's bytes to each of its receivers: one write each."""
    chunk = data[start:end] if start or end != len(data) else data
    for link in links:
        link.transport.write(chunk)


def _plain_topic(data: bytes, pos: int, n: int, v5: int) -> "bytes | None":
    """The topic bytes of the plain QoS 0 PUBLISH at ``pos`` if it is whole, framed by
    a length of at most two bytes, with a topic and (v5) no properties; else None."""
    length = data[pos + 1]
    header = 2
    if length & 0x80:
        if pos + 2 >= n or data[pos + 2] & 0x80 or not data[pos + 2]:
            return None
        length = (length & 0x7F) | (data[pos + 2] << 7)
        header = 3
    body = pos + header
    if length < 3 + v5 or body + length > n:
        return None
    size = (data[body] << 8) | data[body + 1]
    if not size or 2 + size + v5 > length or (v5 and data[body + 2 + size]):
        return None
    return data[body + 2 : body + 2 + size]


def _scan_run(data: bytes, pos: int, n: int, name: bytes, v5: int, limit: int,
              left: int, stop: int) -> tuple[int, int, int]:
    """``(end, packets, longer)`` of the PUBLISHes from ``pos`` on that go with the
    first: whole, plain QoS 0 on topic ``name`` without properties, each at most
    ``limit`` bytes, at most ``left`` of them, none starting at or past ``stop`` but the
    first; ``longer``: how many have a 2-byte length (``_qos0.pyx`` has a C twin)."""
    size = len(name)
    packets = longer = 0
    while packets < left and n - pos >= 2 and data[pos] == 0x30 and (pos < stop or not packets):
        length = data[pos + 1]
        header = 2
        if length & 0x80:
            if pos + 2 >= n or data[pos + 2] & 0x80 or not data[pos + 2]:
                break
            length = (length & 0x7F) | (data[pos + 2] << 7)
            header = 3
        body = pos + header
        end = body + length
        if (end > n or header + length > limit or length < 2 + size + v5
                or data[body] != size >> 8 or data[body + 1] != size & 0xFF
                or data[body + 2 : body + 2 + size] != name
                or (v5 and data[body + 2 + size])):
            break
        pos = end
        packets += 1
        longer += header - 2
    return pos, packets, longer


def _packet_end(data: bytes, pos: int, n: int) -> int:
    """Where the packet at ``pos`` ends if it is whole with a well-formed length, else -1
    (then the decoder frames it, keeps it or says what is wrong with it)."""
    length = 0
    shift = 0
    header = 1
    while header < 5:
        if pos + header >= n:
            return -1
        byte = data[pos + header]
        header += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if not byte and header > 2:
                return -1
            end = pos + header + length
            return end if end <= n else -1
        shift += 7
    return -1


def _topic_of(name: bytes) -> "str | None":
    """``name`` as a PUBLISH topic if the decoder would take it (UTF-8, no wildcard or
    U+0000; kept in _NAMES), else None."""
    try:
        topic = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "+" in topic or "#" in topic or "\x00" in topic:
        return None
    if len(_NAMES) >= ROUTES_CACHED:
        _NAMES.clear()
    _NAMES[name] = topic
    return topic
