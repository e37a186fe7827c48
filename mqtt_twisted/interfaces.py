"""Every interface a plugin author implements or calls.

Adapters, stores and authenticators are found as Twisted plugins (see
:mod:`mqtt_twisted.plugins`) and talk to the broker only through these
interfaces.  Store and auth calls return Deferreds so that a network backend
(Redis, an HTTP auth service) fits the same contract as the in-memory one.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

# --- Plugins: what getPlugins() finds (they extend IPlugin, as getPlugins requires) ---


class IAdapter(IPlugin):
    """A protocol adapter: turns a listener description into a running listener.

    Chosen per listener by name: ``--listen ws=tcp:8080`` uses the adapter
    named ``ws``.  Byte-stream adapters build a Twisted factory and let an
    endpoint listen; datagram adapters (CoAP over UDP) return their own service.

    The optional hooks are looked up with ``getattr``, so that an adapter has only
    those it needs; each is declared in an interface of its own below, which an
    adapter that has it declares too (``@implementer(IStreamAdapter,
    IListenerChecker)``), so that ``verifyObject`` checks it:
    :class:`IListenerChecker` (``checkListener``), :class:`IEndpointChecker`
    (``checkEndpoint``), :class:`IDatagramAdapter` (``datagram``),
    :class:`IStreamAdapter` (``buildFactory``, what ``auto=`` listeners use) and, on
    the service ``buildListener`` returns, :class:`IReloadableListener` (``reload``).
    """

    name = Attribute("Short name used before '=' in --listen, e.g. 'mqtt', 'ws', 'http'.")
    description = Attribute("One line for --help.")
    defaultEndpoint = Attribute(
        "Endpoint the adapter is usually served on, e.g. 'tcp:1883': the example in the "
        "usage error for a listener given without one (--listen NAME=).")
    options = Attribute(
        "The adapter's own listener keys (e.g. 'path'), taken out of the endpoint string "
        "before it is parsed: a mapping of key to an AdapterOption "
        "(mqtt_twisted.adapters.options: converter, default, help), from which --listen "
        "checks values and --help lists them; a plain mapping of key to a help line "
        "(older plugins) gives string keys."
    )

    def buildListener(reactor, broker, endpointDescription, settings):
        """Return an ``IService`` that listens while it runs.

        :param reactor: the reactor to listen with.
        :param broker: the :class:`IBrokerService` the listener feeds.
        :param endpointDescription: a Twisted server endpoint string, our keys removed.
        :param settings: an :class:`IListenerSettings` for this listener.
        """


class IListenerChecker(Interface):
    """Optional adapter hook: refuse a listener before anything starts."""

    def checkListener(settings):
        """Raise ValueError for a listener the adapter cannot serve (a missing certificate
        file, a bad key value); called while the command line is parsed, after the
        endpoint check, and the message becomes a one-line usage error."""


class IEndpointChecker(Interface):
    """Optional adapter hook: the adapter checks its endpoints itself.

    Without it, a ``datagram`` adapter's endpoint must be ``udp:PORT[:interface=HOST]``
    and any other adapter's a Twisted stream server endpoint (``tcp:``, ``ssl:``,
    ``unix:``, plugins'), parsed as Twisted would (TLS files read).
    """

    def checkEndpoint(settings):
        """Raise ValueError unless ``settings.endpoint`` is one the adapter can listen on."""


class IDatagramAdapter(IAdapter):
    """An adapter listening on datagram endpoints (``udp:``) with a service of its own
    (``mqtt_twisted.adapters.kit.DatagramListener`` around ``listenUDP``)."""

    datagram = Attribute("True: endpoints are udp:PORT[:interface=HOST], not stream ones.")


class IStreamAdapter(IAdapter):
    """An adapter serving a byte stream through a Twisted protocol factory: its
    ``buildListener`` listens with what ``buildFactory`` builds, and an ``auto=``
    listener hands the connections it recognises to the same kind of factory."""

    def buildFactory(reactor, broker, settings):
        """Return the ``IProtocolFactory`` serving one listener (TLS is not its business:
        the listener, or the ``auto=`` listener in front, does it)."""


class IReloadableListener(Interface):
    """Optional hook of the service ``buildListener`` returns."""

    def reload():
        """Re-read what the listener reads from files (TLS certificates), on SIGHUP: new
        connections use it, open ones carry on.  True if reloaded, False if the files did
        not work (the old ones stay), None if there is nothing to reload."""


class IStorePlugin(IPlugin):
    """A store backend selectable with ``--store NAME[:ARGS]`` or a URL scheme."""

    name = Attribute("Scheme or name, e.g. 'memory' or 'redis'.")
    description = Attribute("One line for --help.")

    def makeStore(reactor, argument):
        """Return an :class:`IStore` configured from ``argument`` (the text after the name)."""


class IAuthPlugin(IPlugin):
    """An authentication/authorization backend selectable with ``--auth NAME[:ARGS]``."""

    name = Attribute("Name used on the command line.")
    description = Attribute("One line for --help.")

    def makeAuthenticator(reactor, argument):
        """Return an object providing :class:`IAuthenticator` (it may also provide IAuthorizer)."""


# --- Listeners ---------------------------------------------------------------------------


class IListenerSettings(Interface):
    """Per-listener settings parsed from ``--listen`` (seed 002's ListenerConfig)."""

    adapter = Attribute("The adapter name.")
    endpoint = Attribute("The Twisted endpoint description, our keys removed.")
    maxConnections = Attribute("Connections held at most; further sockets are refused. 0: none.")
    connectTimeout = Attribute("Seconds a socket may take to send CONNECT before it is closed.")
    extra = Attribute("Mapping of adapter-specific keys given in the listener string.")
    identityAsUsername = Attribute(
        "True if the TLS client certificate's identity replaces the CONNECT user name "
        "(Mosquitto's use_identity_as_username); the adapter sets it."
    )


# --- The broker as adapters see it -----------------------------------------------------


class IConnectionTransport(Interface):
    """What the sans-IO connection machine needs from a byte stream (a subset of ITransport)."""

    def write(data):
        """Queue ``data`` (bytes) to the peer."""

    def loseConnection():
        """Close after flushing what is queued."""

    def abortConnection():
        """Close now, dropping what is queued."""


class IBrokerConnection(Interface):
    """One client's protocol machine, fed by a byte-stream adapter."""

    def dataReceived(data):
        """Bytes from the peer, in arbitrary pieces."""

    def connectionLost(reason):
        """The stream ended; ``reason`` is a Failure or None."""

    def pauseWriting():
        """The transport's buffer is full: stop writing, queue within the session's bounds."""

    def resumeWriting():
        """The transport drained: write what was queued."""


class IMessageSink(Interface):
    """Receives the messages routed to a virtual session (HTTP, CoAP observers)."""

    def deliver(message, qos):
        """Take one routed ``Message`` at the granted ``qos``; must not block."""


class IBrokerService(Interface):
    """The broker as adapters see it: the gateway (``mqtt_twisted/gateway.py``).

    An adapter's ``buildListener`` gets one; it is the only way into the broker, so
    that an MQTT client and an HTTP or CoAP client are authenticated, authorized,
    granted and counted alike.  Answers that may wait for a store or an
    authenticator are Deferreds.
    """

    stats = Attribute("The broker's counters (connections refused, messages, ...).")
    settings = Attribute("The broker's limits and features (BrokerSettings), read-only.")

    def buildConnection(transport, peer, listener, certificateIdentity=None):
        """Return an :class:`IBrokerConnection` for a new byte-stream (MQTT) client.

        :param transport: an :class:`IConnectionTransport`.
        :param peer: a string naming the remote address, for logs, or the address as a
            ``(host, port)`` tuple (made into ``host:port`` when a log line asks).
        :param listener: the :class:`IListenerSettings` it arrived on.
        :param certificateIdentity: the TLS client certificate's identity, if any.
        """

    def connectionRefused(why="listener_full"):
        """Count a client the adapter refused before it reached the broker: ``why`` is
        ``"listener_full"`` (maxConnections) or ``"connection_rate"`` (its source
        address's maxConnectionRate)."""

    def authenticate(credentials):
        """Deferred firing with the identity the authenticator gives an
        :class:`ICredentials` (the user name on an anonymous broker), or failing with
        an ``AuthenticationError``."""

    def authorize(action, identity, clientId, topic):
        """Deferred firing with whether ``identity`` may ``"publish"`` to a topic or
        ``"subscribe"`` to a filter (nobody publishes to ``$SYS``)."""

    def mayRemoveSession(identity, clientId):
        """Deferred firing with whether ``identity`` may end ``clientId``'s session."""

    def openSession(clientId, sink, clean=True, credentials=None, expiry=None):
        """Open a session delivering to ``sink`` (an :class:`IMessageSink`), as an MQTT
        CONNECT would: authenticated, locked, taking over any connection of that client
        id.  ``expiry`` sets the session expiry interval in seconds.  Returns a Deferred
        firing with the session (an :class:`ISessionState`)."""

    def session(clientId):
        """The live session of ``clientId`` (an :class:`ISessionState`), or None."""

    def closeSession(clientId, remove=False):
        """Disconnect ``clientId`` (from any adapter); ``remove`` also deletes its session.
        False when there is no such session."""

    def publish(message, clientId=None):
        """Route a ``Message``; Deferred fires with the number of sessions reached once
        it is accepted (stored, for QoS 1/2)."""

    def subscribe(clientId, topicFilter, qos=0):
        """Subscribe an open session, granted as an MQTT SUBSCRIBE is; Deferred firing
        with the granted QoS or a failure reason code (>= 0x80)."""

    def unsubscribe(clientId, topicFilter):
        """Remove one subscription of an open session; Deferred firing with a bool."""

    def retained(topicFilter):
        """Deferred firing with the retained ``Message``s matching a filter (expired
        ones left out)."""


class IBrokerAdmin(Interface):
    """What an operator may ask of the broker (``Gateway.admin``, ``mqtt_twisted/admin.py``):
    metrics, and the admin API's questions.  Who may ask is the adapter's check
    (``Gateway.isAdmin``)."""

    listener_limits = Attribute("A WeakSet the listeners' connection limits add themselves "
                                "to, so that the metrics can read them.")

    def metrics():
        """Deferred firing with every metric family (``core/metrics.py`` ``Family``),
        read from the broker's counters now."""

    def clients(search=None, limit=100, after=None):
        """A page of sessions (a JSON-ready dict: ``clients``, ``next``)."""

    def client(clientId):
        """One session in full (a JSON-ready dict), or None."""

    def kick(clientId, remove=False):
        """Disconnect a client (``remove``: and delete its session); False if unknown."""

    def subscriptions(prefix=None, limit=100, after=None):
        """A page of subscriptions (``subscriptions``, ``next``: an opaque cursor)."""

    def retained(topicFilter="#", limit=100, after=None):
        """Deferred firing with a page of retained topics (``topics``, ``next``)."""

    def deleteRetained(topic):
        """Deferred firing with whether a retained message was there (and is deleted)."""

    def stats():
        """Counters, gauges, the busiest topics and the rate history (a JSON-ready dict)."""

    def sample():
        """Add a point (messages in and out a second, connections) to the history; the
        broker service calls it once a second."""


# --- Sessions ------------------------------------------------------------------------------


class ISessionLink(Interface):
    """What delivery writes a session's messages to: its connection, an MQTT one or an
    adapter's virtual one (``core/virtual.py``), so that delivery never needs to know
    which."""

    paused = Attribute("True while the client cannot take more; delivery queues meanwhile.")
    send_quota = Attribute("How many QoS 1/2 messages may be in flight to the client.")
    state = Attribute("The connection's state (``core.states``): CLOSED ends delivery.")

    def send_publish(message, qos, retain, packet_id, subscription_ids, dup=False):
        """Hand one message to the client; False if it could not be sent at all (too
        large for the client), which completes its flow as if delivered."""

    def send(packet):
        """Send a control packet (a PUBREL on resend); virtual links ignore it."""


class IRouter(Interface):
    """Where published messages go: the subscription index and the dispatch.

    The broker's publish path is authorize, retain, then ``dispatch``.  A cluster
    router wraps the local one: it forwards what ``dispatch`` gets with the local
    origin to its peers, and dispatches what a peer sent with that peer's name as
    origin, which it never forwards again.
    """

    def add(clientId, topicFilter, options):
        """Index ``clientId``'s subscription (a ``$share/...`` one joins its group),
        replacing its earlier options for the same filter.  (A router may also have
        ``add_many(clientId, items)``, the same for one SUBSCRIBE's ``(filter,
        options)`` pairs in order, a list or a dict's ``items()``, iterated once; the
        broker calls it when present, ``add`` each otherwise.)"""

    def remove(clientId, topicFilter):
        """Drop ``clientId``'s subscription to ``topicFilter`` from the index."""

    def count():
        """How many subscriptions are indexed (share group members included)."""

    def match(topic, sender=None):
        """The plain subscriptions ``topic`` reaches, merged per client: a list of
        ``(clientId, qos, retainAsPublished, subscriptionIds)``, without ``sender``'s
        no-local subscriptions [MQTT-3.3.5-1]."""

    def dispatch(message, origin):
        """Deliver ``message`` to every matching session (one member of each share
        group); ``origin`` is ``""`` for a local publish, else the peer node's name.
        Returns how many sessions it reached."""


class ISessionState(Interface):
    """The durable part of a session, as stores hold it."""

    clientId = Attribute("The client identifier.")
    subscriptions = Attribute("Mapping of topic filter to SubscriptionOptions.")
    will = Attribute("The will Message or None.")
    willDelay = Attribute("Seconds to wait before publishing the will (v5), 0 for none.")
    expiryInterval = Attribute("Seconds the session outlives its connection; None: forever.")
    disconnectedAt = Attribute("Clock reading when it went offline, or None while online.")
    outbound = Attribute(
        "Sequence of Outbound records (message, qos, retain, packet_id or None when queued, "
        "state, seq) held for the client, in delivery order."
    )
    inboundQoS2 = Attribute("Set of packet ids of QoS 2 PUBLISHes received but not released.")
    owner = Attribute(
        "The user name the session belongs to (records.owner_of), or None: nobody in "
        "particular (created without an authenticator, or stored before owners were).")


# --- Stores --------------------------------------------------------------------------------


class ISessionStore(Interface):
    """Sessions, their subscriptions and their queued and in-flight messages."""

    def loadSession(clientId):
        """Deferred firing with an :class:`ISessionState` or None."""

    def saveSession(state):
        """Store the whole session (replaces what was stored)."""

    def deleteSession(clientId):
        """Forget the session and everything queued for it."""

    def listSessions():
        """Deferred firing with the client ids of every stored session."""

    def addSubscription(clientId, topicFilter, options):
        """Record one subscription."""

    def removeSubscription(clientId, topicFilter):
        """Forget one subscription."""

    def storeOutbound(clientId, outbound):
        """Record (or update, by its ``seq``) an Outbound held for the client."""

    def removeOutbound(clientId, seq):
        """Forget an acknowledged outbound message."""

    def addInboundQoS2(clientId, packetId):
        """Record a received QoS 2 packet id awaiting PUBREL."""

    def removeInboundQoS2(clientId, packetId):
        """Forget a released QoS 2 packet id."""


class ISessionInfoStore(Interface):
    """A session store that can save a session's own fields alone.

    A store that persists messages gets every subscription, queued or in-flight
    message and QoS 2 id as it changes, one write each; at CONNECT and DISCONNECT
    only the session's own fields have changed, and rewriting the whole session
    (10,000 queued messages: 10,000 records encoded and rewritten) made a CONNACK wait
    for it.  The broker saves whole whenever a store write has failed since the
    session's last whole save, so that this never has to repair anything.
    """

    def saveSessionInfo(state):
        """Store the session's expiry, will, will delay, disconnection time and owner,
        keeping what is stored of its subscriptions, messages and QoS 2 ids; a session
        the store does not hold is saved whole."""


class IBatchedOutboundStore(Interface):
    """A store that writes a persistent session's outbound records in batches (optional;
    the Redis store: one script call per connection and reactor turn).

    The broker calls these instead of ``storeOutbound``/``removeOutbound``.  Each returns
    a *shared write*: the part of a Deferred's interface the broker uses (``addBoth``,
    ``addCallbacks``, ``addCallback``, ``addErrback``, ``called``, ``result``), the same
    object for every write of a batch, each waiter getting the batch's own result
    (``mqtt_twisted.writes.SharedWrite``) or a Deferred.  No Deferred per message: a
    batch costs one.  A store whose ``loadSession`` knows more sequence numbers than its
    records show (it keeps ``sent`` marks) gives the state a ``nextSeq``: the broker
    numbers new messages from there.
    """

    def putOutbound(clientId, outbound):
        """As ``storeOutbound``: insert or update the record with ``outbound.seq``."""

    def sentOutbound(clientId, outbound):
        """A record stored queued (``putOutbound`` without packet id) went in flight.
        With the packet id ``records.packet_id_for(outbound.seq)`` the store may keep
        only that it was sent; with another, it stores the record as ``putOutbound``."""

    def dropOutbound(clientId, seq):
        """As ``removeOutbound``: forget the record ``seq``."""


class IRetainedStore(Interface):
    """Retained messages, matched by filter through an index, not a scan."""

    def setRetained(message):
        """Keep ``message`` as the retained one of its topic (an empty payload deletes)."""

    def getRetained(topic):
        """Deferred firing with the retained Message of ``topic`` or None."""

    def deleteRetained(topic):
        """Forget the retained message of ``topic``."""

    def matchRetained(topicFilter):
        """Deferred firing with a list of the retained Messages matching ``topicFilter``."""

    def countRetained():
        """Deferred firing with the number of retained messages."""


class ILock(Interface):
    """A held lock; release it exactly once."""

    def release():
        """Deferred firing once released."""


class ILockProvider(Interface):
    """Per-client locks, so that two connections never take one session over at once."""

    def acquireLock(clientId, timeout):
        """Deferred firing with an :class:`ILock`, or failing with StorageError on timeout."""


class IStore(ISessionStore, IRetainedStore, ILockProvider):
    """Everything the broker keeps: one object, one backend."""

    name = Attribute("The backend's name, for logs.")
    persistsMessages = Attribute(
        "False for a store in the broker's own process (memory): the broker then skips "
        "per-message writes, since its live sessions are the copy of record."
    )

    def start():
        """Connect; Deferred fires once the store can answer."""

    def stop():
        """Flush and disconnect; Deferred fires when done."""


# --- Authentication and authorization --------------------------------------------------


class ICredentials(Interface):
    """What a client presented when it connected."""

    clientId = Attribute("The client identifier.")
    username = Attribute("The user name, or None.")
    password = Attribute("The password bytes (or token), or None.")
    certificateIdentity = Attribute("Identity from the TLS client certificate, or None.")
    peer = Attribute("The remote address as text.")
    adapter = Attribute("Name of the adapter the client came through.")


class IAuthenticator(Interface):
    """Decides whether a client may connect."""

    def authenticate(credentials):
        """Deferred firing with an identity (a str, e.g. the user name) or failing with
        AuthenticationError / AuthorizationError."""


class IAuthExchange(Interface):
    """One client's run of an MQTT 5 enhanced authentication method [MQTT-4.12]."""

    def step(data):
        """Take the client's authentication data (bytes or None).

        Return (or fire a Deferred with) an object with ``done`` (bool), ``data``
        (bytes or None, sent back to the client) and, once done, ``identity``.
        Raise AuthenticationError or AuthorizationError to refuse.
        """


class IEnhancedAuthenticator(IAuthenticator):
    """An authenticator that also speaks MQTT 5 AUTH exchanges (SCRAM, Kerberos, ...)."""

    methods = Attribute("Authentication method names it handles, e.g. ('SCRAM-SHA-256',).")

    def startExchange(method, credentials):
        """Return a new :class:`IAuthExchange` for ``method`` (CONNECT or re-authentication)."""


class IClientAuthMethod(Interface):
    """The client side of an MQTT 5 enhanced authentication method [MQTT-4.12], for
    ``mqtt_twisted.client`` (``connect_client(..., auth=...)``).

    One object serves one client: :meth:`start` begins a fresh exchange, for the
    CONNECT and for every re-authentication.  All three calls are synchronous (the
    client core is sans-IO); raising in any of them abandons the exchange and closes
    the connection.
    """

    method = Attribute("The AUTHENTICATION_METHOD name, e.g. 'SCRAM-SHA-256'.")

    def start():
        """Begin an exchange: the AUTHENTICATION_DATA for CONNECT or AUTH 0x19 (bytes
        or None)."""

    def challenge(data):
        """The server's AUTH 0x18 data (bytes or None) in; our answer's data out."""

    def finish(data):
        """The server's final data (CONNACK 0 or AUTH 0x00; bytes or None): raise if it
        does not prove the server (SCRAM's server signature)."""


class IAuthorizer(Interface):
    """Decides what an authenticated client may do.

    An authorizer may also have a true ``stableAnswers`` attribute: its answers depend
    on (identity, client id, topic) alone until it is reloaded, so the broker keeps
    them per connection instead of asking for every PUBLISH (the ACL file does this).
    """

    def mayPublish(identity, clientId, topic):
        """True or False (or a Deferred of it): may this client publish to ``topic``?"""

    def maySubscribe(identity, clientId, topicFilter):
        """True or False (or a Deferred of it): may this client subscribe to ``topicFilter``?"""


class IReadAuthorizer(Interface):
    """An authorizer whose rules can refuse some topics inside a filter it lets a client
    subscribe to (an ACL's ``deny a/secret`` under a granted ``a/#``).  The broker then
    checks each delivery of that session's messages, as Mosquitto does, with the
    answers cached per session: both methods are synchronous and must be cheap."""

    def filterNeedsReadCheck(identity, clientId, topicFilter):
        """True when some topic ``topicFilter`` matches may not be read by this client,
        so that its deliveries must be checked one topic at a time."""

    def mayRead(identity, clientId, topic):
        """True or False (never a Deferred): may this client receive a message published
        to ``topic``?"""
