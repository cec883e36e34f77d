"""The raw ETW record: what a consumer thread hands to the platform-neutral processor.

A raw record is the tuple ``(source, event_id, version, opcode, header_pid, header_tid,
timestamp, header_flags, payload)``; ``timestamp`` is the EVENT_HEADER TimeStamp (a FILETIME:
ProcessTrace converts it to system time unless PROCESS_TRACE_MODE_RAW_TIMESTAMP is set). ``source``
says which session delivered it. Shared by ``etw.py`` (which decodes records), ``etw_windows.py``
(which builds them from EVENT_RECORDs) and ``capture.py`` (which writes and reads them).
"""
from __future__ import annotations

SRC_KERNEL_PROCESS = 0
SRC_SYSTEM_LOGGER = 1
SRC_LOST = 2

# RT_LostEvent EventType values (rt-lostevent.md).
RT_LOST_EVENT = 32
RT_LOST_BUFFER = 33
RT_LOST_FILE = 34

EVENT_HEADER_FLAG_32_BIT_HEADER = 0x0020

# Names of the sources in capture files (docs/etw.md, "Capture files").
SOURCE_NAMES = {SRC_KERNEL_PROCESS: "kernel-process", SRC_SYSTEM_LOGGER: "system-logger", SRC_LOST: "lost"}
SOURCES_BY_NAME = {v: k for k, v in SOURCE_NAMES.items()}
RAW_FIELDS = ("source", "event_id", "version", "opcode", "header_pid", "header_tid", "timestamp",
              "flags", "payload")
