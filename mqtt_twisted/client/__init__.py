"""A Twisted MQTT 3.1.1/5.0 client on the project's sans-IO codec.

``core`` is the sans-IO state machine (bytes in, events out; commands in, bytes
out); ``protocol`` the thin Twisted shell with a Deferred API.  See
``docs/client.md``.
"""

from mqtt_twisted.client.core import (
    ClientCore,
    ConnectError,
    Message,
    PublishError,
    SessionLost,
)
from mqtt_twisted.client.protocol import ClientSession, MQTTClientProtocol, connect_client
from mqtt_twisted.codec import Subscription, Will

__all__ = [
    "ClientCore", "ClientSession", "ConnectError", "MQTTClientProtocol", "Message",
    "PublishError", "SessionLost", "Subscription", "Will", "connect_client",
]
