"""Windows Event Log logging (pywin32), imported only on Windows by the daemon's logging setup."""
from __future__ import annotations

import logging
import logging.handlers
import sys

from .service import EVENT_SOURCE


def event_log_handler():
    """A logging handler writing WARNING and above to the Application event log."""
    if sys.platform != "win32":
        return None
    try:
        import win32evtlogutil  # noqa: F401  (NTEventLogHandler silently does nothing without it)
        handler = logging.handlers.NTEventLogHandler(EVENT_SOURCE)
    except Exception:  # pywin32 missing or no right to register the source
        return None
    handler.setLevel(logging.WARNING)
    return handler
