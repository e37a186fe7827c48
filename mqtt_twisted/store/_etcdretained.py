"""The etcd store's retained messages: one key per topic, and an index by depth.

``P/retained/<topic>`` holds the message; etcd keeps keys sorted, so a filter
reads the prefix range of its literal levels (``a/b/+`` reads ``a/b/``; ``a/b/#``
reads ``a/b/`` and the key ``a/b``, which it matches too [MQTT-4.7.1-2]) and
keeps what matches.  A filter starting with ``+`` has no literal prefix; without
``#`` it matches only topics of its own number of levels, so it reads the keys of
``P/rdepth/<levels>/`` (keys only, no values) and then the messages of the
matching topics, ``max_txn_ops`` reads per transaction.  Only a filter starting
with ``#``, or with ``+`` and ending in ``#``, reads every retained message.

Writes share one lane (batched across topics, in the order they were made);
reads wait for the writes queued before them, then run side by side.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults

from mqtt_twisted.codec.topics import topic_matches
from mqtt_twisted.message import Message
from mqtt_twisted.store import _etcdhttp as op
from mqtt_twisted.store._etcdlanes import Lanes
from mqtt_twisted.store._etcdrecords import Keys
from mqtt_twisted.store._redisformat import decode_message, encode_message

_LANE = ("r", "")


class EtcdRetained:
    """What EtcdStore's retained calls do."""

    def __init__(self, keys: Keys, lanes: Lanes, http: op.EtcdHTTP, max_ops: int) -> None:
        self.keys = keys
        self.lanes = lanes
        self.http = http
        self.max_ops = max_ops

    def set(self, message: Message) -> Deferred[None]:
        topic = message.topic.encode("utf-8")
        key, depth = self.keys.retained + topic, self.keys.depth_key(topic)
        blob = encode_message(message)
        return self.lanes.write(_LANE, [(key, op.put(key, blob), len(key) + len(blob)),
                                        (depth, op.put(depth, b""), len(depth))])

    def delete(self, topic: str) -> Deferred[None]:
        t = topic.encode("utf-8")
        key, depth = self.keys.retained + t, self.keys.depth_key(t)
        return self.lanes.write(_LANE, [(key, op.delete(key), len(key)),
                                        (depth, op.delete(depth), len(depth))])

    def _read(self, path: str, body: dict[str, Any]) -> Deferred[Any]:
        d = self.lanes.quiet(_LANE[0])
        d.addCallback(lambda _: self.http.call(path, body, write=False))
        return d

    def get(self, topic: str) -> Deferred[Message | None]:
        key = self.keys.retained + topic.encode("utf-8")
        d = self._read("kv/range", op.get(key)["requestRange"])
        d.addCallback(lambda reply: (decode_message(op.kvs(reply)[0][1])
                                     if reply.get("kvs") else None))
        return d

    def count(self) -> Deferred[int]:
        body = dict(op.get_prefix(self.keys.retained)["requestRange"], count_only=True)
        d = self._read("kv/range", body)
        d.addCallback(lambda reply: int(reply.get("count", 0)))
        return d

    def match(self, topic_filter: str) -> Deferred[list[Message]]:
        levels = topic_filter.split("/")
        wild = next((i for i, level in enumerate(levels) if level in ("+", "#")), None)
        base = self.keys.retained
        if wild is None:
            ranges = [op.get(base + topic_filter.encode("utf-8"))]
        elif wild == 0 and "#" not in levels:
            return self._match_by_depth(topic_filter, len(levels))
        else:
            literal = "/".join(levels[:wild]).encode("utf-8")
            ranges = [op.get_prefix(base + literal + b"/" if wild else base)]
            if levels[wild] == "#" and wild:
                ranges.append(op.get(base + literal))  # a/# matches a [MQTT-4.7.1-2]
        d = self._read("kv/txn", {"success": ranges})
        d.addCallback(self._matching, topic_filter)
        return d

    def _matching(self, reply: dict[str, Any], topic_filter: str) -> list[Message]:
        cut = len(self.keys.retained)
        return [decode_message(value) for r in op.txn_ranges(reply) for key, value in op.kvs(r)
                if topic_matches(topic_filter, key[cut:].decode("utf-8"))]

    def _match_by_depth(self, topic_filter: str, depth: int) -> Deferred[list[Message]]:
        prefix = self.keys.depth + b"%05d/" % depth
        d = self._read("kv/range", op.get_prefix(prefix, keys_only=True)["requestRange"])

        def fetch(reply: dict[str, Any]) -> Any:
            keys = [self.keys.retained + key[len(prefix):] for key, _ in op.kvs(reply)
                    if topic_matches(topic_filter, key[len(prefix):].decode("utf-8"))]
            n = self.max_ops
            reads = [self.http.call("kv/txn", {"success": [op.get(k) for k in keys[i:i + n]]},
                                    write=False) for i in range(0, len(keys), n)]
            g = gatherResults(reads, consumeErrors=True)
            g.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)
            g.addCallback(lambda replies: [decode_message(value) for one in replies
                                           for r in op.txn_ranges(one)
                                           for _, value in op.kvs(r)])
            return g

        d.addCallback(fetch)
        return d
