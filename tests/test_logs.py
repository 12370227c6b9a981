"""The log: JSON lines under ``[log] format = "json"``, and no library chatter at INFO."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pacs.logs import LIBRARY_LOGGERS, JSONLinesFormatter
from tests.helpers import MLLPClient, ack_fields, load
from tests.process import ServeProcess

SERVE_BANNER = "pacs: serving"  # what pacs serve prints on standard output once started


def served_log(tmp_path: Path, **env: str) -> list[str]:
    """The lines ``pacs serve`` wrote from its start to its stop, one HL7 message in between."""
    server = ServeProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'pacs.db'}", **env).start()
    try:
        with MLLPClient(server.mllp_port) as client:
            assert ack_fields(client.send(load("adt_a01_ihe.hl7")))["code"] == "AA"
        assert server.terminate() == 0
    finally:
        server.stop()
    return [line for line in server.log.read_text().splitlines() if line and not line.startswith(SERVE_BANNER)]


def test_json_lines_have_time_level_logger_and_message(tmp_path):
    lines = served_log(tmp_path, PACS_LOG__FORMAT="json")
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message", "process"} <= entry.keys(), entry
    ready = [e for e in entries if e["logger"] == "pacs.server" and e["message"].startswith("PACS ready")]
    assert len(ready) == 1 and ready[0]["level"] == "INFO"
    assert "T" in ready[0]["time"] and ready[0]["time"][-6] in "+-"  # ISO 8601 with its offset
    assert not [e for e in entries if e["logger"].split(".")[0] in {"alembic", "pynetdicom", "uvicorn"}
                and e["level"] == "INFO"]


def test_no_library_says_anything_at_info_on_start(tmp_path):
    lines = served_log(tmp_path)
    chatter = [line for line in lines if " INFO " in line
               and line.split(" INFO ", 1)[1].split(":", 1)[0].split(".")[0] != "pacs"]
    assert not chatter, chatter
    assert any(" INFO pacs.server: PACS ready" in line for line in lines), lines


def test_a_library_speaks_at_debug_when_asked(tmp_path):
    from pacs.logs import configure
    from pacs.settings import Settings

    try:
        configure(Settings(log={"level": "DEBUG"}))
        assert all(logging.getLogger(name).getEffectiveLevel() == logging.DEBUG for name in LIBRARY_LOGGERS)
        configure(Settings(log={"level": "INFO"}))
        assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in LIBRARY_LOGGERS)
        assert logging.getLogger("pacs.anything").getEffectiveLevel() == logging.INFO
    finally:
        configure(Settings(log={"level": "WARNING"}))


def test_an_exception_is_one_line_with_its_traceback():
    logger = logging.getLogger("pacs.test")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("a bad value\non two lines")
        except ValueError:
            logger.exception("the batch failed")
    finally:
        logger.removeHandler(handler)
    line = JSONLinesFormatter().format(records[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "the batch failed" and entry["level"] == "ERROR" and entry["logger"] == "pacs.test"
    assert entry["exception"].startswith("Traceback") and "ValueError: a bad value\non two lines" in entry["exception"]
