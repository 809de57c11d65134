"""The node's metrics endpoint: a small HTTP server on `node.metrics_address`, in a thread.

`GET /metrics` answers prometheus_client's default registry (node/metrics.py's collector,
the gRPC client latencies of repair and scrub, the process collector), `GET /healthz`
200 while the process runs, `GET /readyz` 200 when `ready()` says so (a Raft leader with a
majority is known) and 503 otherwise. It runs in threads of its own, so a scrape never
waits for, or delays, the event loop that serves gRPC. It serves nothing else: counters
and gauges only, no repository names, digests or chunk data; it is a separate port from the
(authenticated) gRPC port and belongs on the same cluster network (docs/operations.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cargohold.config import split_hostport
from cargohold.errors import AddressInUse

# () -> (ready, detail) for /readyz.
ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "alive"})
        elif path == "/readyz":
            ready, detail = self.server.ready()
            self._json(
                200 if ready else 503, {"status": "ready" if ready else "not ready", **detail}
            )
        else:
            self._json(404, {"error": "not found"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes are not worth a log line each


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, ready: ReadyCheck) -> None:
        host, port = split_hostport(address)
        self.ready = ready
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise AddressInUse(
                f"cannot listen on {address} (metrics HTTP): {exc.strerror}"
            ) from None
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="metrics-http",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (blocks up to the poll interval)."""
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join()
        self.server_close()
