"""The per-alert log line: the same text at WARNING from ``sensor.alerts``, built without a
walk up the stack for the caller (its file and line are not in the log format)."""
from __future__ import annotations

import io
import logging

from sensor.daemon.assemble import _log_alert, alert_log_line


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_alert_line_reaches_the_handlers_without_a_caller_lookup():
    alert = {"id": "a-1", "rule": {"level": "high", "title": "T", "id": "r"}, "PROCESSNAME": "C:\\x.exe",
             "COMMANDLINE": "x 100%s %d", "HOSTNAME": "H"}
    log = logging.getLogger("sensor.alerts")
    keep, buf = Keep(), io.StringIO()
    text = logging.StreamHandler(buf)
    text.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(keep)
    log.addHandler(text)
    try:
        _log_alert(alert)
        log.setLevel(logging.ERROR)             # below the logger's level: nothing
        _log_alert(alert)
    finally:
        log.setLevel(logging.NOTSET)
        log.removeHandler(keep)
        log.removeHandler(text)
    assert len(keep.records) == 1
    rec = keep.records[0]
    assert rec.levelno == logging.WARNING and rec.getMessage() == alert_log_line(alert)
    assert buf.getvalue().splitlines()[0] == "WARNING sensor.alerts: " + alert_log_line(alert)
    assert rec.funcName == "alert" and rec.pathname == "(alert)"     # no stack walk
