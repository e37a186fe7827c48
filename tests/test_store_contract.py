"""The store contract: one suite, run against every store the broker ships.

The suite is ``mqtt_twisted.testing.store_contract.StoreContract``, public so that a
third-party store passes the same tests by subclassing it the same way (see
docs/stores.md); each subclass here only says how to make its store
(``MemoryStoreContractTests``, ``RedisStoreContractTests`` against a real
redis-server on an ephemeral port, ``EtcdStoreContractTests`` against a real etcd).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mqtt_twisted.store.etcd import EtcdStore
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.redis import RedisStore
from mqtt_twisted.testing.store_contract import StoreContract

try:
    from tests.etcdserver import EtcdServer
    from tests.redisserver import RedisServer, temp_dir
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from etcdserver import EtcdServer  # type: ignore[no-redef]
    from redisserver import RedisServer, temp_dir  # type: ignore[no-redef]


class MemoryStoreContractTests(StoreContract, unittest.TestCase):
    """The contract, on the in-process store."""

    def make_store(self) -> Any:
        return MemoryStore(self.reactor)


class RedisStoreContractTests(StoreContract, unittest.TestCase):
    """The contract, on the Redis store against a real redis-server."""

    @inlineCallbacks
    def make_store(self) -> Any:
        server = RedisServer(self.reactor, temp_dir(self))
        yield server.start()
        self.addCleanup(server.stop)
        self.server = server
        return RedisStore.fromURL(self.reactor, server.url(pool=3, timeout=5))


class EtcdStoreContractTests(StoreContract, unittest.TestCase):
    """The contract, on the etcd store against a real etcd (a fresh key prefix per test)."""

    @inlineCallbacks
    def make_store(self) -> Any:
        server = yield EtcdServer.shared(self.reactor)
        return EtcdStore.fromURL(self.reactor, server.url(timeout=5))
