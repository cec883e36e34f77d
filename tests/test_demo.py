"""End to end, as `make demo` runs it: receiver (real TLS) + `etw-sensor run` in its own
process + the bundled demo config and recording. The receiver must get exactly the
expected alerts, each once."""
from __future__ import annotations

import pytest

from sensor.commands.demo import run_demo

EXPECTED = {
    # (Image, how the rule matched)
    "C:\\Windows\\System32\\wbem\\mofcomp.exe": None,           # PR #6204 + ART: two alerts
    "C:\\Users\\Public\\renamed_tool.exe": "mofcomp.exe",       # only via the PE resource
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    pytest.importorskip("cryptography", reason="the local receiver generates certificates with it")
    return run_demo(str(tmp_path_factory.mktemp("demo")), timeout=180)


def test_receiver_got_exactly_the_expected_alerts(docs):
    got = sorted((d["process"]["executable"], d["process"]["command_line"]) for d in docs)
    assert got == sorted([
        ("C:\\Users\\Public\\renamed_tool.exe", "renamed_tool.exe C:\\Users\\Public\\persist.mof"),
        ("C:\\Windows\\System32\\wbem\\mofcomp.exe", '"mofcomp.exe" "C:\\Windows\\TEMP\\tmpEE20.tmp"'),
        ("C:\\Windows\\System32\\wbem\\mofcomp.exe",
         '"C:\\windows\\system32\\wbem\\mofcomp.exe" C:\\AtomicRedTeam\\atomics\\T1546.003\\src\\T1546.003.mof'),
    ])
    assert len({d["event"]["id"] for d in docs}) == 3          # each alert once


def test_renamed_binary_caught_by_original_file_name(docs):
    [renamed] = [d for d in docs if d["process"]["executable"].endswith("renamed_tool.exe")]
    assert renamed["process"]["pe"]["original_file_name"] == "mofcomp.exe"
    assert renamed["rule"]["name"] == "Potential Suspicious Mofcomp Execution"


def test_wmiprvse_compile_filtered(docs):
    assert not any("provider.mof" in (d["process"]["command_line"] or "") for d in docs)


def test_demo_printout_has_no_none(docs):
    import io

    from sensor.commands.demo import show
    buf = io.StringIO()
    show(docs, out=buf)
    text = buf.getvalue()
    assert "None" not in text and "user -" in text     # the first start's user is not known
