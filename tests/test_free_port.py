"""The tests' free-port helper: two ports asked for in one test run are never the same.

CI failed once because a broker got ``tcp:P`` and ``ssl:P``: the kernel handed out a port
it had just handed out, since the probing socket was closed before the second ask."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.redisserver import free_port


class FreePortTests(TestCase):
    def test_never_the_same_port_twice(self) -> None:
        # ~28,000 ephemeral ports: 3,000 draws collide by chance alone unless remembered.
        ports = [free_port() for _ in range(3000)]
        self.assertEqual(len(set(ports)), len(ports))
