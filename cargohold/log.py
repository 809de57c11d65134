"""Structured logging: one event per line as `ts level logger event key=value ...`.

Quiet by default (warning); `--log-level info|debug` or CARGOHOLD_LOG_LEVEL turns it up.
Use `log_event(logger, "event.name", key=value)`: messages are static, lower-case
event names, and everything variable goes into fields.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

# The HTTP request being served (cargohold/request_ids.py): every line logged while it is
# set carries it as `request_id=`.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cargohold_request_id", default=None
)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", None) or {}
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        request_id = REQUEST_ID.get()
        if request_id is not None and "request_id" not in fields:
            parts.append(f"request_id={_quote(request_id)}")
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


# Control characters (a client's repository name or user agent may carry any) are
# written as \xNN, so one event stays one line and the log stays text.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x0A}


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n') or not text.isprintable():
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return '"' + escaped.translate(_CONTROL) + '"'
    return text


def setup_logging(level: str = "warning", process: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pysyncobj and grpc are chatty at info.
    logging.getLogger("pysyncobj").setLevel(max(logging.WARNING, root.level))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
