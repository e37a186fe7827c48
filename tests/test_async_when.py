"""``core._async.when``: a value, a Deferred that has fired, or one that fires later."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.core._async import when


class WhenTests(SynchronousTestCase):
    def _when(self, result: Any) -> tuple[list[Any], list[Failure]]:
        got: list[Any] = []
        failed: list[Failure] = []
        when(result, got.append, failed.append)
        return got, failed

    def test_a_fired_deferred_is_read_not_chained(self) -> None:
        """A Deferred that fired with a value (the memory store's lock) is answered at
        once and left as it was: no callback was added to it (its result stays)."""
        d = succeed(5)
        got, failed = self._when(d)
        self.assertEqual((got, failed), ([5], []))
        self.assertEqual(self.successResultOf(d), 5)

    def test_plain_values_and_later_results(self) -> None:
        """A plain value now; an unfired Deferred's value when it fires."""
        self.assertEqual(self._when(7), ([7], []))
        d: Deferred[int] = Deferred()
        got, failed = self._when(d)
        self.assertEqual(got, [])
        d.callback(8)
        self.assertEqual((got, failed), ([8], []))

    def test_failures_go_to_the_errback(self) -> None:
        """A fired failure, and an exception raised by the callback itself."""
        got, failed = self._when(fail(ValueError("no")))
        self.assertEqual(got, [])
        self.assertTrue(failed[0].check(ValueError))
        errors: list[Failure] = []

        def boom(value: Any) -> None:
            raise KeyError(value)

        when(succeed(1), boom, errors.append)
        self.assertTrue(errors[0].check(KeyError))

    def test_a_paused_deferred_waits(self) -> None:
        """A fired but paused Deferred is chained: its value comes when it resumes."""
        d = succeed(3)
        d.pause()
        got, _ = self._when(d)
        self.assertEqual(got, [])
        d.unpause()
        self.assertEqual(got, [3])
