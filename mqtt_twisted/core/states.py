"""The states of a client connection, shared by the connection and its packet handlers."""

from __future__ import annotations

#: Waiting for CONNECT; CONNECT being answered; connected; closed (or closing).
AWAIT_CONNECT, CONNECTING, CONNECTED, CLOSED = range(4)

#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0
