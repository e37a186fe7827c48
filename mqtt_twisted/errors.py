"""The exception hierarchy.

Every error that can end a connection carries the MQTT 5.0 reason code it maps
to, so the code that catches it can answer the peer (CONNACK, DISCONNECT,
PUBACK) without a lookup table of its own.  For MQTT 3.1.1 peers, which have no
reason codes on most packets, ``v3_return_code`` gives the CONNACK byte where
one exists.
"""

from __future__ import annotations

from mqtt_twisted.constants import ConnectReturnCode, ReasonCode


class MQTTError(Exception):
    """Base of every error this project raises on purpose."""

    reason_code: int = ReasonCode.UNSPECIFIED_ERROR
    v3_return_code: int | None = None

    def __init__(self, message: str = "", reason_code: int | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or "")
        if reason_code is not None:
            self.reason_code = reason_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProtocolError(MQTTError):
    """The peer broke a rule of the protocol."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class MalformedPacket(ProtocolError):
    """The bytes cannot be parsed as the packet they claim to be."""

    reason_code = ReasonCode.MALFORMED_PACKET


class PacketTooLarge(ProtocolError):
    """A packet is larger than the receiver's maximum packet size."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(ProtocolError):
    """CONNECT names a protocol level (or name) this broker does not speak."""

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    v3_return_code = ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION

    def __init__(self, message: str = "", level: int | None = None) -> None:
        super().__init__(message)
        self.level = level


class InvalidTopicName(ProtocolError):
    """A PUBLISH topic is empty, holds a wildcard or is otherwise invalid."""

    reason_code = ReasonCode.TOPIC_NAME_INVALID


class InvalidTopicFilter(ProtocolError):
    """A subscription filter breaks the wildcard rules."""

    reason_code = ReasonCode.TOPIC_FILTER_INVALID


class QuotaExceeded(MQTTError):
    """A limit of the broker's (retained messages, subscriptions) is reached."""

    reason_code = ReasonCode.QUOTA_EXCEEDED


class ConnectError(MQTTError):
    """A CONNECT is refused; the reason code goes into the CONNACK.

    ``properties`` (v5) are added to the CONNACK: an authenticator redirects a
    client with ``ConnectError(reason_code=0x9C, properties={SERVER_REFERENCE: "host"})``.
    """

    reason_code = ReasonCode.UNSPECIFIED_ERROR
    v3_return_code = ConnectReturnCode.SERVER_UNAVAILABLE

    def __init__(self, message: str = "", reason_code: int | None = None,
                 properties: dict | None = None) -> None:
        super().__init__(message, reason_code)
        self.properties = properties or {}


class ClientIdentifierNotValid(ConnectError):
    """The client identifier is refused."""

    reason_code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    v3_return_code = ConnectReturnCode.IDENTIFIER_REJECTED


class AuthenticationError(ConnectError):
    """The credentials are wrong, missing or expired."""

    reason_code = ReasonCode.BAD_USER_NAME_OR_PASSWORD
    v3_return_code = ConnectReturnCode.BAD_USERNAME_OR_PASSWORD


class AuthorizationError(MQTTError):
    """The client may not do this (connect, publish to or subscribe to a topic)."""

    reason_code = ReasonCode.NOT_AUTHORIZED
    v3_return_code = ConnectReturnCode.NOT_AUTHORIZED


class StorageError(MQTTError):
    """A store failed or is unreachable; the broker answers 'server unavailable'."""

    reason_code = ReasonCode.SERVER_UNAVAILABLE
    v3_return_code = ConnectReturnCode.SERVER_UNAVAILABLE


class StoreUnavailable(StorageError):
    """The store's backend is unreachable, and the store has logged that outage.

    The broker answers the client as for any StorageError but logs nothing per call:
    one line for the outage and one for its end say it all (see
    :class:`mqtt_twisted.store.outage.OutageLog`).
    """


class ValidationError(MQTTError, ValueError):
    """A value given to the API (not read off the wire) is out of range."""

    reason_code = ReasonCode.UNSPECIFIED_ERROR


class StartError(Exception):
    """The broker could not start: names the listener or store and why, in one line
    an operator can act on (no traceback)."""

    def __init__(self, what: str, reason: BaseException | str) -> None:
        if isinstance(reason, OSError) and reason.strerror:
            # "[Errno 2] No such file or directory", without the lock file's name a UNIX
            # listener puts in it.
            reason = f"[Errno {reason.errno}] {reason.strerror}"
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = str(reason)
