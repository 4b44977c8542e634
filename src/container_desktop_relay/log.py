"""Structured logging: one JSON object per line on stderr, levels trace/debug/info/warn/error."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["FATAL", "TRACE", "JsonFormatter", "fatal_line", "get_logger", "setup_logging"]

TRACE = 5
#: The event of the last line of a run that failed: its message and exit status.
FATAL = "fatal"
logging.addLevelName(TRACE, "TRACE")
_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
          logging.WARNING: "warn", logging.ERROR: "error", logging.CRITICAL: "error"}
# Attributes every LogRecord has; anything else came in through ``extra=`` and is a field.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "taskName"}


def _timestamp(created: float, msecs: float) -> str:
    """``2026-12-07T14:24:06.123Z``: UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as {"time", "level", "logger", "event", ...extra fields}."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one JSON line."""
        out: dict[str, Any] = {
            "time": _timestamp(record.created, record.msecs),
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def fatal_line(message: str, exit_status: int, *, created: float | None = None) -> str:
    """The JSON line a failed run ends with (also before logging is set up: bad flags)::

        {"time": ..., "level": "error", "logger": "container_desktop_relay", "event": "fatal",
         "message": "invalid port=0 from --port: ...", "exit_status": 2}
    """
    now = time.time() if created is None else created
    return json.dumps({
        "time": _timestamp(now, (now - int(now)) * 1000),
        "level": "error",
        "logger": "container_desktop_relay",
        "event": FATAL,
        "message": message,
        "exit_status": exit_status,
    }, ensure_ascii=False)


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every ``container_desktop_relay`` log record at ``level`` or above to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("container_desktop_relay")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    root.propagate = False
    # asyncssh logs every packet at debug; keep it to warnings unless tracing.
    ssh = logging.getLogger("asyncssh")
    ssh.handlers[:] = [handler]
    ssh.setLevel(logging.INFO if level == "trace" else logging.WARNING)
    ssh.propagate = False
    # Any other warning (ours or a library's) becomes a JSON "warn" line, never plain text.
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    warned.handlers[:] = [handler]
    warned.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (pass ``__name__``)."""
    return logging.getLogger(name)
