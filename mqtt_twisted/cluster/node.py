"""One cluster node's side of Redis: the route table kept current, the inboxes read.

Keys (``P`` is the Redis store's prefix, ``mqtt`` by default; ``D`` its database,
in the channel names because pub/sub ignores databases)::

    P:cluster:nodes            set     the node names that ever registered
    P:cluster:filters:{node}   set     the routed filters a node has subscribers for
    P:cluster:shared:{node}    hash    share group key -> its online members there
    P:cluster:home             hash    client id -> the node its session lives on
    P:cluster:inbox:{node}     stream  QoS 1/2 messages for a node (consumer group: node)
    P:cluster:routes@D         channel route changes (routes.encode_change)
    P:cluster:inbox0:{node}@D  channel QoS 0 messages for a node (sharded: SPUBLISH,
                               where Redis >= 7.0 has it; plain PUBLISH otherwise)
    P:cluster:ctl:{node}@D     channel a node's requests and answers (session handover)
    P:cluster:alive:{node}     string  a node's lease; P:cluster:adopt:{node} its adopter

Four connections (``client.RedisClient``): commands (registrations, XADD,
PUBLISH, XACK), a subscriber (route changes, the QoS 0 inbox), a reader (the
blocking XREADGROUP on this node's stream) and the lease's (its renewals and the
looks for dead nodes, each written at once: ``failover.py``).

A CONNECT for a client id whose home is another node (``locate_session``, called by
the core's Connector with the client id's lock held) asks that node to let the
session go (``handover.release_session``) and loads it from the store once it
answers; a node that does not answer (not subscribed: dead; or not within
``RELEASE_TIMEOUT`` and adopted; or not within ``RELEASE_PATIENCE``) is
skipped, and the stored state is used as it is once the dead node has been adopted
(``failover.py``).  The QoS 1/2 stream is read by
``inbox.InboxReader``; an entry is acknowledged (XACK) only once its local deliveries
are stored, so a node that dies before that leaves it to its adopter (or to its own
next run, when nobody adopted it: ``restart.py``).
"""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet.defer import (
    Deferred,
    FirstError,
    gatherResults,
    inlineCallbacks,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.cluster.barrier import Barriers
from mqtt_twisted.cluster.client import RedisClient
from mqtt_twisted.cluster.failover import LEASE, Failover
from mqtt_twisted.cluster.fence import Fence
from mqtt_twisted.cluster.inbox import InboxReader
from mqtt_twisted.cluster.inbox0 import receive_push
from mqtt_twisted.cluster.link import NodeLink
from mqtt_twisted.cluster.moved import Moved
from mqtt_twisted.cluster.releases import Releases
from mqtt_twisted.cluster.resp import ReplyError
from mqtt_twisted.cluster.restart import Restart
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import decode_change
from mqtt_twisted.cluster.sysstats import ClusterStats
from mqtt_twisted.cluster.turns import TurnProbe
from mqtt_twisted.cluster.wills import WillKeeper
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import ConnectError, StorageError
from mqtt_twisted.store.redis import endpoint
from mqtt_twisted.store.replicas import ReplicaWait

log = Logger()

#: Seconds a CONNECT waits for the node that had the session to let it go, before it
#: looks whether that node still owns its clients (then it waits again)...
RELEASE_TIMEOUT = 3.0
#: ... up to this long in all.
RELEASE_PATIENCE = 60.0
#: Times a CONNECT looks for its session's home: each time the home moved on while
#: it was asked (its node adopted), the adopter is asked in turn.
LOOKS = 4
#: What became of asking a node to let a session go (``_ask_release``): it did; it
#: did not within RELEASE_PATIENCE (the stored state is taken); nobody listens on its
#: control channel (dead); its epoch ended while it was asked (adopted).
_ANSWERED, _LATE, _NOBODY, _ADOPTED = "answered", "late", "nobody", "adopted"

#: Every node's filters: [node, [filter, ...], node, ...] (one Redis, not Redis Cluster).
_SNAPSHOT = b"""
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('SMEMBERS', ARGV[1] .. node)
end
return out
"""
#: A node's share groups and their weights: [node, [key, weight, ...], node, ...].
_SHARED_SNAPSHOT = b"""
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. node)
end
return out
"""
#: A CONNECT's client id: its home becomes this node unless another node has it
#: (returned).  KEYS: home hash, this node's epoch key; ARGV: client id, node, epoch.
_CLAIM = b"""
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return redis.error_reply('FENCED') end
local home = redis.call('HGET', KEYS[1], ARGV[1])
if home and home ~= ARGV[2] then return home end
if not home then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); return false end
return 1
"""
#: The session was let go by its home (ARGV[2]): it is this node's now, unless the
#: home moved meanwhile or this node's epoch is over (compare and set).  KEYS: home
#: hash, this node's epoch key; ARGV: client id, old home, node, epoch.
_MOVE = b"""
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return redis.error_reply('FENCED') end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
#: A session ended here: its client id has no home any more (unless another node took it).
_FORGET = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
#: Which of these client ids live here: their home is this node, or nobody's yet.
_HOMES = b"""
local mine = {}
for i, cid in ipairs(ARGV) do
  if i > 1 then
    local home = redis.call('HGET', KEYS[1], cid)
    if not home then redis.call('HSET', KEYS[1], cid, ARGV[1]); home = ARGV[1] end
    if home == ARGV[1] then mine[#mine + 1] = cid end
  end
end
return mine
"""


class _HomeKeeper:
    """The broker's store, telling the node when a session is deleted (its end)."""

    def __init__(self, store: Any, node: ClusterNode) -> None:
        self._store = store
        self._node = node

    #: No synchronous twin of deleteSession (it would skip the node's part below).
    deleteSessionNow = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def deleteSession(self, clientId: str) -> Any:
        result = self._store.deleteSession(clientId)

        def deleted(outcome: Any) -> Any:
            # Once deleted: the delete is fenced by the home it would remove.
            self._node.session_ended(clientId)
            return outcome

        result.addBoth(deleted)
        return result


class ClusterKeys:
    """The cluster's key and channel names (see the module docstring)."""

    def __init__(self, prefix: str, db: int) -> None:
        p = prefix.encode() + b":cluster:"
        self.prefix = p
        self.nodes = p + b"nodes"
        self.filters_prefix = p + b"filters:"
        self.shared_prefix = p + b"shared:"
        self.home = p + b"home"
        self.routes = p + b"routes@%d" % db
        self._inbox = p + b"inbox:"
        self._inbox0 = p + b"inbox0:"
        self._ctl = p + b"ctl:"
        self._db = db

    def filters(self, node: str) -> bytes:
        return self.filters_prefix + node.encode()

    def shared(self, node: str) -> bytes:
        return self.shared_prefix + node.encode()

    def inbox(self, node: str) -> bytes:
        return self._inbox + node.encode()

    def inbox0(self, node: str) -> bytes:
        return self._inbox0 + node.encode() + b"@%d" % self._db

    def ctl(self, node: str) -> bytes:
        return self._ctl + node.encode() + b"@%d" % self._db


class ClusterNode:
    """Joins a broker to the cluster on the Redis its store uses."""

    def __init__(self, reactor: Any, options: Any, name: str, broker: Any) -> None:
        self.reactor = reactor
        self.options = options
        self.name = name
        self.broker = broker
        self.keys = ClusterKeys(options.prefix, options.db)
        self.link = NodeLink(self)
        self.router = ClusterRouter(broker.router, name, self.link, broker.journal.persist)
        self.commands = self._client("commands", self._prepare)
        self.subscriber = self._client("subscriber", self._subscribe, self._pushed)
        self.reader = self._client("reader", self._prepare)
        #: The lease's renewals and the looks for dead nodes (``failover.py``), on a
        #: connection of their own, each written at once: not behind a busy turn's
        #: other commands, nor their replies (a reconnect storm's thousands).
        self.lease = self._client("lease", self._prepare, urgent=True)
        self._origin = name.encode()
        #: The consumer group (and consumer) reading this node's stream: its name.
        self.group = self._origin
        self.inbox = InboxReader(self)
        #: The session field that marks the last entry of this node's stream delivered
        #: into a session (``RedisStore.mark``; ``drain.py`` reads it).
        self.mark_field = b"m:" + self.keys.inbox(name)
        self.fence = Fence(self)
        self.moved = self.router.moved = Moved(self)
        self.router.leaving = self.moved.leaving
        self.barriers = Barriers(self)
        self.wills = WillKeeper(self)
        self.failover = Failover(self)
        self.releases = Releases(self)
        self.restart = Restart(self)  # what a previous run of this name left (restart.py)
        self.turns = TurnProbe(reactor, name, LEASE / 3)
        self.stats = ClusterStats(self)
        self.router.totals = self.stats.sys_values
        self._stopped = False
        self._stale: set[str] = set()
        self._stale_shared: set[str] = set()
        self._releases: dict[int, Deferred[None]] = {}
        #: origin node -> the number of its last message delivered here from this
        #: node's stream (``inbox.deliver_items``); a session let go carries it to its
        #: new node (``barrier.py``, "Message identity"), which is told it in the
        #: answer: client id -> what the old node said (``_released``).
        self.delivered: dict[str, int] = {}
        self._released: dict[str, dict[str, int]] = {}
        self._next_request = 0
        self._to_redis: Any = None
        #: ?wait=N: XADDs confirmed by a WAIT per turn (store/replicas.py).
        self._replicas = ReplicaWait(reactor, options.wait, options.wait_timeout,
                                     self._send_wait) if options.wait else None
        #: SPUBLISH once the server has taken this node's SSUBSCRIBE (Redis >= 7.0).
        self.publish_command = b"PUBLISH"
        self._subscribed = False  # (the pub/sub connection was up before)

    def _client(self, role: str, on_connect: Any, on_push: Any = None,
                urgent: bool = False) -> RedisClient:
        return RedisClient(self.reactor, endpoint(self.reactor, self.options),
                           timeout=self.options.timeout, on_connect=on_connect,
                           on_push=on_push, name=f"cluster {self.name} {role}",
                           urgent=urgent)

    # --- lifecycle ---

    def install(self) -> None:
        """Put the cluster router in front of the broker's local one (before start)."""
        self.broker.router = self.router
        self.broker.delivery.hold = self.router.hold_copy  # share copies from the stream
        self.broker.locate_session = self.locate_session
        self.broker.wills = self.wills
        #: The Redis store itself, under the broker's wrappers (overlay.py): its writes
        #: carry this node's fence (fence.py).
        store = self.broker.store
        while not hasattr(store, "fence") and hasattr(store, "store"):
            store = store.store
        self.store = store
        self.broker.store = _HomeKeeper(self.broker.store, self)

    @inlineCallbacks
    def start(self) -> Any:
        """Connect, create this node's inbox and read the route table; the broker's
        sessions are restored after this, registering their filters."""
        self._to_redis = endpoint(self.reactor, self.options)
        hold = getattr(self._to_redis, "hold", None)
        if hold is not None:
            hold()  # Sentinel: watch for a new master while the node runs
        clients = (self.commands, self.subscriber, self.reader, self.lease)
        self.restart.begin()
        for client in clients:
            client.start()
        ready = gatherResults([c.ready() for c in clients], consumeErrors=True)
        ready.addTimeout(self.options.connect_timeout, self.reactor)
        try:
            yield ready
        except Exception:
            yield self.stop()
            raise StorageError(f"cluster: {self.options.where} "
                               f"did not answer in {self.options.connect_timeout}s") from None
        k = self.keys
        try:
            yield self.commands.command(b"XGROUP", b"CREATE", k.inbox(self.name), self._origin,
                                        b"0", b"MKSTREAM")
        except ReplyError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise
        self.restart.joined(*(yield self.fence.join()))
        old = yield self.commands.command(b"SMEMBERS", k.filters(self.name))
        self._stale = {f.decode("utf-8") for f in old}
        old = yield self.commands.command(b"HKEYS", k.shared(self.name))
        self._stale_shared = {f.decode("utf-8") for f in old}
        log.info("Cluster node {name} joined ({n} peers' filters known)", name=self.name,
                 n=len(self.router.routes))
        yield self.failover.start()
        self.turns.start()
        self.stats.start()

    @inlineCallbacks
    def rejoin(self) -> Any:
        """After being fenced (``fence.py``; its sessions are dropped): a new epoch, the
        node back in the set of nodes, its stream read afresh."""
        self.inbox.stop()
        _, _, drainer = yield self.fence.join()
        try:
            yield self.commands.command(b"XGROUP", b"CREATE", self.keys.inbox(self.name),
                                        self._origin, b"0", b"MKSTREAM")
        except ReplyError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise
        self.failover.rejoined()
        if not self._stopped:
            self.inbox = InboxReader(self)
            self.restart.read(self.inbox, drainer)  # once its adopter's drain is over
        log.info("cluster {name}: rejoined", name=self.name)

    def restored(self) -> Any:
        """Sessions are restored: forget the filters registered in an earlier run that
        no local subscriber has any more, and publish the wills of its clean sessions'
        clients (unless a survivor adopted that run and did)."""
        stale, self._stale = self._stale - set(self.router.subscribers), set()
        for f in stale:
            self.link.unregister(f)
        stale_shared = self._stale_shared - set(self.router.shared_weights)
        self._stale_shared = set()
        for key in stale_shared:
            self.link.unshare(key)
        self.restart.restored()  # the stream is read from now on
        return self.wills.take(self.name)

    def restorable(self, client_ids: list[str]) -> Deferred[list[str]]:
        """The stored sessions this node restores: those whose home it is (or nobody's:
        the first node to start takes them)."""
        if not client_ids:
            d: Deferred[list[str]] = Deferred()
            d.callback([])
            return d
        d = self.commands.command(b"EVAL", _HOMES, 1, self.keys.home, self._origin,
                                  *[c.encode("utf-8") for c in client_ids])
        d.addCallback(lambda mine: [c.decode("utf-8") for c in mine])
        return d

    @inlineCallbacks
    def stop(self) -> Any:
        self.link.outbox.flush()  # this turn's copies for the peers, before the end
        self._stopped = True
        self.turns.stop()
        self.inbox.stop()
        self.restart.end()
        try:
            yield self.stats.stop()
            yield self.failover.stop()  # the lease goes: a survivor adopts at once
        except Exception:
            pass
        yield gatherResults([c.stop() for c in (self.reader, self.subscriber, self.commands,
                                                self.lease)], consumeErrors=True)
        to_redis, self._to_redis = self._to_redis, None
        release = getattr(to_redis, "release", None)
        if release is not None:
            yield release()

    # --- connections ---

    def _prepare(self, client: RedisClient, select: bool = True) -> None:
        o = self.options
        if o.password is not None:
            args = (b"AUTH", o.username, o.password) if o.username else (b"AUTH", o.password)
            client.command(*args).addErrback(self._failed, "AUTH")
        if select and o.db:
            client.command(b"SELECT", o.db).addErrback(self._failed, "SELECT")

    def _subscribe(self, client: RedisClient) -> None:
        """Every (re)connection: listen for changes, then read the whole table."""
        if self._subscribed:  # (Redis closed it: a flood over its pubsub output limit)
            log.warn("cluster {name}: the pub/sub connection to Redis was lost and is back; "
                     "QoS 0 messages sent to this node meanwhile are lost (Redis closes it "
                     "when the node's inbox outgrows client-output-buffer-limit pubsub)",
                     name=self.name, action="cluster_inbox_lost")
        self._subscribed = True
        self._prepare(client, select=False)
        for channel in (self.keys.inbox0(self.name), self.keys.ctl(self.name)):
            client.command(b"SUBSCRIBE", channel).addErrback(self._failed, "SUBSCRIBE")
        # The QoS 0 lane is sharded pub/sub where Redis has it (7.0): on Redis Cluster an
        # SPUBLISH goes to the shard of its channel only, a PUBLISH to every shard.  The
        # plain channel above stays subscribed, for peers that still PUBLISH.
        d = client.command(b"SSUBSCRIBE", self.keys.inbox0(self.name))
        d.addCallbacks(lambda _: self._sharded(True), lambda _: self._sharded(False))
        self.router.routes.begin_sync()
        d = client.command(b"SUBSCRIBE", self.keys.routes)
        d.addCallback(lambda _: gatherResults([self.commands.command(
            b"EVAL", script, 1, self.keys.nodes, prefix) for script, prefix in (
                (_SNAPSHOT, self.keys.filters_prefix),
                (_SHARED_SNAPSHOT, self.keys.shared_prefix))], consumeErrors=True))
        d.addCallbacks(self._synced, self._sync_failed)

    def _sharded(self, supported: bool) -> None:
        self.publish_command = b"SPUBLISH" if supported else b"PUBLISH"

    def _synced(self, replies: list[Any]) -> None:
        reply, shared = replies
        snapshot = {reply[i].decode("utf-8"): [f.decode("utf-8") for f in reply[i + 1]]
                    for i in range(0, len(reply), 2)}
        groups = {shared[i].decode("utf-8"): {
            shared[i + 1][j].decode("utf-8"): int(shared[i + 1][j + 1])
            for j in range(0, len(shared[i + 1]), 2)} for i in range(0, len(shared), 2)}
        self.router.routes.end_sync(snapshot, groups)

    def _sync_failed(self, failure: Failure) -> None:
        self.router.routes.abort_sync()
        self._failed(failure, "reading the route table")

    def _pushed(self, push: list[Any]) -> None:
        channel, data = push[1], push[2]
        if channel == self.keys.routes:
            try:
                self.router.routes.apply(*decode_change(data))
            except ValueError as e:
                log.warn("cluster: {error}", error=e)
            return
        if channel == self.keys.ctl(self.name):
            self._control(data)
            return
        receive_push(self.broker, self.router, data)

    def _failed(self, failure: Failure, what: str) -> None:
        if failure.check(FirstError):  # a gathered write: its own error says it
            failure = failure.value.subFailure
        if not self._stopped:
            log.warn("cluster {name}: {what} failed: {error}", name=self.name, what=what,
                     error=failure.getErrorMessage())

    # --- sessions moving between nodes ---

    @inlineCallbacks
    def locate_session(self, client_id: str) -> Any:
        """The stored state of ``client_id``'s session if another node had it (that
        node has let it go), else None; this node is its home from now on.

        The home can move while this node asks it: the node asked is adopted meanwhile
        (paused, or too busy to renew its lease), and its adopter takes the home.  Then
        the adopter is asked in turn (``LOOKS``): refusing the CONNECT there ("moved
        to another node meanwhile", v3 0x03) refused a client the cluster could serve.
        """
        cid = client_id.encode("utf-8")
        self.moved.stop_forwarding(client_id)  # it comes back: no more forwarding
        try:
            for _ in range(LOOKS):
                fence = self.fence
                home = yield self._owner_script(_CLAIM, cid, self._origin, fence.epoch)
                if home is None:  # nobody else's: this node's now
                    return None
                if home == 1:  # this node's already, and not in memory
                    state = yield self._home_here(client_id)
                    return state
                old = home.decode("utf-8")
                self.moved.expect(client_id)  # what its old node forwards, until it is here
                answer = yield self._ask_release(old, client_id)
                if answer in (_NOBODY, _ADOPTED) and (
                        (yield self.failover.gone(old, client_id)) or answer == _NOBODY):
                    # Gone and adopted (here or elsewhere), or nobody listened with its
                    # lease held: a new run of it starts (restart.py). Look again.
                    continue
                moved = yield self._owner_script(_MOVE, cid, home, self._origin, fence.epoch)
                if not moved:  # adopted meanwhile: its adopter has the home now
                    continue
                state = yield self.broker.store.loadSession(client_id)
                if state is not None and client_id not in self.broker.sessions:
                    self.broker.restore_session(state)  # here, so that the forwarded follow
                    if answer in (_ANSWERED, _LATE):
                        # Its old node forwards its backlog: keep it in order.
                        self.barriers.open(client_id, old, self._released.get(client_id))
                return state
            raise ConnectError(f"the session of {client_id!r} was not let go by its node in "
                               f"{LOOKS} looks (it moved on, or nobody answered)",
                               ReasonCode.SERVER_BUSY)
        finally:
            self._released.pop(client_id, None)
            self.moved.arrived(client_id)

    @inlineCallbacks
    def _owner_script(self, script: bytes, *args: Any) -> Any:
        """A compare-and-set script on a client's owner record; a node whose epoch is
        over (adopted meanwhile) learns it here and refuses the CONNECT."""
        try:
            reply = yield self.commands.command(b"EVAL", script, 2, self.keys.home,
                                                self.fence.key, *args)
        except ReplyError as e:
            if not str(e).startswith("FENCED"):
                raise
            self.fence.lost()
            raise ConnectError("this node is rejoining the cluster",
                               ReasonCode.SERVER_UNAVAILABLE) from None
        return reply

    @inlineCallbacks
    def _home_here(self, client_id: str) -> Any:
        """The client id's home is this node but its session is not in memory: it is
        being adopted from a dead node (wait until it is restored: answering "no
        session" now made the adoption skip it, and 2,000 of 5,000 sessions of a
        reconnect storm were lost; waiting for the whole adoption answered thousands
        of CONNECTs in one turn, ``adoption.py``), or an earlier CONNECT that had it
        brought here was cut short: the stored state, if any."""
        yield self.failover.wait_for(client_id)  # its own session, not all of them
        if client_id in self.broker.sessions:
            return None
        state = yield self.broker.store.loadSession(client_id)
        return state

    @inlineCallbacks
    def _ask_release(self, node: str, client_id: str) -> Any:
        self._next_request += 1
        request = self._next_request
        answered: Deferred[None] = Deferred()
        self._releases[request] = answered
        try:
            listeners = yield self.commands.command(
                b"PUBLISH", self.keys.ctl(node),
                msgpack.packb(["release", client_id, self.name, request]))
            if not listeners:
                return _NOBODY  # the node is gone (failover.gone)
            # Waited for as long as the node owns its clients (its epoch is current:
            # not adopted, even if a long turn let its lease lapse), up to
            # RELEASE_PATIENCE: a busy node (adopting thousands of sessions in a
            # reconnect storm) answers late, and the stored state taken meanwhile missed
            # what it delivered to its copy since (2,000 of 5,000 messages were lost).
            waited = 0.0
            alive_key = self.failover.epoch_prefix + node.encode()
            while not answered.called:
                turn: Deferred[None] = Deferred()
                answered.addBoth(lambda r, t=turn: None if t.called else t.callback(None))
                turn.addTimeout(RELEASE_TIMEOUT, self.reactor)
                try:
                    yield turn
                    break
                except Exception:
                    waited += RELEASE_TIMEOUT
                alive = yield self.commands.command(b"EXISTS", alive_key)
                if not alive:  # adopted: its adopter has (or is taking) the session
                    log.info("cluster: node {node} was adopted while {client}'s session "
                             "was asked of it; asking its adopter", node=node,
                             client=client_id)
                    return _ADOPTED
                if waited >= RELEASE_PATIENCE:
                    log.warn("cluster: node {node} did not let {client}'s session go in "
                             "{seconds}s; taking it as it was stored", node=node,
                             client=client_id, seconds=waited)
                    return _LATE
            return _ANSWERED
        finally:
            self._releases.pop(request, None)

    def _control(self, data: bytes) -> None:
        try:
            kind, client_id, node, request, *more = msgpack.unpackb(data, raw=False)
        except Exception:
            log.warn("cluster: a control message could not be read: {data!r}", data=data[:60])
            return
        if kind == "release":
            self.releases.request(client_id, node, request)  # releases.py
        elif kind == "released":
            answered = self._releases.get(request)
            if answered is not None and not answered.called:
                if more and type(more[0]) is dict:
                    self._released[client_id] = more[0]
                answered.callback(None)

    def session_ended(self, client_id: str) -> None:
        """A session was deleted here (``deleteSession``): next turn, unless a session of
        that client id is here again (a clean start deletes, then opens one), its home
        record goes, so that client ids that come and go leave nothing in Redis."""
        self.reactor.callLater(0, self._forget_home, client_id)

    def _forget_home(self, client_id: str) -> None:
        if client_id in self.broker.sessions or self._stopped:
            return
        self.commands.command(b"EVAL", _FORGET, 1, self.keys.home, client_id.encode("utf-8"),
                              self._origin).addErrback(self._failed, "forgetting a home")

    def _send_wait(self, replicas: int, milliseconds: int) -> Deferred[Any]:
        return self.commands.command_blocking(milliseconds / 1000, b"WAIT", replicas,
                                              milliseconds)
