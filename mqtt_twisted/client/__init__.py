"""A Twisted MQTT 3.1.1/5.0 client on the project's sans-IO codec.

``core`` is the sans-IO state machine (bytes in, events out; commands in, bytes
out); ``protocol`` the thin Twisted shell with a Deferred API; ``websocket`` the
``ws://``/``wss://`` transport; ``auth`` enhanced authentication methods.  See
``docs/client.md``.
"""

from mqtt_twisted.client._stream import MessageStream
from mqtt_twisted.client.auth import ScramClientAuth
from mqtt_twisted.client.core import (
    AuthMethodError,
    ClientCore,
    ConnectError,
    Message,
    PublishError,
    SessionLost,
)
from mqtt_twisted.client.protocol import ClientSession, MQTTClientProtocol, connect_client
from mqtt_twisted.client.websocket import WebSocketError
from mqtt_twisted.codec import Subscription, Will

__all__ = [
    "AuthMethodError", "ClientCore", "ClientSession", "ConnectError", "MQTTClientProtocol",
    "Message", "MessageStream", "PublishError", "ScramClientAuth", "SessionLost",
    "Subscription", "WebSocketError", "Will", "connect_client",
]
