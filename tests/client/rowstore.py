"""A small HTTP service that keeps the JSON lines posted to it, per table: the
destination of the test loaders written against the older client's extension API.

It listens on 127.0.0.1 and can be told to refuse some upcoming requests with an HTTP
status (``refuse``), the way a real service answers 503 while it restarts.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RowStore(ThreadingHTTPServer):
    """``POST /<table>`` with newline-delimited JSON appends the rows to ``rows[table]``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.accepted = 0  # requests whose rows were kept
        self.refused: list[int] = []  # the status of each refused request, in order
        self._plan: deque[int | None] = deque()  # None: accept, a status: refuse
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def refuse(self, statuses: list[int], after: int = 0) -> None:
        """Accept ``after`` more requests, then answer the next ones with ``statuses``."""
        with self.lock:
            self._plan.extend([None] * after + list(statuses))

    def __enter__(self) -> RowStore:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def receive(self, table: str, body: bytes) -> int:
        """The status to answer a POST of ``body`` into ``table`` with."""
        with self.lock:
            status = self._plan.popleft() if self._plan else None
            if status is not None:
                self.refused.append(status)
                return status
            self.rows[table].extend(json.loads(line) for line in body.splitlines())
            self.accepted += 1
            return 200


class _Handler(BaseHTTPRequestHandler):
    server: RowStore

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.server.receive(self.path.strip("/"), body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the store, not its access log."""
