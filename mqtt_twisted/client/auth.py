"""Client sides of MQTT 5 enhanced authentication methods (``connect_client(auth=...)``).

:class:`ScramClientAuth` is SCRAM-SHA-256 (RFC 7677), the method our broker serves
with ``--auth scram:FILE`` (``mqtt_twisted.auth.scram``).  The arithmetic is
``scramp``'s ``ScramClient``, the same library the broker's side uses, so the two
ends share one implementation of RFC 5802 instead of two hand-written ones.  The
exchange: CONNECT carries client-first, AUTH 0x18 brings server-first and takes
client-final, CONNACK (or AUTH 0x00 on re-authentication) brings server-final,
whose signature proves the server knew our keys.
"""

from __future__ import annotations

from scramp import ScramClient, ScramException
from zope.interface import implementer

from mqtt_twisted.interfaces import IClientAuthMethod

__all__ = ["SCRAM_SHA_256", "ScramClientAuth"]

SCRAM_SHA_256 = "SCRAM-SHA-256"


@implementer(IClientAuthMethod)
class ScramClientAuth:
    """SCRAM-SHA-256 for one user; every :meth:`start` is a fresh exchange (new nonce)."""

    method = SCRAM_SHA_256

    def __init__(self, username: str, password: str | bytes) -> None:
        if isinstance(password, bytes):
            password = password.decode("utf-8")
        self.username = username
        self._password = password
        self._client: ScramClient | None = None
        self._stage = "idle"

    def start(self) -> bytes:
        self._client = ScramClient([self.method], self.username, self._password)
        self._stage = "first"
        return self._client.get_client_first().encode()

    def challenge(self, data: bytes | None) -> bytes:
        if self._client is None or self._stage != "first":
            raise ValueError("SCRAM: a challenge outside an exchange")
        try:
            self._client.set_server_first((data or b"").decode("utf-8"))
            final = self._client.get_client_final()
        except (ScramException, UnicodeDecodeError) as e:
            raise ValueError(f"SCRAM: bad server-first message: {e}") from None
        self._stage = "final"
        return final.encode()

    def finish(self, data: bytes | None) -> None:
        client, stage = self._client, self._stage
        self._client, self._stage = None, "idle"
        if client is None or stage != "final":
            raise ValueError("SCRAM: the server ended the exchange before its challenge")
        try:
            client.set_server_final((data or b"").decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as e:
            raise ValueError(f"SCRAM: the server did not prove itself: {e}") from None
