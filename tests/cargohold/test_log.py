"""cargohold.log: one event per line, whatever a client put in a field; request ids."""

from __future__ import annotations

import logging

from cargohold.log import REQUEST_ID, KeyValueFormatter


def _line(**fields: object) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "event.name", None, None)
    record.fields = fields
    return KeyValueFormatter().format(record)


def test_control_characters_stay_on_one_printable_line() -> None:
    line = _line(repo="ok/\x00nul\r\nlevel=error", agent="x\x1b[31m")
    assert "\n" not in line and "\r" not in line and line.isprintable()
    assert 'repo="ok/\\x00nul\\x0d\\nlevel=error"' in line
    assert 'agent="x\\x1b[31m"' in line


def test_the_current_request_id_rides_on_every_line() -> None:
    token = REQUEST_ID.set("req-7")
    try:
        assert " request_id=req-7 " in _line(a=1)
    finally:
        REQUEST_ID.reset(token)
    assert "request_id" not in _line(a=1)
