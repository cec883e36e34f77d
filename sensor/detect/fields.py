"""Field names a rule may use besides the event's own: the seed criteria language's names.

The rule page's criteria and ``select`` name fields in capitals (``PROCESSNAME``); each maps to
an event field (``sensor.events.FIELDS``) or to a derived one (``@FileName``, ``@Message``,
computed from the event).
"""
from __future__ import annotations

# Criteria field names → event fields.  FILE_NAME and MESSAGE are derived fields.
FIELD_MAP = {
    "PROCESSNAME": "Image",
    "ORIGINALFILENAME": "OriginalFileName",
    "PARENTPROCESSNAME": "ParentImage",
    "COMMANDLINE": "CommandLine",
    "PARENTCOMMANDLINE": "ParentCommandLine",
    "USERNAME": "User",
    "HOSTNAME": "Computer",
    "INTEGRITYLEVEL": "IntegrityLevel",
    "PROCESSID": "ProcessId",
    "PARENTPROCESSID": "ParentProcessId",
    "CURRENTDIRECTORY": "CurrentDirectory",
    "COMPANY": "Company",
    "PRODUCT": "Product",
    "DESCRIPTION": "Description",
    "FILEVERSION": "FileVersion",
    "FILE_NAME": "@FileName",
    "MESSAGE": "@Message",
}
