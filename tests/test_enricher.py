"""Pipeline enrichment: lazy PE version fields, path maps, host name."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sensor.enrich.enricher import Enricher, map_path
from sensor.events import ProcessEvent

DEMO = Path(__file__).resolve().parents[1] / "sensor" / "data" / "demo"


def lookup_counting(calls):
    def lookup(path):
        calls.append(path)
        return {"OriginalFilename": "mofcomp.exe", "CompanyName": "C", "ProductName": "P",
                "FileDescription": "D", "FileVersion": "1.0"}
    return lookup


def test_map_path_longest_prefix_case_insensitive():
    m = {"C:\\Users\\": "/a", "C:\\Users\\Public\\": "/b/"}
    assert map_path("c:\\users\\public\\x\\y.exe", m) == "/b/x/y.exe"
    assert map_path("C:\\Users\\bob\\z.exe", m) == "/a/bob/z.exe"
    assert map_path("D:\\z.exe", m) is None


def test_pe_fields_are_lazy_and_read_once():
    calls = []
    enr = Enricher(pe_lookup=lookup_counting(calls), path_map={"C:\\Users\\Public\\": "/x"})
    ev = ProcessEvent(Image="C:\\Users\\Public\\t.exe", Company="From source")
    enr(ev)
    assert calls == [] and ev["OriginalFileName"] is None        # nothing read yet
    assert ev.resolve("OriginalFileName") == "mofcomp.exe"
    assert ev["Product"] == "P" and ev["Description"] == "D"        # filled by the same read
    assert ev["Company"] == "From source"                           # a source value is kept
    ev.resolve_all()
    assert calls == ["/x/t.exe"]


@pytest.mark.skipif(sys.platform == "win32", reason="checks replay off Windows")
def test_recorded_windows_paths_are_not_read_without_a_map():
    calls = []
    enr = Enricher(pe_lookup=lookup_counting(calls))
    ev = ProcessEvent(Image="C:\\Windows\\System32\\cmd.exe")
    enr(ev)
    assert not ev.pending and ev.resolve("OriginalFileName") is None and calls == []


def test_real_pe_file_through_the_cache():
    pe = pytest.importorskip("sensor.enrich.pe")
    cache = pe.VersionInfoCache(maxsize=8)
    enr = Enricher(pe_lookup=cache.lookup, path_map={"C:\\Users\\Public\\": str(DEMO)},
                   pe_stats=cache.stats)
    for _ in range(3):
        ev = ProcessEvent(Image="C:\\Users\\Public\\renamed_tool.exe")
        enr(ev)
        assert ev.resolve("OriginalFileName") == "mofcomp.exe"
    st = enr.stats()
    assert st["reads"] == 3 and st["found"] == 3 and st["hits"] == 2 and st["misses"] == 1
    assert st["hit_rate"] == pytest.approx(2 / 3)


def test_host_name_filled_only_when_missing():
    enr = Enricher(hostname="WS9")
    a, b = ProcessEvent(Image="x"), ProcessEvent(Image="x", Computer="OTHER")
    enr(a), enr(b)
    assert a["Computer"] == "WS9" and b["Computer"] == "OTHER"


def test_resolve_all_ends_when_a_deferred_field_got_its_value_meanwhile():
    # A field deferred to a resolver and then set directly keeps the stored value; finishing the
    # event must not spin on the resolver that no longer applies.
    import threading
    from sensor.events import ProcessEvent

    ev = ProcessEvent({"Image": "C:\\x\\a.exe"})
    calls = []
    ev.set_pending("OriginalFileName", lambda e, n: calls.append(n) or "b.exe")
    ev.set_pending("Image", lambda e, n: calls.append(n) or "C:\\other.exe")
    done = threading.Event()
    t = threading.Thread(target=lambda: (ev.resolve_all(), done.set()), daemon=True)
    t.start()
    assert done.wait(30), "resolve_all did not return"
    assert ev["Image"] == "C:\\x\\a.exe" and ev["OriginalFileName"] == "b.exe"
    assert calls == ["OriginalFileName"] and not ev.pending
