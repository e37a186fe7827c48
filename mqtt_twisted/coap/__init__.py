"""The sans-IO CoAP protocol (RFC 7252, 7641, 7959, 8323): bytes in, messages out.

Imports nothing of ``twisted.internet``; time comes from an injected clock.  The
Twisted shells are :mod:`mqtt_twisted.adapters.coap`; docs/coap.md describes the
mapping onto the broker.
"""

from mqtt_twisted.coap.message import (
    ACK,
    CON,
    NON,
    RST,
    CoapFormatError,
    CoapMessage,
    decode,
    encode,
)

__all__ = ["ACK", "CON", "NON", "RST", "CoapFormatError", "CoapMessage", "decode", "encode"]
