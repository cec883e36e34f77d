"""Shared fixtures: the research data folder, both matcher engines."""
from __future__ import annotations

from pathlib import Path

import pytest

from sensor import matcher as _matcher

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = ROOT / "tests" / "data"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared (the research data beside the project) is not present"
)

ENGINE_NAMES = sorted(_matcher.ENGINES)


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    """Each available matcher engine: "reference" always, "compiled" when built."""
    return request.param


@pytest.fixture
def make_matcher(engine):
    """Build a matcher over rules with the engine under test."""
    def make(rules):
        return _matcher.create(list(rules), engine)
    return make
