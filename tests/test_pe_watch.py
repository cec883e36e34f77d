"""The PE cache validated by change notifications (filewatch): real inotify on Linux,
the pure halves (path chains, record parsers) everywhere."""
from __future__ import annotations

import ntpath
import os
import posixpath
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

from sensor.enrich import filewatch
from sensor.enrich.pe import IMPLEMENTATION, PeError, VersionInfoCache

DATA = Path(__file__).resolve().parent / "data" / "pe"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the watcher exercised here is inotify (Linux)")


def wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def cache():
    c = VersionInfoCache(maxsize=64, watch=True)
    yield c
    c.close()


def no_stat(*_a):
    raise AssertionError("a watched hit must not stat the file")


def install(src: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / src, dst)
    return dst


# --- the pure halves --------------------------------------------------------------------

def test_watch_chain_posix():
    same = lambda p: p  # noqa: E731  (no links anywhere)
    assert filewatch.watch_chain("/a/b/c.exe", flavour=posixpath, realpath=same) == ["/", "/a", "/a/b"]
    assert filewatch.watch_chain("/c.exe", flavour=posixpath, realpath=same) == ["/"]
    for bad in ("c.exe", "a/b.exe", "/a/../b.exe", "/a//b.exe", "/a/./b.exe", "", "/a/b\0.exe"):
        assert filewatch.watch_chain(bad, flavour=posixpath, realpath=same) is None, bad
    # A link on the way: changes at the link's target would not be seen from here.
    assert filewatch.watch_chain("/l/b.exe", flavour=posixpath,
                                 realpath=lambda p: p.replace("/l", "/target")) is None


def test_watch_chain_windows():
    same = lambda p: p  # noqa: E731
    assert filewatch.watch_chain(r"C:\Windows\System32\mofcomp.exe", flavour=ntpath, realpath=same) \
        == ["C:\\", r"C:\Windows", r"C:\Windows\System32"]
    # Case differences are not links.
    assert filewatch.watch_chain(r"C:\WINDOWS\x.exe", flavour=ntpath,
                                 realpath=lambda p: p.lower()) == ["C:\\", r"C:\WINDOWS"]
    for bad in (r"\\server\share\x.exe", r"\\?\C:\x.exe", r"C:x.exe", r"C:\a\..\x.exe", "x.exe"):
        assert filewatch.watch_chain(bad, flavour=ntpath, realpath=same) is None, bad
    # A junction on the way.
    assert filewatch.watch_chain(r"C:\j\x.exe", flavour=ntpath,
                                 realpath=lambda p: r"D:\elsewhere") is None


def inotify_record(wd, mask, name=b"", pad=16):
    raw = name + b"\0" * (pad - len(name)) if name else b""
    return struct.pack("iIII", wd, mask, 0, len(raw)) + raw


def test_parse_inotify():
    buf = inotify_record(1, filewatch.IN_MODIFY, b"a.exe") + inotify_record(2, filewatch.IN_IGNORED)
    assert filewatch.parse_inotify(buf) == [(1, filewatch.IN_MODIFY, "a.exe"),
                                            (2, filewatch.IN_IGNORED, "")]
    assert filewatch.parse_inotify(buf[:-3]) == [(1, filewatch.IN_MODIFY, "a.exe")]
    assert filewatch.parse_inotify(b"") == []


def notify_record(action, name, last=False):
    raw = name.encode("utf-16-le")
    size = (12 + len(raw) + 3) & ~3
    return struct.pack("<III", 0 if last else size, action, len(raw)) + raw + b"\0" * (size - 12 - len(raw))


def test_parse_notify_and_changes():
    buf = notify_record(3, "app.exe") + notify_record(4, "old") + notify_record(5, "new", last=True)
    assert filewatch.parse_notify(buf) == [(3, "app.exe"), (4, "old"), (5, "new")]
    assert filewatch.notify_changes("C:\\d", buf) == [("C:\\d", "app.exe", None), ("C:\\d", "old", None),
                                                      ("C:\\d", "new", None)]
    # Overflow (empty buffer) and malformed records: anything in the folder may have changed.
    assert filewatch.notify_changes("C:\\d", b"") == [("C:\\d", None, None)]
    assert filewatch.parse_notify(buf[:20]) is None
    assert filewatch.notify_changes("C:\\d", struct.pack("<III", 6, 3, 2) + b"a\0") == [("C:\\d", None, None)]
    assert filewatch.parse_notify(struct.pack("<III", 0, 3, 3) + b"abc") is None  # odd length
    assert filewatch.notify_changes("C:\\d", notify_record(3, "a\\b", last=True)) == [("C:\\d", None, None)]


# --- the cache with real inotify ----------------------------------------------------------

@linux_only
def test_watched_hit_needs_no_stat(cache, tmp_path, monkeypatch):
    f = install("basic64.exe", tmp_path / "app" / "a.exe")
    assert cache.watching
    assert cache.get(f)["OriginalFilename"] == "basic.exe"
    monkeypatch.setattr(cache, "_stat", no_stat)
    for _ in range(3):
        assert cache.get(f)["OriginalFilename"] == "basic.exe"
    st = cache.stats()
    assert (st["hits"], st["watched_hits"], st["misses"]) == (3, 3, 1)
    assert st["watched_dirs"] >= len(f.parts) - 1


@linux_only
def test_watch_sees_a_disguised_replacement(cache, tmp_path):
    # Same size, timestamps set back: (size, mtime) cannot tell; the watch can.
    f = install("basic64.exe", tmp_path / "x.exe")
    st = os.stat(f)
    other = (DATA / "tables_translation.exe").read_bytes()
    disguised = other[:st.st_size].ljust(st.st_size, b"\0")
    stat_cache = VersionInfoCache(maxsize=8)
    try:
        assert cache.get(f)["OriginalFilename"] == stat_cache.get(f)["OriginalFilename"] == "basic.exe"
        before = cache.invalidations
        f.write_bytes(disguised)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
        assert wait_until(lambda: cache.invalidations > before)
        fresh = VersionInfoCache(maxsize=8, implementation=IMPLEMENTATION)
        want = fresh.lookup(f)
        assert cache.lookup(f) == want and want != stat_cache.lookup(f)
        # The stat-validated cache still answers from the old file: the weakness the
        # watch removes.
        assert stat_cache.lookup(f)["OriginalFilename"] == "basic.exe"
    finally:
        stat_cache.close()


@pytest.mark.parametrize("how", ["rewrite", "replace_by_rename", "delete", "touch", "chmod"])
@linux_only
def test_any_change_to_the_file_drops_the_entry(cache, tmp_path, how):
    f = install("basic64.exe", tmp_path / "d" / "x.exe")
    cache.get(f)
    before = cache.invalidations
    if how == "rewrite":
        f.write_bytes(f.read_bytes())
    elif how == "replace_by_rename":
        tmp = install("tables_translation.exe", tmp_path / "d" / "x.tmp")
        os.replace(tmp, f)
    elif how == "delete":
        f.unlink()
    elif how == "touch":
        os.utime(f, ns=(1, 1))
    else:
        os.chmod(f, 0o700)
    assert wait_until(lambda: cache.invalidations > before), how
    assert len(cache) == 0


@pytest.mark.parametrize("level", [1, 2, 3])
@linux_only
def test_renaming_a_folder_on_the_path_drops_the_entry(cache, tmp_path, level):
    # level 1: the file's folder; 2: its parent; 3: the grandparent.
    f = install("basic64.exe", tmp_path / "g" / "p" / "d" / "x.exe")
    assert cache.get(f)["OriginalFilename"] == "basic.exe"
    folder = f.parents[level - 1]
    before = cache.invalidations
    folder.rename(folder.with_name(folder.name + "-old"))
    install("tables_translation.exe", f)  # a different program now sits at the same path
    assert wait_until(lambda: cache.invalidations > before)
    assert cache.get(f)["OriginalFilename"] == "fr.exe"


@linux_only
def test_changes_elsewhere_keep_the_entry(cache, tmp_path, monkeypatch):
    f = install("basic64.exe", tmp_path / "d" / "x.exe")
    sibling = install("basic32.exe", tmp_path / "d" / "y.exe")
    cache.get(f)
    cache.get(sibling)
    (tmp_path / "d" / "log.txt").write_text("noise")
    sibling.write_bytes(sibling.read_bytes())
    assert wait_until(lambda: cache.invalidations >= 1)
    time.sleep(0.05)
    monkeypatch.setattr(cache, "_stat", no_stat)
    assert cache.get(f)["OriginalFilename"] == "basic.exe"
    assert cache.invalidations == 1


@linux_only
def test_untrusted_paths_fall_back_to_stat(cache, tmp_path):
    real = install("basic64.exe", tmp_path / "real" / "x.exe")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked = tmp_path / "link" / "x.exe"
    hard = tmp_path / "real" / "hard.exe"
    os.link(real, hard)
    relative = os.path.relpath(real)
    for p in (linked, real, hard, relative):  # real has a second name now, too
        assert cache.get(p)["OriginalFilename"] == "basic.exe"
        assert cache.get(p)["OriginalFilename"] == "basic.exe"
    st = cache.stats()
    assert st["watched_hits"] == 0 and st["hits"] == 4


@linux_only
def test_watch_limit_falls_back_to_stat(tmp_path):
    c = VersionInfoCache(maxsize=8, watch=True, max_watched_dirs=2)
    try:
        f = install("basic64.exe", tmp_path / "a" / "b" / "x.exe")
        c.get(f)
        c.get(f)
        st = c.stats()
        assert st["watched_hits"] == 0 and st["hits"] == 1 and st["watch_failures"] >= 1
    finally:
        c.close()


@linux_only
def test_change_while_reading_is_not_cached(cache, tmp_path):
    f = install("basic64.exe", tmp_path / "x.exe")
    real_read = cache._read

    def racing_read(path):
        out = real_read(path)
        cache._on_change(str(tmp_path), "x.exe", False)  # reported during the parse
        return out

    cache._read = racing_read
    assert cache.get(f)["OriginalFilename"] == "basic.exe"
    assert len(cache) == 0
    cache._read = real_read
    cache.get(f)
    assert len(cache) == 1


@linux_only
def test_overflow_drops_every_watched_entry(cache, tmp_path):
    f = install("basic64.exe", tmp_path / "x.exe")
    cache.get(f)
    cache._watcher.handle([(-1, filewatch.IN_Q_OVERFLOW, "")])
    assert len(cache) == 0 and cache.invalidations == 1


@linux_only
def test_failures_are_watched_too(cache, tmp_path, monkeypatch):
    f = install("trunc_blob.exe", tmp_path / "bad.exe")
    with pytest.raises(PeError):
        cache.get(f)
    monkeypatch.setattr(cache, "_stat", no_stat)
    with pytest.raises(PeError) as err:
        cache.get(f)
    assert err.value.code == "past_eof" and cache.watched_hits == 1


@linux_only
def test_close_stops_the_watcher_and_keeps_correctness(tmp_path):
    c = VersionInfoCache(maxsize=8, watch=True)
    f = install("basic64.exe", tmp_path / "x.exe")
    c.get(f)
    thread = c._watcher._thread
    c.close()
    assert not thread.is_alive() and not c.watching
    install("tables_translation.exe", f)
    os.utime(f, ns=(1, 1))
    assert c.get(f)["OriginalFilename"] == "fr.exe"  # checked with stat from now on


@pytest.mark.parametrize("watch", [True, False])
@linux_only
def test_sensor_config_reaches_the_cache(tmp_path, watch):
    from sensor import app, config
    from sensor.events import ProcessEvent
    install("basic64.exe", tmp_path / "img" / "tool.exe")
    cfgfile = tmp_path / "sensor.toml"
    cfgfile.write_text('[source]\nkind = "replay"\n[source.replay]\npaths = ["rec.jsonl"]\n'
                       f'[enrich.pe]\nwatch = {str(watch).lower()}\n'
                       f'path_map = {{ "C:\\\\Tools\\\\" = "{tmp_path / "img"}" }}\n')
    parts = app.build(config.load(str(cfgfile)), with_source=False, with_delivery=False)
    for _ in range(3):
        e = ProcessEvent({"Image": "C:\\Tools\\tool.exe"})
        parts.enricher(e)
        assert e.resolve("OriginalFileName") == "basic.exe"
    st = parts.enricher.stats()
    assert (st["misses"], st["hits"], st["watched_hits"]) == (1, 2, 2 if watch else 0)
    parts.enricher.close()
    assert parts.enricher.stats()["watched_dirs"] == 0
