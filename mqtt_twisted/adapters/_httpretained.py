"""``GET /retained``'s page, chosen and encoded a slice per reactor turn.

A page is small (100 messages, at most 1 MiB of payload: ``_httpapi.retained_page``),
but choosing it means looking at every match, and a filter like ``#`` over 20,000
retained messages of 10 KB cost 7 ms to match, 5 ms to pick the page and 9 ms to
encode it in one turn, more on a loaded machine: a client paging through them (one
request after another) held a bystander's round trip p50 at 32 ms and p99 at 132 ms
(tests/test_http_retained_live.py).  Here the matches are taken :data:`MATCH_SLICE`
at a time and the page's events encoded :data:`ENCODE_SLICE` bytes at a time, each
slice in its own reactor turn; the answer is the same bytes as before.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from mqtt_twisted.adapters import _httpapi as api

#: Matches looked at per reactor turn (about 1 ms on the machines we measure on).
MATCH_SLICE = 2000
#: Bytes of events encoded per reactor turn.
ENCODE_SLICE = 128 << 10


def _topic(message: Any) -> str:
    return message.topic  # type: ignore[no-any-return]


@inlineCallbacks
def paced_page(reactor: Any, messages: Iterable[Any], limit: int,
               after: str | None) -> Any:
    """Deferred ``(page, more)`` as ``api.retained_page`` answers, the matches taken
    :data:`MATCH_SLICE` per reactor turn."""
    found: Iterator[Any] = iter(messages)
    best: list[Any] = []
    total = 0
    while True:
        taken = list(islice(found, MATCH_SLICE))
        # (None: the store looked at topics that do not match; it counts as work.)
        chunk = [m for m in taken if m is not None and (after is None or m.topic > after)]
        if chunk:
            total += len(chunk)
            best = heapq.nsmallest(limit, best + chunk, key=_topic)
        if len(taken) < MATCH_SLICE:
            break
        yield deferLater(reactor, 0, lambda: None)  # the others' turn
    page, more = api.retained_page(best, limit, None)
    return page, more or total > len(page)


@inlineCallbacks
def paced_answer(reactor: Any, page: list[Any], more: bool, now: float) -> Any:
    """Deferred bytes of the JSON answer (``{"messages": [...], "next": topic}``, as
    ``api.dumps`` writes it), encoded :data:`ENCODE_SLICE` bytes per reactor turn."""
    events: list[bytes] = []
    size = 0
    for n, message in enumerate(page, 1):
        encoded = api.dumps(api.event(message, message.qos, True, now))
        events.append(encoded)
        size += len(encoded)
        if size >= ENCODE_SLICE and n < len(page):
            size = 0
            yield deferLater(reactor, 0, lambda: None)
    body = b'{"messages":[' + b",".join(events) + b"]"
    if more:
        body += b',"next":' + api.dumps(page[-1].topic)
    return body + b"}"

