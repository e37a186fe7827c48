"""A router that wraps the broker's local router, as a cluster router would.

Every message published on this node (origin ``LOCAL``) is handed to ``forward`` (a
link to peer nodes, a rule hook) before the local router delivers it; a message that
came from a peer (origin: the peer's name) is delivered here and never forwarded
again.  The node's own ``$SYS`` messages stay on the node.

The example of docs/plugins.md ("The router seam"); tests/test_doc_examples.py runs
it on a broker from ``mqtt_twisted.testing.make_broker``.
"""

from zope.interface import implementer

from mqtt_twisted.core.router import LOCAL
from mqtt_twisted.interfaces import IRouter


@implementer(IRouter)
class ForwardingRouter:
    def __init__(self, local, forward=None):
        self.local = local  # the broker's LocalRouter: the index stays there
        self.forward = forward  # forward(message), or None to count only
        self.forwarded = self.from_peers = 0

    def add(self, clientId, topicFilter, options):
        self.local.add(clientId, topicFilter, options)

    def remove(self, clientId, topicFilter):
        self.local.remove(clientId, topicFilter)

    def count(self):
        return self.local.count()

    def match(self, topic, sender=None):
        return self.local.match(topic, sender)

    def dispatch(self, message, origin=LOCAL):
        if origin != LOCAL:
            self.from_peers += 1  # a peer's message: local delivery only
        elif not message.topic.startswith("$SYS"):
            self.forwarded += 1
            if self.forward is not None:
                self.forward(message)
        return self.local.dispatch(message, origin)

    # Not in IRouter, but Broker uses both today: the local router keeps them.
    def hand_over(self, out, leaving):
        self.local.hand_over(out, leaving)

    @property
    def shared_strategy(self):
        return self.local.shared_strategy

    @shared_strategy.setter
    def shared_strategy(self, strategy):
        self.local.shared_strategy = strategy


def install(broker, forward=None):
    """Wrap ``broker.router`` (a ``core.broker.Broker``) before the broker starts."""
    broker.router = ForwardingRouter(broker.router, forward)
    return broker.router
