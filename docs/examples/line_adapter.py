"""A line-protocol adapter that talks to the broker only through the gateway.

``SUB filter`` opens the connection's session (at the first SUB) and subscribes;
``PUB topic payload`` publishes at QoS 0.  Lines out: ``SUBACK n`` (the granted QoS,
or a reason code >= 128), ``OK n`` (the sessions reached), ``MSG topic payload`` (a
delivery) and ``ERROR text``.  No credentials: the session is anonymous.

The example of docs/plugins.md ("The gateway seam"); tests/test_doc_examples.py runs
it against the fake service and against a real gateway.
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from mqtt_twisted.codec.topics import validate_topic_name
from mqtt_twisted.interfaces import IMessageSink, IStreamAdapter
from mqtt_twisted.message import Message


@implementer(IMessageSink)
class LineProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    opened = False

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.clientId = f"line-{peer.host}:{peer.port}"
        self.queue = succeed(None)  # one command at a time, in the order they came

    def lineReceived(self, line):
        verb, _, rest = line.decode("utf-8", "replace").partition(" ")
        self.queue.addCallback(lambda _: self.command(verb, rest))
        self.queue.addErrback(lambda f: self.sendLine(b"ERROR " + f.getErrorMessage().encode()))

    def command(self, verb, rest):
        gateway = self.factory.gateway
        if verb == "SUB":
            d = succeed(None) if self.opened else gateway.openSession(self.clientId, self)
            return d.addCallback(self.subscribe, rest)
        if verb == "PUB":
            topic, _, payload = rest.partition(" ")
            validate_topic_name(topic)  # the gateway routes any topic it is given
            d = gateway.authorize("publish", None, self.clientId, topic)
            return d.addCallback(self.publish, Message(topic, payload.encode()))
        raise ValueError(f"unknown command {verb!r}")

    def subscribe(self, session, topicFilter):
        self.opened = True
        d = self.factory.gateway.subscribe(self.clientId, topicFilter, 0)
        return d.addCallback(lambda granted: self.sendLine(b"SUBACK %d" % granted))

    def publish(self, allowed, message):
        if not allowed:
            raise PermissionError(f"not authorized to publish to {message.topic!r}")
        d = self.factory.gateway.publish(message, self.clientId)
        return d.addCallback(lambda reached: self.sendLine(b"OK %d" % reached))

    def deliver(self, message, qos):  # IMessageSink: one routed message
        self.sendLine(b"MSG %s %s" % (message.topic.encode(), message.payload))

    def sessionClosed(self, reason):  # the broker ended the session (takeover, removal)
        self.opened = False
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.queue.addCallback(lambda _: self.close())  # once the commands under way end

    def close(self):
        if self.opened:
            self.opened = False
            self.factory.gateway.closeSession(self.clientId)


class LineFactory(Factory):
    protocol = LineProtocol

    def __init__(self, gateway):
        self.gateway = gateway


@implementer(IStreamAdapter)
class LineAdapter:
    name = "line-example"
    description = "SUB/PUB lines over TCP (the gateway example of docs/plugins.md)"
    defaultEndpoint = "tcp:7008"
    options = {}

    def buildFactory(self, reactor, broker, settings):
        return LineFactory(broker)  # broker: the gateway, an IBrokerService

    def buildListener(self, reactor, broker, endpointDescription, settings):
        endpoint = serverFromString(reactor, endpointDescription)
        return StreamServerEndpointService(endpoint, self.buildFactory(reactor, broker, settings))


lineAdapter = LineAdapter()
