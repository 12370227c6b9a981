"""The log: plain lines for a person at a terminal, or JSON lines for a log collector.

``[log] format = "json"`` writes one JSON object per line (RFC 8259; JSON Lines), with the keys
``time`` (ISO 8601 with the offset), ``level``, ``logger``, ``message``, ``process`` and, when the
record carries one, ``exception`` (the traceback as text)::

    {"time": "2026-12-06T14:26:31.293+08:00", "level": "INFO", "logger": "pacs.server", "message": "PACS ready: ...", "process": 4711}

The libraries' own loggers (:data:`LIBRARY_LOGGERS`: pynetdicom, uvicorn and its access log,
Alembic, SQLAlchemy, the HTTP and S3 clients) say only warnings and errors, so that a start and
a busy day log what the system did, not every PDU, request and migration step; ``[log] level =
"DEBUG"`` lets them speak too.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from pacs.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRARY_LOGGERS = (
    "alembic", "asyncio", "boto3", "botocore", "fhirpathpy", "hl7apy", "httpcore", "httpx", "multipart",
    "pynetdicom", "s3transfer", "sqlalchemy", "urllib3", "uvicorn", "uvicorn.access", "uvicorn.error",
)
LIBRARY_LEVEL = logging.WARNING  # what the libraries say unless the level asked for is DEBUG


class JSONLinesFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(settings: Settings | str) -> None:
    """Set up the root logger of this process from ``[log]`` (a level name alone: text lines)."""
    if isinstance(settings, str):
        level, style = settings, "text"
    else:
        level, style = settings.effective_log_level, settings.log.format
    handler = logging.StreamHandler()
    handler.setFormatter(JSONLinesFormatter() if style == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    numeric = logging.getLevelName(level)
    libraries = numeric if numeric <= logging.DEBUG else max(numeric, LIBRARY_LEVEL)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)
