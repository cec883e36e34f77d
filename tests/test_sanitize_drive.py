"""tools/sanitize_drive.py, the hostile-input driver of `make sanitize`, on the normal build.

The sanitizer run itself is manual or scheduled (minutes of build, about half an hour of tests on
two cores; README, "Sanitizers"). This keeps its driver working between runs: a small run of its
ETW and PE parts, whose answers (compiled against twin) must agree here too.
"""
from __future__ import annotations

import importlib.util

import pytest

from .conftest import ROOT

pytest.importorskip("sensor.sources._etw_decode", reason="the compiled ETW decoder is not built (`make build`)")
pytest.importorskip("sensor.enrich._pe", reason="the native PE reader is not built (`make build`)")


def _driver():
    spec = importlib.util.spec_from_file_location("sanitize_drive", ROOT / "tools" / "sanitize_drive.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_driver_etw_and_pe_parts_agree_with_the_twins(capsys):
    rc = _driver().main(["--only", "etw", "--only", "pe", "--records", "300", "--cuts", "2",
                         "--pe-variants", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["etw"].startswith("ok (etw_records ") and lines["pe"].startswith("ok (pe_files ")
