"""``async for message in client.messages("a/#")``: received messages as an async iterator.

A :class:`MessageStream` is a message handler (the protocol calls it like any
``handler=``) that buffers what its reader has not taken yet, and an async iterator
whose ``__anext__`` awaits a Deferred, so it runs in coroutines driven by
``Deferred.fromCoroutine`` / ``ensureDeferred`` (``twisted.internet.task.react``
takes one).  The buffer is bounded by back-pressure, not by dropping: when
``buffer`` messages wait, the protocol stops reading its socket until the reader
has taken half of them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred

from mqtt_twisted.client.events import Message

__all__ = ["MessageStream"]


class MessageStream:
    """The messages matching one topic filter, in arrival order, until the connection
    closes (or :meth:`close`)."""

    def __init__(self, protocol: Any, topic_filter: str, buffer: int = 1000) -> None:
        if buffer < 1:
            raise ValueError(f"buffer {buffer}: at least 1")
        self.topic_filter = topic_filter
        self._protocol = protocol
        self._limit = buffer
        self._buffer: deque[Message] = deque()
        self._waiter: Deferred[None] | None = None
        self._ended = False

    # --- the protocol's side ---

    def __call__(self, message: Message) -> None:
        if self._ended:
            return
        self._buffer.append(message)
        if len(self._buffer) >= self._limit:
            self._protocol._reading(self, False)
        self._wake()

    def end(self) -> None:
        """No more messages: the reader gets what is buffered, then the loop ends."""
        if not self._ended:
            self._ended = True
            self._protocol._forget_stream(self)
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    # --- the reader's side ---

    @property
    def pending(self) -> int:
        """Messages received and not yet taken."""
        return len(self._buffer)

    def close(self) -> None:
        """Stop receiving: messages not yet taken are dropped, the loop ends."""
        self._buffer.clear()
        self.end()

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("a MessageStream has one reader at a time")
            self._waiter = Deferred()
            await self._waiter
        message = self._buffer.popleft()
        if len(self._buffer) <= self._limit // 2:
            self._protocol._reading(self, True)
        return message

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
