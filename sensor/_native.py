"""Which native parts this process may use: the one place that reads ``SENSOR_NO_EXTENSIONS``.

Every compiled part has a pure-Python twin that defines its behaviour (``sensor.detect._matcher``
and ``sensor.detect._matcher_py``; ``sensor.enrich._pe`` and ``sensor.enrich._pe_py``;
``sensor.sources._etw_decode`` and ``sensor.sources.etw_decode``).
``SENSOR_NO_EXTENSIONS=1`` makes every stage use the twins, as a build without a C compiler does.
"""
from __future__ import annotations

import os

NO_EXTENSIONS = bool(os.environ.get("SENSOR_NO_EXTENSIONS"))
