"""The pure parts of a reload, each on its own: which settings changed and which of them
apply live, the watched files' signature, the rule pack update poller and its saved metadata
(README, "Running a fleet": "Distribute and reload"). tests/test_reload.py runs whole reloads."""
from __future__ import annotations

import errno
import gc
import http.server
import json
import os
import time

import pytest

from sensor.daemon import reload as reload_mod
from sensor.daemon.config import parse
from sensor.detect.ir import Predicate, Rule
from sensor.detect.pack import encode_pack
from .https_server import serve_https, stop_https


def _cfg(tmp_path, rules: dict | None = None, **sections):
    raw = {"sensor": {"data_dir": str(tmp_path / "data"), "control": False},
           "rules": {"watch_s": 0, **(rules or {})}, **sections}
    return parse(raw, "<test>")


def _rules(n: int, tag: str = "") -> list[Rule]:
    return [Rule(id=f"r{tag}{i}", title=f"rule {tag} {i} " + "t" * 40,
                 predicates=(Predicate("Image", "endswith", (f"\\p{i}.exe",)),), condition=("pred", 0))
            for i in range(n)]


# -- loading -----------------------------------------------------------------------------------

def test_the_fetched_pack_is_a_rule_path_only_while_an_update_url_is_configured(tmp_path):
    # A pack left in the data folder by an earlier [rules.update] url is not loaded once the
    # url is removed from the config: only the configured paths are.
    cfg = _cfg(tmp_path, {"paths": [str(tmp_path / "a.yml")]})
    os.makedirs(cfg.sensor.data_dir)
    with open(reload_mod.update_pack_path(cfg), "wb") as fh:
        fh.write(encode_pack(_rules(1)))
    assert reload_mod.rule_paths(cfg) == [str(tmp_path / "a.yml")]
    with_url = _cfg(tmp_path, {"paths": [str(tmp_path / "a.yml")],
                               "update": {"url": "https://rules.example/p.pack"}})
    assert reload_mod.rule_paths(with_url) == [str(tmp_path / "a.yml"),
                                               reload_mod.update_pack_path(with_url)]


def test_a_refusal_names_what_it_refuses_at_start_and_at_a_reload(tmp_path):
    # Fail closed (README, "Fail closed" and "Distribute and reload"): at start the sensor does
    # not start, at a reload it does not swap in the set; each says how to opt in to "skip".
    cfg = _cfg(tmp_path, {"paths": [str(tmp_path / "missing.yml")], "builtin": False})
    start = reload_mod.load_configured(cfg)
    assert not start.rules and "no such file" in start.errors[0]
    assert "does not start without rules it was given" in start.errors[-1]
    assert 'on_error = "skip" to start without them' in start.errors[-1]
    again = reload_mod.load_configured(cfg, reloading=True)
    assert "does not swap in a rule set without rules it was given" in again.errors[-1]
    assert 'on_error = "skip" to accept one without them' in again.errors[-1]
    assert "start" not in again.errors[-1]


def test_a_bad_placeholders_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "placeholders.yml"
    bad.write_text("admins: [unclosed\n")
    cfg = _cfg(tmp_path, {"placeholders": str(bad)})
    out = reload_mod.load_configured(cfg)
    assert len(out.errors) == 1 and out.errors[0].startswith("rules.placeholders: ")
    assert "YAML syntax error" in out.errors[0] and not out.rules


def test_no_rules_at_all_is_refused(tmp_path):
    out = reload_mod.load_configured(_cfg(tmp_path, {"builtin": False}))
    assert out.errors == ["rules: no rules to run (builtin = false and no rule loaded)"]


CORRELATION_YAML = """title: building block
name: a
logsource: {category: process_creation, product: windows}
detection: {sel: {Image|endswith: '\\\\a.exe'}, condition: sel}
---
title: many a
id: 20000000-0000-4000-8000-0000000000aa
correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 30s, condition: {gte: 4}}
"""


def test_a_set_with_correlations_gets_an_engine_with_the_configured_lateness(tmp_path):
    rules = tmp_path / "corr.yml"
    rules.write_text(CORRELATION_YAML)
    cfg = _cfg(tmp_path, {"paths": [str(rules)], "builtin": False},
               correlation={"lateness_s": 2.5})
    loaded = reload_mod.load_configured(cfg)
    assert not loaded.errors and len(loaded.correlations) == 1
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)             # the interpreter's default: not tuned yet
        engine = reload_mod.build_correlator(cfg, loaded)
        # the first set with correlations tunes the collector, as a start with them does
        from sensor.detect.correlate import GC_THRESHOLDS
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*saved)
    assert engine.stats()["lateness_s"] == 2.5
    assert reload_mod.build_correlator(cfg, reload_mod.Loaded(rules=loaded.rules)) is None


def test_exclusions_are_built_only_when_configured(tmp_path):
    from sensor.events import ProcessEvent
    assert reload_mod.build_exclusions(_cfg(tmp_path)) is None
    cfg = _cfg(tmp_path, exclusions=[{"name": "backup", "match": {"image": "*\\backup.exe"}}])
    ex = reload_mod.build_exclusions(cfg)
    assert ex
    assert ex.matching(ProcessEvent({"Image": "C:\\x\\backup.exe"})) == [0]
    assert ex.matching(ProcessEvent({"Image": "C:\\x\\other.exe"})) == []


# -- what changed in the config file ---------------------------------------------------------

def test_a_mapping_that_gains_or_loses_its_first_entry_is_a_change(tmp_path):
    # An empty table and one with an entry flatten to different keys: the change is reported
    # all the same, in both directions (here one that needs a restart).
    a = _cfg(tmp_path)
    b = _cfg(tmp_path, enrich={"pe": {"path_map": {"C:": str(tmp_path)}}})
    live, restart = reload_mod.split_changes(a, b)
    assert live == [] and restart and all(k.startswith("enrich.pe.path_map") for k in restart)
    live, restart = reload_mod.split_changes(b, a)
    assert live == [] and restart and all(k.startswith("enrich.pe.path_map") for k in restart)
    assert reload_mod.changed_keys(a, _cfg(tmp_path)) == []


# -- cheap change detection ------------------------------------------------------------------

def _names(sig) -> list[str]:
    return [os.path.basename(e[0]) for e in sig]


def test_the_signature_lists_every_path_whatever_comes_before_it(tmp_path):
    # a missing path, a file and a folder, in any order: each one is in the signature
    (tmp_path / "one.yml").write_text("x")
    d = tmp_path / "folder"
    d.mkdir()
    (d / "a-notes.txt").write_text("x")               # not a rule file, listed first
    (d / "b.yml").write_text("x")
    (d / "C.YAML").write_text("x")                    # suffixes in any case
    (d / "d.pack").write_text("x")
    paths = [str(tmp_path / "missing.pack"), str(tmp_path / "one.yml"), str(d),
             str(tmp_path / "missing2.yml")]
    sig = reload_mod.stat_signature(paths)
    assert sig[0] == (str(tmp_path / "missing.pack"), "missing")
    assert _names(sig) == ["missing.pack", "one.yml", "C.YAML", "b.yml", "d.pack", "missing2.yml"]
    assert sig[-1] == (str(tmp_path / "missing2.yml"), "missing")


def test_the_signature_watches_subfolders_but_not_hidden_ones(tmp_path):
    # as the loader reads them: sub-folders walked, hidden ones (.git, .svn) skipped
    d = tmp_path / "rules"
    (d / "sub").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "sub" / "x.yml").write_text("x")
    (d / ".git" / "y.yml").write_text("y")
    s0 = reload_mod.stat_signature([str(d)])
    assert _names(s0) == ["x.yml"]
    (d / ".git" / "y.yml").write_text("changed")
    assert reload_mod.stat_signature([str(d)]) == s0
    (d / "sub" / "x.yml").write_text("changed")
    assert reload_mod.stat_signature([str(d)]) != s0


def _fake_folder(monkeypatch, d, count: int):
    """``d`` lists ``count`` rule files that are gone by the time they are stat'ed (a folder
    emptied while the watch walks it); no file is created."""
    real_walk = os.walk
    names = [f"r{i:06d}.yml" for i in range(count)]

    def walk(top, *a, **k):
        if os.fspath(top) == str(d):
            yield str(d), [], list(names)
            return
        yield from real_walk(top, *a, **k)
    monkeypatch.setattr(os, "walk", walk)


def test_the_watch_stats_at_most_100000_files_and_a_vanished_file_is_missing(tmp_path, monkeypatch):
    # README: "at most 100,000 files, past which a warning says the rest are not watched"
    d = tmp_path / "rules"
    d.mkdir()
    _fake_folder(monkeypatch, d, 100_000)
    sig = reload_mod.stat_signature([str(d)])
    assert len(sig) == 100_000 and reload_mod.WATCH_CAPPED not in sig
    assert sig[0] == (str(d / "r000000.yml"), "missing")
    _fake_folder(monkeypatch, d, 100_001)
    sig = reload_mod.stat_signature([str(d)])
    assert len(sig) == 100_001 and sig[-1] == reload_mod.WATCH_CAPPED
    assert sig[-2] == (str(d / "r099999.yml"), "missing")


# -- the update URL ----------------------------------------------------------------------------

class _Server:
    """An HTTPS server whose next answers the test sets; it records each request's target and
    headers."""

    def __init__(self, cert):
        self.answers: list[tuple[int, dict, bytes]] = []
        self.default: tuple[int, dict, bytes] = (404, {}, b"")
        self.requests: list[tuple[str, dict]] = []
        self.drip = 0.0
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, dict(self.headers)))
                status, headers, body = owner.answers.pop(0) if owner.answers else owner.default
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if not owner.drip:
                        self.wfile.write(body)
                        return
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(owner.drip)
                except OSError:
                    return                            # the client gave up

            def log_message(self, *a):
                pass

        self.httpd = serve_https(H, cert)
        self.base = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        stop_https(self.httpd)


@pytest.fixture
def server(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    s = _Server(ca.issue_cert("127.0.0.1"))
    s.ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(s.ca_file)
    yield s
    s.close()


def _poller(tmp_path, server, url_path="/rules.pack", **update) -> reload_mod.UpdatePoller:
    cfg = _cfg(tmp_path, {"update": {"url": server.base + url_path, "ca_file": server.ca_file,
                                     **update}})
    return reload_mod.UpdatePoller(cfg)


def _ok(body: bytes, etag: str) -> tuple[int, dict, bytes]:
    return 200, {"ETag": etag}, body


def test_polls_are_counted_and_a_pack_served_again_is_not_modified(tmp_path, server):
    pack = encode_pack(_rules(3))
    p = _poller(tmp_path, server, "/fleet/rules.pack?channel=stable")
    assert p.stats["polls"] == 0 and p.stats["failures"] == 0 and p.stats["updates"] == 0
    server.answers.append(_ok(pack, '"v1"'))
    assert p.poll() == "updated"
    assert server.requests[-1][0] == "/fleet/rules.pack?channel=stable"      # path and query
    with open(p.dest, "rb") as fh:
        assert fh.read() == pack
    # the same pack under new validators: nothing to reload, the validators are kept
    server.answers.append(_ok(pack, '"v2"'))
    assert p.poll() == "not_modified"
    assert p.stats["not_modified"] == 1 and p.stats["updates"] == 1
    server.answers.append((304, {}, b""))
    assert p.poll() == "not_modified"
    assert server.requests[-1][1].get("If-None-Match") == '"v2"'
    server.answers.append((500, {}, b""))
    assert p.poll() == "error" and p.stats["last_error"] == "HTTP 500"
    assert p.stats["polls"] == 4 and p.stats["failures"] == 1 and p.stats["not_modified"] == 2
    assert p.stats["updates"] == 1


def test_a_compressed_answer_is_refused_not_inflated(tmp_path, server):
    # README ("Distribute and reload"): the answer is taken as sent; the request asks for the
    # identity encoding, and a gzip answer from a server that ignores it is not a pack
    import gzip
    pack = encode_pack(_rules(3))
    p = _poller(tmp_path, server)
    server.answers.append((200, {"ETag": '"z"', "Content-Encoding": "gzip"}, gzip.compress(pack)))
    assert p.poll() == "error"
    assert server.requests[-1][1].get("Accept-Encoding") == "identity"
    assert p.stats["last_error"].startswith("the fetched pack is refused")
    assert not os.path.exists(p.dest)
    server.answers.append(_ok(pack, '"v1"'))                 # the same pack as sent: taken
    assert p.poll() == "updated"


def test_a_url_without_a_path_asks_for_the_root(tmp_path, server):
    p = _poller(tmp_path, server, "")
    assert p.poll() == "error" and p.stats["last_error"] == "HTTP 404"
    assert server.requests[-1][0] == "/"


def test_the_size_cap_is_max_mb_mebibytes(tmp_path, server):
    # [rules.update] max_mb: a pack of exactly the cap is taken, one byte over it is refused
    pack = encode_pack(_rules(200))
    assert len(pack) > 0.01 * 1024 * 1024                 # over the smallest max_mb allowed
    p = _poller(tmp_path / "a", server, max_mb=len(pack) / (1024 * 1024))
    server.answers.append(_ok(pack, '"v1"'))
    assert p.poll() == "updated", p.stats
    q = _poller(tmp_path / "b", server, max_mb=(len(pack) - 1) / (1024 * 1024))
    server.answers.append(_ok(pack, '"v1"'))
    assert q.poll() == "error"
    assert q.stats["last_error"] == f"larger than rules.update.max_mb ({len(pack) - 1} bytes)"
    assert not os.path.exists(q.dest)


def test_a_pack_at_the_cap_is_compared_whole_with_the_kept_copy(tmp_path, server):
    # The kept copy is replaced unless it is byte for byte the fetched pack, even at the cap.
    pack = encode_pack(_rules(200))
    p = _poller(tmp_path, server, max_mb=len(pack) / (1024 * 1024))
    server.answers.append(_ok(pack, '"v1"'))
    assert p.poll() == "updated"
    server.answers.append(_ok(pack, '"v2"'))
    assert p.poll() == "not_modified"                       # the same pack, at the cap
    with open(p.dest, "ab") as fh:                          # a kept copy one byte longer
        fh.write(b"x")
    server.answers.append(_ok(pack, '"v3"'))
    assert p.poll() == "updated"
    with open(p.dest, "rb") as fh:
        assert fh.read() == pack


def test_a_refused_connection_is_reported_once_naming_the_https_port(tmp_path):
    # no port in the URL: 443; a connection refused there is one failure of this poll (the
    # next one is the next poll), reported as such
    with __import__("socket").socket() as s:
        try:
            s.connect(("127.0.0.1", 443))
            pytest.skip("something listens on port 443 here")
        except OSError:
            pass
    cfg = _cfg(tmp_path, {"update": {"url": "https://127.0.0.1/rules.pack", "timeout_s": 5}})
    p = reload_mod.UpdatePoller(cfg)
    assert p.poll() == "error"
    err = p.stats["last_error"]
    assert err.startswith("cannot connect: ") and "port=443" in err, err
    assert p.stats["failures"] == 1 and p.stats["polls"] == 1
    p.close()


def test_a_slow_answer_is_reported_as_such(tmp_path, server):
    server.drip = 0.02                                       # 100 bytes: 2 s, each byte in time
    server.answers.append(_ok(b"x" * 100, '"v1"'))
    p = _poller(tmp_path, server, timeout_s=1)
    assert p.poll() == "error"
    assert p.stats["last_error"] == "the answer took longer than 1 s to read"


def test_an_unreadable_kept_pack_is_replaced_not_raised(tmp_path, server, monkeypatch):
    # Windows: an antivirus or backup may hold the kept pack open; poll never raises
    pack = encode_pack(_rules(2))
    p = _poller(tmp_path, server)
    os.makedirs(os.path.dirname(p.dest), exist_ok=True)
    with open(p.dest, "wb") as fh:
        fh.write(b"an older pack")
    real_open = open

    def locked(path, *a, **k):
        if os.fspath(path) == p.dest:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **k)
    monkeypatch.setattr(reload_mod, "open", locked, raising=False)
    server.answers.append(_ok(pack, '"v1"'))
    assert p.poll() == "updated"
    monkeypatch.undo()
    with open(p.dest, "rb") as fh:
        assert fh.read() == pack


def test_a_pack_that_cannot_be_kept_is_a_failure_with_the_reason(tmp_path, server):
    (tmp_path / "data").write_text("a file where the data folder should be")
    p = _poller(tmp_path, server)
    server.answers.append(_ok(encode_pack(_rules(2)), '"v1"'))
    assert p.poll() == "error"
    assert p.stats["last_error"] == f"cannot keep the pack at {p.dest}: {os.strerror(errno.EEXIST)}"
    assert p.stats["failures"] == 1 and p.stats["updates"] == 0


def _meta(tmp_path, meta, size: int | None = None) -> None:
    os.makedirs(tmp_path / "data", exist_ok=True)
    raw = json.dumps(meta).encode()
    if size is not None:
        meta = dict(meta, pad="")
        raw = json.dumps(meta).encode()
        meta["pad"] = "p" * (size - len(raw))
        raw = json.dumps(meta).encode()
        assert len(raw) == size
    (tmp_path / "data" / (reload_mod.UPDATE_PACK_NAME + ".meta")).write_bytes(raw)


def test_saved_validators_are_used_only_for_the_same_url_and_a_kept_pack(tmp_path, server):
    url = server.base + "/rules.pack"
    os.makedirs(tmp_path / "data")
    pack_file = tmp_path / "data" / reload_mod.UPDATE_PACK_NAME
    pack_file.write_bytes(encode_pack(_rules(1)))
    _meta(tmp_path, {"url": url, "etag": '"v1"'})
    assert _poller(tmp_path, server).stats["etag"] == '"v1"'
    _meta(tmp_path, {"url": server.base + "/other.pack", "etag": '"v1"'})    # another URL
    p = _poller(tmp_path, server)
    assert p.stats["etag"] is None
    assert p.poll() == "error" and "If-None-Match" not in server.requests[-1][1]
    for bad in (b"{not json", b"[1, 2]", b"\xff\xfe"):                          # never raises
        (tmp_path / "data" / (reload_mod.UPDATE_PACK_NAME + ".meta")).write_bytes(bad)
        assert _poller(tmp_path, server).stats["etag"] is None
    # the kept pack is gone: the validators would only get a 304 for a pack the sensor lacks
    _meta(tmp_path, {"url": url, "etag": '"v1"'})
    pack_file.unlink()
    p = _poller(tmp_path, server)
    assert p.stats["etag"] is None
    assert p.poll() == "error" and "If-None-Match" not in server.requests[-1][1]


def test_the_saved_validators_file_is_read_up_to_64_kib(tmp_path, server):
    # docs/hostile-inputs.md, "The update poller's saved validators": a bigger file is ignored
    url = server.base + "/rules.pack"
    os.makedirs(tmp_path / "data")
    (tmp_path / "data" / reload_mod.UPDATE_PACK_NAME).write_bytes(encode_pack(_rules(1)))
    _meta(tmp_path, {"url": url, "etag": '"v1"'}, size=65536)
    assert _poller(tmp_path, server).stats["etag"] == '"v1"'
    _meta(tmp_path, {"url": url, "etag": '"v1"'}, size=65537)
    assert _poller(tmp_path, server).stats["etag"] is None


def test_closing_a_poller_that_never_polled(tmp_path, server):
    p = _poller(tmp_path, server)
    p.close()                                   # a stop before the first poll
    q = _poller(tmp_path / "q", server)
    assert q.poll() == "error"
    q.close()
    assert q.poll() == "error"                  # closed: no fetch, no exception


def test_the_last_error_keeps_the_first_300_characters_and_the_log_the_whole(tmp_path, caplog):
    # README, the status table: rules.update.last_error
    token = tmp_path / ("t" * 200) / ("u" * 200)
    cfg = _cfg(tmp_path, {"update": {"url": "https://127.0.0.1:9/rules.pack",
                                     "token_file": str(token)}})
    p = reload_mod.UpdatePoller(cfg)
    with caplog.at_level("WARNING", logger="sensor.reload"):
        assert p.poll() == "error"
    said = [m for m in caplog.messages if "rule update from" in m]
    assert len(said) == 1 and str(token) in said[0]
    whole = said[0].split(" failed: ", 1)[1].rsplit(" (the current rules keep running)", 1)[0]
    assert len(whole) > 300 and p.stats["last_error"] == whole[:300]
