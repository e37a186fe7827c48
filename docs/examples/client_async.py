"""docs/client.md's async example: a coroutine that subscribes over WebSocket, logs in
with SCRAM-SHA-256 and reads messages with ``async for`` (tests/test_e2e_client_features.py
runs it against our broker).

    python docs/examples/client_async.py ws://127.0.0.1:8080/mqtt alice
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from mqtt_twisted.client import ScramClientAuth, connect_client


async def watch(reactor: Any, url: str, user: str, password: str, count: int) -> list[str]:
    """Print (and return) the first ``count`` messages under ``sensors/``."""
    client = await connect_client(reactor, url, "watcher", version=5,
                                  auth=ScramClientAuth(user, password))
    seen = []
    async with client.messages("sensors/#") as messages:  # before SUBSCRIBE: no race
        await client.subscribe("sensors/#", qos=1)
        async for message in messages:
            line = f"{message.topic} {message.payload.decode(errors='replace')}"
            print(line)
            seen.append(line)
            if len(seen) == count:
                break
    await client.disconnect()
    return seen


def main(reactor: Any, url: str, user: str) -> Deferred[Any]:
    password = input("password: ")
    return Deferred.fromCoroutine(watch(reactor, url, user, password, count=10))


if __name__ == "__main__":
    react(main, sys.argv[1:3])
