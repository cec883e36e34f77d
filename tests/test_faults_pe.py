"""PE reads only regular files, and path_map never leaves its folder: real FIFOs, links and processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sensor.enrich import pe
from sensor.enrich.enricher import map_path

REPO = Path(__file__).resolve().parents[1]
RENAMED = REPO / "sensor" / "data" / "demo" / "renamed_tool.exe"  # OriginalFileName mofcomp.exe
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symlinks as POSIX makes them")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@posix_only
@pytest.mark.parametrize("impl", sorted(pe.READERS))
def test_peinfo_refuses_a_fifo_instead_of_hanging(tmp_path, impl):
    fifo = tmp_path / "image.exe"
    os.mkfifo(fifo)
    # no writer ever opens the FIFO: a blocking open would hang here (the timeout only guards that)
    r = subprocess.run([sys.executable, "-m", "sensor", "peinfo", "--implementation", impl, str(fifo),
                        str(RENAMED)], capture_output=True, text=True, env=env(), timeout=60)
    assert r.returncode == 1, r.stderr
    fifo_rec, good = (json.loads(line) for line in r.stdout.splitlines())
    assert fifo_rec["code"] == "not_regular" and "not a regular file" in fifo_rec["error"]
    assert good["OriginalFilename"] == "mofcomp.exe"


@posix_only
@pytest.mark.parametrize("impl", sorted(pe.READERS))
def test_the_cache_refuses_devices_and_fifos_and_remembers(tmp_path, impl):
    fifo = tmp_path / "pipe.exe"
    os.mkfifo(fifo)
    cache = pe.VersionInfoCache(implementation=impl)
    answers = []
    t = threading.Thread(target=lambda: answers.extend(cache.lookup(p) for p in (fifo, "/dev/zero", fifo)),
                         daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "a PE lookup blocked"
    assert answers == [None, None, None]
    assert cache.failures == 2 and cache.hits == 1  # the refusal is cached against the file's identity


def test_map_path_refuses_dot_dot_segments(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    m = {"C:\\Users\\Public\\": str(img)}
    assert map_path("C:\\Users\\Public\\x\\y.exe", m) == str(img / "x" / "y.exe")
    assert map_path("C:\\Users\\Public\\a\\..\\y.exe", m) == str(img / "y.exe")  # stays inside: fine
    assert map_path("C:\\Users\\Public\\..\\outside.exe", m) is None
    assert map_path("C:\\Users\\Public\\a\\..\\..\\..\\etc\\passwd", m) is None
    assert map_path("C:\\Users\\Public\\\0x", m) is None


@posix_only
def test_map_path_refuses_links_that_leave_the_folder(tmp_path):
    img, out = tmp_path / "img", tmp_path / "outside"
    img.mkdir()
    out.mkdir()
    (out / "evil.exe").write_bytes(b"MZ")
    os.symlink(out / "evil.exe", img / "link.exe")
    os.symlink(out, img / "dir")
    os.symlink(img / "inner.exe", img / "ok.exe")
    m = {"C:\\Users\\Public\\": str(img)}
    assert map_path("C:\\Users\\Public\\link.exe", m) is None
    assert map_path("C:\\Users\\Public\\dir\\evil.exe", m) is None
    assert map_path("C:\\Users\\Public\\ok.exe", m) == os.path.realpath(img / "inner.exe")


@posix_only
def test_run_goes_on_past_a_fifo_image_and_never_reads_outside_the_map(tmp_path):
    img, out_dir = tmp_path / "img", tmp_path / "outside"
    img.mkdir()
    out_dir.mkdir()
    shutil.copy(RENAMED, img / "renamed.exe")
    shutil.copy(RENAMED, out_dir / "evil.exe")           # would alert, if it were ever read
    os.mkfifo(img / "fifo.exe")
    os.symlink(out_dir / "evil.exe", img / "link.exe")
    base = {"ParentImage": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "x /s"}
    images = ["fifo.exe", "renamed.exe", "..\\outside\\evil.exe", "link.exe", "fifo.exe", "renamed.exe"]
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(dict(base, Image=f"C:\\Users\\Public\\{name}", ProcessId=i)) + "\n"
                           for i, name in enumerate(images)))
    alerts = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "state"}"\nheartbeat_s = 0\n'
                   f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                   f'[enrich.pe]\nenabled = true\npath_map = {{ "C:\\\\Users\\\\Public\\\\" = "{img}" }}\n'
                   f'[output]\nformat = "jsonl"\npath = "{alerts}"\n')
    cfg.chmod(0o600)  # the sensor refuses a config others can read
    r = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True,
                       text=True, env=env(), timeout=120)
    assert r.returncode == 0, r.stderr
    got = [d for d in map(json.loads, alerts.read_text().splitlines()) if d["event"]["kind"] != "metric"]
    # only the renamed mofcomp inside the mapped folder is recognised by its version resource
    assert sorted(a["process"]["pid"] for a in got) == [1, 5]
