"""Shared fixtures: the research data folder, both matcher engines; the CI guards.

``SENSOR_REQUIRE_EXTENSIONS=1`` (set by ``.ci/run``) makes a missing native build an error
instead of a reason to skip the parity tests. ``SENSOR_HYPOTHESIS_PROFILE=ci`` derandomises
hypothesis, so a CI run is the same run every time; ``=sanitize`` (tools/sanitize.sh) lets
generation be slow, as it is under AddressSanitizer.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sensor.detect import matcher as _matcher
from sensor.enrich import pe as _pe
from sensor.sources import etw_decode as _etw_decode

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = ROOT / "tests" / "data"

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("sanitize", print_blob=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
HYPOTHESIS_PROFILE = os.environ.get("SENSOR_HYPOTHESIS_PROFILE") or "dev"
settings.load_profile(HYPOTHESIS_PROFILE)

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared (the research data beside the project) is not present"
)

ENGINE_NAMES = sorted(_matcher.ENGINES)


def missing_native() -> list[str]:
    """The native parts that did not build (or were switched off)."""
    out = []
    if "compiled" not in _matcher.ENGINES:
        out.append("the compiled matcher (sensor.detect._matcher)")
    if "native" not in _pe.READERS:
        out.append("the native PE reader (sensor.enrich._pe)")
    if not _etw_decode.COMPILED:
        out.append("the compiled ETW decoder (sensor.sources._etw_decode)")
    return out


def pytest_configure(config):
    if os.environ.get("SENSOR_REQUIRE_EXTENSIONS") == "1":
        missing = missing_native()
        if missing:
            raise pytest.UsageError(
                "SENSOR_REQUIRE_EXTENSIONS=1 but " + " and ".join(missing) + " did not build: "
                "the parity tests would skip; fix the native build (see `make build`)")


def pytest_report_header(config):
    missing = missing_native()
    return [f"native parts: {'all built' if not missing else 'MISSING ' + ', '.join(missing)}; "
            f"hypothesis profile: {HYPOTHESIS_PROFILE}"]


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


@pytest.fixture()
def volume(tmp_path):
    """``volume(size)``: mounts a tmpfs of that size and returns its path (a real disk that fills
    up; needs root on Linux, skipped with the reason elsewhere). Unmounted after the test."""
    import subprocess
    import sys
    if sys.platform != "linux":
        pytest.skip("tmpfs volumes are Linux")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"vol{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here (needs root): {r.stderr.strip() or r.returncode}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def load_gen_blobs():
    """tests/data/pe/src/gen_blobs.py (the version-blob builder the PE fixtures come from) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_blobs", DATA / "pe" / "src" / "gen_blobs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fill(folder: Path) -> Path:
    """Fill the volume of ``folder`` with zeros until the disk says no more (a new filler file per
    call, so a test can fill the disk again after freeing some of it); the filler's path."""
    filler = folder / f"filler-{len(list(folder.glob('filler-*')))}.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 1 << 20
        while size >= 1:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return filler
