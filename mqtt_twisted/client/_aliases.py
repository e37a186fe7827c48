"""Outgoing topic aliases (MQTT 5 §3.3.2.3.4): which alias a PUBLISH's topic gets.

The table is least recently used, not first-N.  A first-N table costs nothing to
keep but pins its aliases to the first topics ever published: a long-lived client
whose topics drift (a device reporting under a new session id, a gateway whose
sensors come and go) would carry full topics forever after its first minute.  LRU
follows the working set; its cost is the cycling case (more live topics than
aliases, used round-robin), where each PUBLISH carries its full topic *and* a
3-byte alias property.  That is bounded and small; ``topic_aliases=False`` turns the
table off for such a client.  The broker's outgoing table is LRU too
(``core/connection.py``).
"""

from __future__ import annotations

from collections import OrderedDict


class TopicAliases:
    """One connection's topic -> alias table, within the server's Topic Alias Maximum.

    :meth:`assign` returns ``(topic on the wire, alias or None)``: the full topic with
    a new alias the first time (or after its alias went to another topic), an empty
    topic with the alias after that.  Never an alias above ``maximum`` [MQTT-3.3.2-9];
    a new connection starts a new table [MQTT-3.3.2-7].
    """

    __slots__ = ("maximum", "_table")

    def __init__(self, maximum: int = 0) -> None:
        self.maximum = maximum
        self._table: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def assign(self, topic: str) -> tuple[str, int | None]:
        if not self.maximum:
            return topic, None
        table = self._table
        alias = table.get(topic)
        if alias is not None:
            table.move_to_end(topic)
            return "", alias
        if len(table) < self.maximum:
            alias = len(table) + 1
        else:
            _, alias = table.popitem(last=False)  # the least recently used topic's
        table[topic] = alias
        return topic, alias
