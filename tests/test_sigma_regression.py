"""SigmaHQ's regression data: each set's .evtx scanned with its rule gives info.yml's match_count.

SigmaHQ CI runs the same sets with evtx-sigma-checker (tests/regression_tests_runner.py);
a set without ``match_count`` expects at least one match.  The data (DRL 1.1) sits in
../shared/data/sigma-regression/; disagreements, if any, are listed in KNOWN_DISAGREEMENTS
with their cause and explained in tests/data/README.md ("Sigma rules").
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from sensor.detect.sigma import load_sigma_file

from .conftest import SHARED, needs_shared

RULES_DIR = SHARED / "data" / "sigma-rules"
REGRESSION_DIR = SHARED / "data" / "sigma-regression"

# rule id -> reason; each must also be explained in tests/data/README.md ("Sigma rules").
KNOWN_DISAGREEMENTS: dict[str, str] = {}

_ID_LINE = re.compile(r"^id:\s*['\"]?([0-9a-fA-F-]{36})", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def rule_files_by_id() -> dict[str, Path]:
    """Rule id → file, from each file's top-level ``id:`` line (cheap; no parsing)."""
    out = {}
    for f in sorted(RULES_DIR.rglob("*.yml")):
        m = _ID_LINE.search(f.read_text(encoding="utf-8"))
        if m:
            out[m.group(1).lower()] = f
    return out


def read_events(paths) -> list:
    """Process starts in .evtx/.jsonl(.gz) files via sensor.sources."""
    from sensor.sources import ReadStats, read_paths

    stats = ReadStats()
    events = list(read_paths([str(p) for p in paths], stats))
    assert not [e for e in stats.errors if "corrupt" in e.message], stats.errors
    return events


def regression_sets() -> list[tuple[str, str, Path, int | None]]:
    """(set name, rule id, evtx path, expected match_count or None) for every info.yml test."""
    import yaml

    if not REGRESSION_DIR.is_dir():
        return []
    out = []
    for info in sorted(REGRESSION_DIR.rglob("info.yml")):
        doc = yaml.safe_load(info.read_text(encoding="utf-8"))
        rule_id = str(doc["rule_metadata"][0]["id"]).lower()
        for test in doc.get("regression_tests_info") or []:
            if test.get("type") != "evtx":
                continue
            evtx = info.parent / Path(test["path"]).name
            out.append((info.parent.name, rule_id, evtx, test.get("match_count")))
    return out


SETS = regression_sets()


def count_matches(rule_id: str, evtx: Path, engine: str) -> int:
    from sensor.detect import matcher

    res = load_sigma_file(rule_files_by_id()[rule_id])
    assert not res.rejected, res.rejected
    (rule,) = [r for r in res.rules if r.id.lower() == rule_id]
    m = matcher.create([rule], engine)
    return sum(1 for ev in read_events([evtx]) if m.match(ev))


def _agrees(expected: int | None, got: int) -> bool:
    return got == expected if expected is not None else got >= 1


@needs_shared
@pytest.mark.parametrize("name,rule_id,evtx,expected", SETS,
                         ids=[s[0] for s in SETS] or None)
def test_regression_set(name, rule_id, evtx, expected, engine):
    if rule_id in KNOWN_DISAGREEMENTS:
        pytest.xfail(KNOWN_DISAGREEMENTS[rule_id])
    assert rule_id in rule_files_by_id(), f"rule {rule_id} of {name} is not in {RULES_DIR}"
    got = count_matches(rule_id, evtx, engine)
    assert _agrees(expected, got), f"{name}: expected {expected if expected is not None else '>= 1'}, got {got}"


@needs_shared
def test_regression_agreement_rate():
    """All 80 sets are present and >= 98 % agree (reference engine)."""
    assert len({s[1] for s in SETS}) == 80
    agree = sum(_agrees(exp, count_matches(rid, evtx, "reference")) for _, rid, evtx, exp in SETS)
    assert agree / len(SETS) >= 0.98
    assert len(SETS) - agree == len(KNOWN_DISAGREEMENTS)
