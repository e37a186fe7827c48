"""The cyclic garbage collector, set for a broker whose heap grows with its sessions.

CPython's full collection walks every tracked object, and by default it runs whenever
a quarter more objects have reached the oldest generation since the last one.  A broker
that accepts a thousand short connections a second promotes their objects (protocol,
transport, connection, Deferreds: alive for a few milliseconds, which is many young
collections) at that rate, so the full collections came every second or two; with the
100,000-stream live fuzz's 15,000 sessions left behind each took 200-300 ms of the
single reactor thread (77 of them, 15 s of a 97 s run), and the bystander's p99 was
116 ms (``tests/test_live_fuzz.py``, docs/limits.md has the figures).

So, once the broker listens and the reactor runs (``twistd mqttbroker`` only; an
embedding application owns its process's collector):

- what start-up built (modules, Twisted, plugins: about 65,000 objects that live as
  long as the process) is frozen (``gc.freeze``), never walked again;
- the young generation is collected every :data:`THRESHOLDS` ``[0]`` net allocations
  instead of 700, so that a connection's objects die young rather than reaching the
  oldest generation, and a full collection needs :data:`THRESHOLDS` ``[2]`` collections
  of the middle generation instead of 10.

Garbage made of cycles is still collected: almost all of it young, the rest when a full
collection comes, less often.
"""

from __future__ import annotations

import gc

#: ``gc.set_threshold`` values (CPython's default: 700, 10, 10).
THRESHOLDS = (700, 10, 100)


def settle() -> None:
    """Freeze what start-up built and set :data:`THRESHOLDS` (a broker that now
    listens; called once, by ``twistd mqttbroker``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
