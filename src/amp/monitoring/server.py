"""``/metrics`` and ``/healthz`` over HTTP, in a background thread (stdlib http.server
and prometheus-client's exposition, nothing else)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from amp.errors import ConfigError
from amp.monitoring.loads import LoadRegistry, loads

log = logging.getLogger("amp.monitoring")

DEFAULT_STALL_SECONDS = 300.0


class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` listener; ``close()`` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"

    def close(self) -> None:
        """Stop serving and free the port (safe to call twice)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _handler(registry: LoadRegistry, stall_seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path == "/healthz":
                healthy, body = registry.health(stall_seconds)
                payload = json.dumps(body, indent=2).encode()
                self._send(200 if healthy else 503, "application/json", payload)
            else:
                self._send(404, "text/plain; charset=utf-8", b"/metrics or /healthz\n")

        def _send(self, status: int, content_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def serve_metrics(
    port: int,
    host: str = "127.0.0.1",
    *,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
) -> MetricsServer:
    """Serve ``/metrics`` (Prometheus text format, the default registry: amp's metrics
    and any others of the process) and ``/healthz`` (200 or 503 with a JSON body) on
    ``host:port`` in a daemon thread. ``port=0`` picks a free port (``.port`` says
    which). ``stall_seconds``: how long a load behind the chain head may go without a
    commit before ``/healthz`` calls it stalled."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"the metrics port must be an integer 0..65535, got {port!r}")
    if isinstance(stall_seconds, bool) or not isinstance(stall_seconds, int | float):
        raise ConfigError(f"stall_seconds must be a number of seconds, got {stall_seconds!r}")
    if stall_seconds < 0:
        raise ConfigError(f"stall_seconds must be >= 0, got {stall_seconds}")
    httpd = ThreadingHTTPServer((host, port), _handler(loads, float(stall_seconds)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="amp-metrics", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    log.info("Serving /metrics and /healthz on %s", server.url)
    return server
