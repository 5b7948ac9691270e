"""Metrics and health of the loads of this process.

from amp.monitoring import serve_metrics
server = serve_metrics(9464)  # /metrics and /healthz on 127.0.0.1:9464
...
server.close()

``metrics``: the Prometheus metrics (default registry); ``loads``: each load's state,
reported by the loop, read by ``/healthz`` (health rules there); ``server``: the HTTP
listener. See docs/operations.md.
"""

from amp.monitoring.loads import LoadMonitor, LoadRegistry, loads
from amp.monitoring.server import DEFAULT_STALL_SECONDS, MetricsServer, serve_metrics

__all__ = [
    "DEFAULT_STALL_SECONDS",
    "LoadMonitor",
    "LoadRegistry",
    "MetricsServer",
    "loads",
    "serve_metrics",
]
