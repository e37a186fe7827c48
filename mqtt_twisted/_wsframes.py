"""MQTT over WebSocket carries binary frames only [MQTT-6.0.0-1]: the refusal of a text
frame, shared by the server adapter (``adapters/websocket.py``) and the client
(``client/websocket.py``), both Autobahn protocols."""

from __future__ import annotations

from typing import Any

#: WebSocket close code for a text frame: "unsupported data" (RFC 6455 §7.4.1).
CLOSE_UNSUPPORTED_DATA = 1003


class BinaryFramesOnly:
    """Mixed in before an Autobahn ``WebSocketProtocol``: a text message closes the
    connection with 1003 and none of it is handled (the class's ``onMessageFrameData``
    checks :attr:`_refused` before passing bytes on to MQTT)."""

    #: A text message came: everything after it is ignored.
    _refused = False

    def onMessageBegin(self, isBinary: bool) -> None:
        if not isBinary:
            self._refused = True
            if self.state == self.STATE_OPEN:  # type: ignore[attr-defined]
                # sendClose() allows only 1000 and 3000-4999; 1003 is the code for this.
                self.sendCloseFrame(CLOSE_UNSUPPORTED_DATA,  # type: ignore[attr-defined]
                                    b"MQTT over WebSocket takes binary frames only")
            return
        super().onMessageBegin(isBinary)  # type: ignore[misc]

    def onMessageFrameBegin(self, length: int) -> None:
        if not self._refused:
            super().onMessageFrameBegin(length)  # type: ignore[misc]  # size limits

    def onMessageFrameEnd(self) -> None:
        if not self._refused:
            super().onMessageFrameEnd()  # type: ignore[misc]

    def onMessageEnd(self) -> None:
        if not self._refused:
            super().onMessageEnd()  # type: ignore[misc]

    def onMessage(self, payload: Any, isBinary: bool) -> None:
        pass  # the payload went to MQTT frame by frame
