"""Run a codec test module against both implementations of the hot functions.

A module that imports :func:`codec_impl` runs every test twice: with the pure-Python
functions and with the compiled ones (mqtt_twisted/codec/_speedups.pyx, docs/speedups.md).
The compiled run is skipped only where the extension was not built; CI sets
``MQTT_TWISTED_REQUIRE_EXT=1``, which makes a missing extension an import error instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mqtt_twisted.codec import _accel

IMPLEMENTATIONS = ("pure", "compiled")


@pytest.fixture(scope="module", params=IMPLEMENTATIONS, autouse=True)
def codec_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation bound for this module's tests ("pure" or "compiled")."""
    if request.param == "compiled" and _accel.speedups is None:
        pytest.skip("the compiled codec is not built here (no C compiler, or "
                    "MQTT_TWISTED_NO_EXT=1 at install)")
    _accel.use(request.param == "compiled")
    try:
        yield request.param
    finally:
        _accel.use_default()
