"""The CI workflows say what they run: every module the mutation runner knows is scheduled, and
a module is gated only where its tests have everything they need.

GitHub runs these files, never this machine: the checks here are on their content (the README
says the workflows have not run yet).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with the sigma extra) reads the workflows")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"

# A test file needs the research data beside the project when it names it.
_READS_SHARED = re.compile(r"\bSHARED\b|needs_shared|\.\./shared")


def _mutation_modules() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("_mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # its dataclasses look themselves up there
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod.MODULES


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as True
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _reads_shared(tests: list[str]) -> bool:
    files = {t.lstrip("!").split("::")[0] for t in tests if not t.startswith("!")}
    return any(_READS_SHARED.search((ROOT / f).read_text(encoding="utf-8")) for f in files)


def test_every_mutation_module_is_scheduled_once():
    doc = _load("mutation.yml")
    assert "schedule" in doc["on"] and doc["on"]["schedule"][0]["cron"]
    rows = doc["jobs"]["mutation"]["strategy"]["matrix"]["include"]
    scheduled = [r["module"] for r in rows]
    assert sorted(scheduled) == sorted(_mutation_modules()), "matrix and tools/mutation.py MODULES differ"
    assert len(scheduled) == len(set(scheduled))


def test_a_module_is_gated_only_where_its_tests_have_their_data():
    # The runner has no ../shared: a module whose tests read it would show the mutants only those
    # tests catch as survivors, so it must be report-only there (and gated where ../shared is).
    modules = _mutation_modules()
    rows = _load("mutation.yml")["jobs"]["mutation"]["strategy"]["matrix"]["include"]
    for row in rows:
        assert row["shared"] == _reads_shared(modules[row["module"]]), row["module"]


def test_the_gated_command_fails_under_target():
    steps = _load("mutation.yml")["jobs"]["mutation"]["steps"]
    run = next(s["run"] for s in steps if s.get("name") == "Mutation run")
    assert 'make mutation MODULES="${{ matrix.module }}"' in run
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nmutation:", 1)[1].split("\n\n", 1)[0]
    assert "--fail-under" in recipe


def test_windows_ci_requires_the_native_build():
    doc = _load("windows.yml")
    steps = doc["jobs"]["windows"]["steps"]
    suite = next(s for s in steps if s.get("name") == "Test suite")
    assert suite["env"]["SENSOR_REQUIRE_EXTENSIONS"] == "1"
