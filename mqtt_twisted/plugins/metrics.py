"""The Prometheus metrics listener (``metrics=``) as a plugin, found like any drop-in."""

from __future__ import annotations

from mqtt_twisted.adapters.metrics import MetricsAdapter

metricsAdapter = MetricsAdapter()
