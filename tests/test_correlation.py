"""Sigma correlation rules: the specification's own examples, loading, references, generate,
bounded state, lateness, persistence, and correlations in `scan`, `run` and packs."""
from __future__ import annotations

import gc
import json
import textwrap

import pytest

from sensor.detect.correlate import CorrelationEngine, parse_time_ms
from sensor.detect.loader import load_rules
from sensor.detect.matcher import create
from sensor.events import ProcessEvent

T0 = parse_time_ms("2025-01-01 12:00:00.000")


def utc(ms: int) -> str:
    import datetime as dt
    t = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (t.microsecond // 1000)


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def stub(ident=None, name=None, image="x.exe", extra="") -> str:
    """A process_creation rule standing in for a rule a spec example references."""
    out = f"title: stub {name or ident}\n"
    if ident:
        out += f"id: {ident}\n"
    if name:
        out += f"name: {name}\n"
    return out + ("logsource:\n    category: process_creation\n    product: windows\n"
                  f"detection:\n    selection:\n        Image|endswith: '\\{image}'\n{extra}"
                  "    condition: selection\n")


def run(report, events, **kw):
    """(base alerts, correlation alerts, engine) for ``events`` = [(ms offset, fields)]."""
    rules = report.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, report.correlations, max_evidence=10**6, **kw)
    base, corr = [], []
    for off, fields in events:
        ev = ProcessEvent(dict(fields, UtcTime=utc(T0 + off)))
        matched = m.match(ev)
        base += [rules[i].id for i in matched if i not in eng.silent]
        corr += eng.feed(ev, matched)
    corr += eng.flush()
    return base, corr, eng


def loaded(tmp_path, *docs, placeholders=None):
    p = write(tmp_path, "rules.yml", "\n---\n".join(textwrap.dedent(d).strip() + "\n" for d in docs))
    return load_rules([p], builtin=False, placeholders=placeholders)


# ---------------------------------------------------------------------------------
# The specification's examples (sigma-correlation-rules-specification.md, 2.1.0).

FAILED = "5638f7c0-ac70-491d-8465-2a65075e0d86"


def test_spec_event_count_many_failed_logins(tmp_path):
    rep = loaded(tmp_path, stub(FAILED, image="fail.exe"), """
        title: Many failed logins
        id: 0e95725d-7320-415d-80f7-004da920fc11
        correlation:
            type: event_count
            rules:
                - 5638f7c0-ac70-491d-8465-2a65075e0d86
            group-by:
                - ComputerName
            timespan: 1h
            condition:
                gte: 100
        """)
    assert not rep.rejected and len(rep.correlations) == 1
    fail = {"Image": "C:\\fail.exe", "ComputerName": "PC1"}
    # 100 within the hour: one alert, at the 100th, counting 100
    _, alerts, _ = run(rep, [(i * 36_000, fail) for i in range(100)])
    assert [a["correlation"]["value"] for a in alerts] == [100]
    assert alerts[0]["correlation"]["group"] == {"ComputerName": "pc1"}
    # 99: none; 100 spread over one hour and one second: none (the window slides)
    assert run(rep, [(i * 36_000, fail) for i in range(99)])[1] == []
    spread = [(0, fail)] + [(3_601_000 - (98 - i) * 1000, fail) for i in range(99)]
    assert run(rep, spread)[1] == []
    # the base rule makes no alert of its own (generate defaults to false)
    assert run(rep, [(0, fail)])[0] == []


def test_spec_value_count_failed_login_users(tmp_path):
    rep = loaded(tmp_path, stub(FAILED, image="fail.exe"), """
        title: Failed login
        id: 0e95725d-7320-415d-80f7-004da920fc12
        correlation:
            type: value_count
            rules:
                - 5638f7c0-ac70-491d-8465-2a65075e0d86
            group-by:
                - ComputerName
                - WorkstationName
            timespan: 1d
            condition:
                field: User
                gte: 100
        """)
    ev = lambda u, ws="WS1": {"Image": "C:\\fail.exe", "ComputerName": "PC1",  # noqa: E731
                              "WorkstationName": ws, "User": u}
    _, alerts, _ = run(rep, [(i * 1000, ev(f"user{i}")) for i in range(100)])
    assert len(alerts) == 1 and alerts[0]["correlation"]["value"] == 100
    # 99 distinct users (and repeats of them) are not 100 values
    assert run(rep, [(i * 1000, ev(f"user{i % 99}")) for i in range(150)])[1] == []
    # two workstations are two groups
    assert run(rep, [(i * 1000, ev(f"user{i}", f"WS{i % 2}")) for i in range(150)])[1] == []


RECON = [stub(name=f"recon_cmd_{x}", image=img)
         for x, img in (("a", "whoami.exe"), ("b", "net.exe"), ("c", "ipconfig.exe"))]


def test_spec_temporal_recon(tmp_path):
    # The spec's fragment has no title; a title is mandatory, so it gets one here.
    rep = loaded(tmp_path, *RECON, """
        title: recon commands
        correlation:
            type: temporal
            rules:
                - recon_cmd_a
                - recon_cmd_b
                - recon_cmd_c
            group-by:
                - ComputerName
                - User
            timespan: 5m
        """)
    assert not rep.rejected
    who = lambda img, user="bob", t=0: (t, {"Image": f"C:\\{img}", "ComputerName": "PC1",  # noqa: E731
                                            "User": user})
    _, alerts, _ = run(rep, [who("net.exe", t=0), who("ipconfig.exe", t=60_000),
                             who("whoami.exe", t=300_000)])
    assert len(alerts) == 1 and alerts[0]["correlation"]["value"] == 3
    assert run(rep, [who("net.exe", t=0), who("ipconfig.exe", t=60_000),
                     who("whoami.exe", "eve", 120_000)])[1] == []
    assert run(rep, [who("net.exe", t=0), who("ipconfig.exe", t=60_000),
                     who("whoami.exe", t=300_001)])[1] == []


def test_spec_temporal_ordered_and_the_chained_example(tmp_path):
    # "Failed Logins Followed by Successful Login" as written (four documents): its base rules
    # read Windows Security logons, so on this sensor the whole chain is not applicable.
    spec = """
    title: Correlation - Multiple Failed Logins Followed by Successful Login
    id: b180ead8-d58f-40b2-ae54-c8940995b9b6
    status: experimental
    description: Detects multiple failed logins by a single user followed by a successful login of that user
    references:
        - https://reference.com
    author: Florian Roth (Nextron Systems)
    date: 2023-06-16
    correlation:
        type: temporal_ordered
        rules:
            - multiple_failed_login
            - successful_login
        group-by:
            - User
        timespan: 10m
    falsepositives:
        - Unlikely
    level: high
    ---
    title: Multiple failed logons
    id: a8418a5a-5fc4-46b5-b23b-6c73beb19d41
    description: Detects multiple failed logins within a certain amount of time
    name: multiple_failed_login
    correlation:
        type: event_count
        rules:
            - failed_login
        group-by:
            - User
        timespan: 10m
        condition:
            gte: 10
    ---
    title: Single failed login
    id: 53ba33fd-3a50-4468-a5ef-c583635cfa92
    name: failed_login
    logsource:
        product: windows
        service: security
    detection:
        selection:
            EventID:
                - 529
                - 4625
        condition: selection
    ---
    title: Successful login
    id: 4d0a2c83-c62c-4ed4-b475-c7e23a9269b8
    description: Detects a successful login
    name: successful_login
    logsource:
        product: windows
        service: security
    detection:
        selection:
            EventID:
                - 528
                - 4624
        condition: selection
    """
    p = write(tmp_path, "chain.yml", textwrap.dedent(spec))
    rep = load_rules([p], builtin=False)
    assert not rep.correlations and not rep.rejected
    reasons = [r.reason for r in rep.not_applicable]
    outer = [r for r in reasons if "[correlation b180ead8" in r]
    inner = [r for r in reasons if "[correlation a8418a5a" in r]
    assert "'successful_login' names a rule that is not applicable" in outer[0]
    assert "'failed_login' names a rule that is not applicable" in inner[0]
    # The same documents with a process_creation logsource run as the spec describes.
    p.write_text(textwrap.dedent(spec).replace("    service: security\n",
                                               "    category: process_creation\n"))
    rep = load_rules([p], builtin=False)
    assert not rep.rejected and len(rep.correlations) == 2
    failed = {"EventID": "4625", "User": "alice"}
    ok = {"EventID": "4624", "User": "alice"}
    base, alerts, _ = run(rep, [(i * 1000, failed) for i in range(10)] + [(60_000, ok)])
    assert base == []                   # building blocks stay quiet
    assert [a["rule"]["id"] for a in alerts] == ["b180ead8-d58f-40b2-ae54-c8940995b9b6"]
    a = alerts[0]
    assert a["rule"]["level"] == "high" and a["correlation"]["group"] == {"User": "alice"}
    assert a["correlation"]["event_count"] == 11 and len(a["correlation"]["alert_ids"]) == 1
    # success before the tenth failure: the ordered chain does not hold
    assert run(rep, [(i * 1000, failed) for i in range(9)] + [(20_000, ok), (30_000, failed)]
               )[1] == []
    # nine failures only
    assert run(rep, [(i * 1000, failed) for i in range(9)] + [(60_000, ok)])[1] == []


def test_spec_value_sum_and_avg(tmp_path):
    rep = loaded(tmp_path, stub(name="website_access", image="curl.exe"), """
        title: Possible Exfiltration to Website
        correlation:
            type: value_sum
            rules:
                - website_access
            group-by:
                - SourceIP
                - User
            timespan: 1h
            condition:
                field: bytes_sent
                gt: 1000000
        """, stub(name="rule_a_id", image="nc.exe"), """
        title: Suspicious average network traffic
        correlation:
            type: value_avg
            rules:
                - rule_a_id
            group-by:
                - SourceIP
                - User
            timespan: 24h
            condition:
                field: BytesOut
                gt: 500
        """)
    assert not rep.rejected and len(rep.correlations) == 2
    up = lambda n: {"Image": "C:\\curl.exe", "SourceIP": "10.0.0.5", "User": "bob",  # noqa: E731
                    "bytes_sent": str(n)}
    _, alerts, _ = run(rep, [(0, up(600_000)), (1_800_000, up(400_000)), (3_000_000, up(1))])
    assert [a["correlation"]["value"] for a in alerts] == [1_000_001]
    nc = lambda n: {"Image": "C:\\nc.exe", "SourceIP": "10.0.0.5", "User": "bob",  # noqa: E731
                    "BytesOut": n}
    _, alerts, _ = run(rep, [(0, nc(400)), (1000, nc(700)), (2000, nc("junk"))])
    assert [a["correlation"]["value"] for a in alerts] == [550, 550]


def test_spec_value_percentile_as_written_is_refused_and_works_with_a_percentile(tmp_path):
    doc = """
        title: A computer spawned a processes name in the last 24h than 1% of all the processes.
        correlation:
            type: value_percentile
            rules:
                - process_creation
            group-by:
                - ComputerName
            timespan: 24h
            condition:
                field: image
                lte: 1
        """
    rep = loaded(tmp_path, stub(name="process_creation", image="a.exe"), doc)
    assert not rep.correlations
    assert "condition.percentile" in rep.rejected[0].reason and rep.rejected[0].line == 20
    rep = loaded(tmp_path, stub(name="process_creation", image="a.exe"),
                 doc.replace("lte: 1", "lte: 1\n                percentile: 50"))
    assert len(rep.correlations) == 1
    _, alerts, _ = run(rep, [(i, {"Image": "C:\\a.exe", "ComputerName": "PC1", "image": v})
                             for i, v in enumerate([0, 1, 5])])
    assert [a["correlation"]["value"] for a in alerts] == [0, 0.5, 1]


def test_spec_aliases_example(tmp_path):
    # The spec's example rules (no title, no logsource) completed so they load; the
    # correlation's `title: —` and `id: —` are taken as written.
    rep = loaded(tmp_path, """
        title: internal error
        name: internal_error
        logsource:
            category: process_creation
        detection:
            selection:
                http.response.status_code: 500
            condition: selection
        """, """
        title: new connection
        name: new_network_connection
        logsource:
            category: process_creation
        detection:
            selection:
                event.category: network
                event.type: connection
                event.outcome: success
            condition: selection
        """, """
        title: —
        id: —
        correlation:
            type: temporal
            rules:
                - internal_error
                - new_network_connection
            group-by:
                - internal_ip
                - remote_ip
            timespan: 10s
            aliases:
                internal_ip:
                    internal_error: destination.ip
                    new_network_connection: source.ip
                remote_ip:
                    internal_error: source.ip
                    new_network_connection: destination.ip
        """)
    assert not rep.rejected and len(rep.correlations) == 1
    err = {"http.response.status_code": "500", "destination.ip": "10.0.0.1", "source.ip": "8.8.8.8"}
    conn = {"event.category": "network", "event.type": "connection", "event.outcome": "success",
            "source.ip": "10.0.0.1", "destination.ip": "8.8.8.8"}
    _, alerts, _ = run(rep, [(0, err), (10_000, conn)])
    assert len(alerts) == 1
    assert alerts[0]["correlation"]["group"] == {"internal_ip": "10.0.0.1", "remote_ip": "8.8.8.8"}
    assert run(rep, [(0, err), (10_001, conn)])[1] == []
    swapped = dict(conn, **{"source.ip": "8.8.8.8", "destination.ip": "10.0.0.1"})
    assert run(rep, [(0, err), (1000, swapped)])[1] == []


def test_spec_condition_range_is_an_and(tmp_path):
    # "To define a range, you can use the conjunction 'AND' in the mapping" (pySigma refuses it)
    rep = loaded(tmp_path, stub(FAILED, image="fail.exe"), """
        title: 101 to 200
        correlation:
            type: event_count
            rules:
                - 5638f7c0-ac70-491d-8465-2a65075e0d86
            timespan: 1h
            condition:
                gt: 100
                lte: 200
        """)
    _, alerts, _ = run(rep, [(i, {"Image": "C:\\fail.exe"}) for i in range(205)])
    assert [a["correlation"]["value"] for a in alerts] == list(range(101, 201))
    assert alerts[0]["correlation"]["condition"] == {"gt": 100, "lte": 200}


# ---------------------------------------------------------------------------------
# Loading: references, generate, errors with file:line.

CORR = """
title: pair
id: 10000000-0000-4000-8000-0000000000aa
correlation:
    type: temporal
    rules:
        - {a}
        - {b}
    timespan: 1m
"""


def test_references_by_id_in_any_spelling_and_by_name_across_files(tmp_path):
    write(tmp_path, "a.yml", stub("00000000-0000-4000-8000-00000000000a", "first", "a.exe"))
    write(tmp_path, "b.yml", stub("00000000-0000-4000-8000-00000000000b", "second", "b.exe"))
    write(tmp_path, "c.yml", CORR.format(a="'{00000000-0000-4000-8000-00000000000A}'", b="second"))
    rep = load_rules([tmp_path], builtin=False)
    assert not rep.rejected
    c = rep.correlations[0]
    assert [t.id for t in c.targets] == ["00000000-0000-4000-8000-00000000000a",
                                         "00000000-0000-4000-8000-00000000000b"]
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\b.exe"}), (30_000, {"Image": "C:\\a.exe"})])
    assert len(alerts) == 1


@pytest.mark.parametrize("refs,expect", [
    (("nope", "second"), "'nope' names no loaded rule"),
    (("dup", "second"), "ambiguous"),
    (("bad_rule", "second"), "rejected"),
    (("linux", "second"), "not applicable"),
])
def test_unusable_references_are_explained(tmp_path, refs, expect):
    write(tmp_path, "b.yml", stub("00000000-0000-4000-8000-00000000000b", "second", "b.exe"))
    write(tmp_path, "d1.yml", stub(name="dup", image="d.exe"))
    write(tmp_path, "d2.yml", stub(name="dup", image="e.exe"))
    write(tmp_path, "bad.yml", stub(name="bad_rule").replace("endswith", "containz"))
    write(tmp_path, "linux.yml", stub(name="linux").replace("product: windows", "product: linux"))
    write(tmp_path, "c.yml", CORR.format(a=refs[0], b=refs[1]))
    rep = load_rules([tmp_path], builtin=False)
    assert not rep.correlations
    found = [r for r in rep.rejected + rep.not_applicable if "[correlation " in r.reason]
    assert len(found) == 1 and expect in found[0].reason, found
    assert found[0].path.endswith("c.yml") and found[0].line == 1
    if expect == "not applicable":
        assert found[0] in rep.not_applicable


def test_cycles_and_self_references_are_refused(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: x
        name: x
        correlation: {type: event_count, rules: [y], timespan: 1m, condition: {gte: 1}}
        """, """
        title: y
        name: y
        correlation: {type: event_count, rules: [x, a], timespan: 1m, condition: {gte: 1}}
        """, """
        title: z
        name: z
        correlation: {type: event_count, rules: [z], timespan: 1m, condition: {gte: 1}}
        """, """
        title: top
        correlation: {type: event_count, rules: [y], timespan: 1m, condition: {gte: 1}}
        """)
    assert not rep.correlations
    reasons = " | ".join(r.reason for r in rep.rejected)
    assert "cycle" in reasons and "itself" in reasons and reasons.count("[correlation") == 4


@pytest.mark.parametrize("first, why", [
    ("nope", "'nope' names no loaded rule"),
    ("dup", "'dup' is ambiguous"),
    ("linux", "'linux' names a rule that is not applicable"),
    ("bad_rule", "'bad_rule' names a rule that is rejected"),
    ("self", "'self' names the correlation itself"),
])
def test_a_correlation_with_several_bad_references_is_refused_for_the_first(tmp_path, first, why):
    # pySigma resolves `rules:` in order and stops at the first reference it cannot use;
    # the reason is that one, and so is the list it lands in (rejected or not applicable)
    write(tmp_path, "d1.yml", stub(name="dup", image="d.exe"))
    write(tmp_path, "d2.yml", stub(name="dup", image="e.exe"))
    write(tmp_path, "bad.yml", stub(name="bad_rule").replace("endswith", "containz"))
    write(tmp_path, "linux.yml", stub(name="linux").replace("product: windows", "product: linux"))
    write(tmp_path, "c.yml", "title: c\nname: self\ncorrelation: {type: temporal, rules: "
                             f"[{first}, also_nope], timespan: 1m}}\n")
    rep = load_rules([tmp_path], builtin=False)
    assert not rep.correlations
    (found,) = [r for r in rep.rejected + rep.not_applicable if "[correlation " in r.reason]
    assert why in found.reason and "also_nope" not in found.reason, found
    assert (found in rep.not_applicable) == (first == "linux")


@pytest.mark.parametrize("child_ref, kind, why", [
    ("linux", "not_applicable", "which is not applicable"),
    ("nope", "rejected", "which is refused"),
])
def test_a_correlation_over_an_unusable_correlation_is_unusable_the_same_way(tmp_path, child_ref,
                                                                            kind, why):
    # a reference to a correlation that cannot be used makes the parent (and its parent)
    # unusable with the child's kind, naming the child; a sibling chain is not touched
    rep = loaded(tmp_path, stub(name="a", image="a.exe"),
                 stub(name="linux").replace("product: windows", "product: linux"), f"""
        title: child
        id: child-1
        name: child
        correlation: {{type: event_count, rules: [{child_ref}], timespan: 1m, condition: {{gte: 1}}}}
        """, """
        title: parent
        id: parent-1
        name: parent
        correlation: {type: event_count, rules: [child], timespan: 1m, condition: {gte: 1}}
        """, """
        title: grandparent
        id: grandparent-1
        correlation: {type: event_count, rules: [parent], timespan: 1m, condition: {gte: 1}}
        """, """
        title: fine
        id: fine-1
        name: fine
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 1}}
        """, """
        title: over fine
        id: over-fine-1
        correlation: {type: event_count, rules: [fine], timespan: 1m, condition: {gte: 1}}
        """)
    assert [c.id for c in rep.correlations] == ["fine-1", "over-fine-1"]
    unusable = [r for r in getattr(rep, kind) if "[correlation " in r.reason]
    other = [r for r in rep.rejected + rep.not_applicable
             if "[correlation " in r.reason and r not in unusable]
    assert not other, other
    by = {r.reason.rsplit("[correlation ", 1)[1].split(":")[0]: r.reason for r in unusable}
    assert sorted(by) == ["child-1", "grandparent-1", "parent-1"]
    assert f"references correlation child-1 (child), {why}" in by["parent-1"]
    assert f"references correlation parent-1 (parent), {why}" in by["grandparent-1"]
    assert "cycle" not in " ".join(by.values())


def test_a_name_two_documents_share_is_a_warning_with_their_count(tmp_path):
    rep = loaded(tmp_path, stub(name="dup", image="a.exe"), stub(name="dup", image="b.exe"),
                 stub(name="three", image="c.exe"), stub(name="three", image="d.exe"),
                 stub(name="alone", image="e.exe"), stub(ident="no-name-1", image="f.exe"),
                 stub(ident="no-name-2", image="g.exe"), """
        title: c
        name: three
        correlation: {type: event_count, rules: [alone], timespan: 1m, condition: {gte: 1}}
        """)
    shared = sorted(w.reason for w in rep.warnings if "is used by" in w.reason)
    assert shared == [
        "name 'dup' is used by 2 rules or correlations (a correlation that references it is refused)",
        "name 'three' is used by 3 rules or correlations (a correlation that references it is "
        "refused)"], rep.warnings


def test_an_ambiguous_reference_names_what_shares_the_name(tmp_path):
    # a rule, a correlation and a rejected rule named alike: the reason says which is which
    write(tmp_path, "r.yml", stub("00000000-0000-4000-8000-0000000000d1", "dup", "d.exe"))
    write(tmp_path, "bad.yml", stub("00000000-0000-4000-8000-0000000000d2", "dup")
          .replace("endswith", "containz"))
    write(tmp_path, "c.yml", "title: the correlation\nid: 10000000-0000-4000-8000-0000000000d3\n"
                             "name: dup\ncorrelation: {type: event_count, rules: [x], "
                             "timespan: 1m, condition: {gte: 1}}\n---\n"
                             "title: over dup\ncorrelation: {type: event_count, rules: [dup], "
                             "timespan: 1m, condition: {gte: 1}}\n")
    write(tmp_path, "x.yml", stub(name="x", image="x.exe"))
    rep = load_rules([tmp_path], builtin=False)
    (found,) = [r for r in rep.rejected if "over dup" in r.reason]
    assert "'dup' is ambiguous" in found.reason
    assert "rule 00000000-0000-4000-8000-0000000000d1 (stub dup)" in found.reason
    assert ("correlation 10000000-0000-4000-8000-0000000000d3 (the correlation)"
            in found.reason)
    assert "00000000-0000-4000-8000-0000000000d2 (" in found.reason and "bad.yml" in found.reason


def test_an_ambiguous_reference_names_three_of_the_documents_at_most(tmp_path):
    # docs/sigma.md ("References"): the message is bounded whatever the rule set holds
    for i in range(5):
        write(tmp_path, f"r{i}.yml", stub(f"00000000-0000-4000-8000-0000000000e{i}", "dup",
                                          f"d{i}.exe"))
    write(tmp_path, "c.yml", "title: over dup\ncorrelation: {type: event_count, rules: [dup], "
                             "timespan: 1m, condition: {gte: 1}}\n")
    rep = load_rules([tmp_path], builtin=False)
    (found,) = [r for r in rep.rejected if "over dup" in r.reason]
    assert "'dup' is ambiguous" in found.reason
    assert found.reason.count("rule 00000000-0000-4000-8000-0000000000e") == 3


def test_an_ambiguous_reference_to_a_rejected_rule_without_an_id_names_it_by_name(tmp_path):
    write(tmp_path, "r.yml", stub(name="dup", image="d.exe"))
    write(tmp_path, "bad.yml", stub(name="dup").replace("endswith", "containz"))
    write(tmp_path, "c.yml", "title: over dup\ncorrelation: {type: event_count, rules: [dup], "
                             "timespan: 1m, condition: {gte: 1}}\n")
    rep = load_rules([tmp_path], builtin=False)
    (found,) = [r for r in rep.rejected if "over dup" in r.reason]
    assert "'dup' is ambiguous" in found.reason and "dup (" in found.reason
    assert "None" not in found.reason


A_ID = "00000000-0000-4000-8000-00000000000a"


@pytest.mark.parametrize("ref, key", [
    ("rule_a", "rule_a"),                          # the reference as written, the name
    ("rule_a", A_ID),                              # the id
    ("'{" + A_ID.upper() + "}'", "{" + A_ID.upper() + "}"),   # the reference as written
    (A_ID, "rule_a"),                              # the name
])
def test_an_alias_keyed_by_reference_name_or_id_is_no_warning(tmp_path, ref, key):
    # docs/sigma.md: the key may be the reference as written, the rule's name or its id; a key
    # that names none of the rules is a warning (and ignored)
    rep = loaded(tmp_path, stub(A_ID, "rule_a", "a.exe"), stub(name="b", image="b.exe"), f"""
        title: c
        correlation:
            type: temporal
            rules: [{ref}, b]
            group-by: [host]
            timespan: 1m
            aliases:
                host: {{'{key}': Computer, b: Host}}
        """)
    assert len(rep.correlations) == 1 and not rep.rejected
    assert not [w for w in rep.warnings if "aliases" in w.reason], rep.warnings
    rep = loaded(tmp_path, stub(A_ID, "rule_a", "a.exe"), stub(name="b", image="b.exe"), """
        title: c
        correlation:
            type: temporal
            rules: [rule_a, b]
            group-by: [host]
            timespan: 1m
            aliases:
                host: {rule_a: Computer, b: Host, c: Other, d: More}
        """)
    assert len(rep.correlations) == 1
    assert sorted(w.reason.split(" [")[0] for w in rep.warnings if "aliases" in w.reason) == [
        "aliases: 'c' is not one of the correlation's rules (ignored)",
        "aliases: 'd' is not one of the correlation's rules (ignored)"]


@pytest.mark.parametrize("body,why,line", [
    ("type: temporal\n    rules: [a, b]\n    timespan: 1m\n    condition: a and not b",
     "Sigma 2.2 draft", 4),
    ("type: value_count\n    rules: [a]\n    timespan: 1m\n    condition:\n"
     "        field: [User, Image]\n        gte: 2", "list of fields", 5),
    ("type: event_count\n    rules: [a]\n    timespan: 1h30m\n    condition: {gte: 2}",
     "timespan", 3),
    ("type: event_count\n    rules: [a]\n    timespan: 0s\n    condition: {gte: 2}",
     "longer than zero", 3),
    ("type: value_max\n    rules: [a]\n    timespan: 1m\n    condition: {gte: 2}",
     "not one of", 1),
    ("type: event_count\n    rules: [a]\n    timespan: 1m", "needs a condition", 0),
    ("type: value_sum\n    rules: [a]\n    timespan: 1m\n    condition: {gte: 2}",
     "needs condition.field", 4),
    ("type: temporal_ordered\n    rules: [a, b]\n    timespan: 1m\n    condition: {gt: 1, lt: 3}",
     "takes one condition operator", 4),
    ("type: event_count\n    rules: [a]\n    timespan: 1m\n    condition: {gte: 2, above: 3}",
     "unknown key 'above'", 4),
    ("type: event_count\n    rules: [a, a]\n    timespan: 1m\n    condition: {gte: 2}",
     "listed twice", 2),
])
def test_bad_correlations_are_rejected_with_file_line(tmp_path, body, why, line):
    """``line`` counts from the ``correlation:`` key (0) of the document after the rule."""
    doc = f"title: t\nid: c0\ncorrelation:\n    {body}\n"
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" + doc)
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    assert len(rep.rejected) == 1 and why in rep.rejected[0].reason, rep.rejected
    assert rep.rejected[0].line == 13 + line, rep.rejected[0]


def test_a_bad_key_on_the_second_line_of_a_correlation_is_named_there(tmp_path):
    # the stub rule takes lines 1-9, the separator 10; the correlation starts on line 11
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" +
              "title: c\n"                                           # 11
              "level: severe\n"                                      # 12: not a Sigma level
              "correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}\n")
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    (bad,) = rep.rejected
    assert "level: must be one of" in bad.reason and bad.line == 12, bad


def test_a_bad_key_a_document_writes_in_flow_style_is_placed_in_that_document(tmp_path):
    # The condition key has no line of its own in the correlation (flow style, line 1): the
    # rejection names the correlation's first line, never a `condition:` line of the rule in
    # the next document (line 12).
    p = write(tmp_path, "c.yml",
              "title: c\n"                                                            # 1
              "correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2, above: 3}}\n"
              "---\n" + stub(name="a", image="a.exe"))                               # 3-12
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    (bad,) = rep.rejected
    assert "unknown key 'above'" in bad.reason and bad.line == 1, bad


def test_a_correlation_written_on_its_document_marker_line_loads_at_that_line(tmp_path):
    # `--- {...}`: the whole document stands on the marker line, line 1 of its file
    write(tmp_path, "a.yml", stub(name="a", image="a.exe"))
    write(tmp_path, "c.yml", "--- {title: c, correlation: {type: event_count, rules: [a], "
                             "timespan: 1m, condition: {gte: 2}}}\n")
    rep = load_rules([tmp_path], builtin=False)
    assert not rep.rejected, rep.rejected
    (corr,) = rep.correlations
    assert corr.title == "c" and corr.source.endswith("c.yml") and corr.line == 1, corr


@pytest.mark.parametrize("body,why,line", [
    # the stub rule takes lines 1-9, the separator 10, `title: c` 11, `correlation:` 12
    ("    type: event_count\n    rules: {a: 1}\n    timespan: 1m\n    condition: {gte: 2}\n",
     "correlation rules: must be a string or a list of strings", 14),
    ("    type: value_count\n    rules: [a]\n    group-by: [User]\n    timespan: 1m\n"
     "    aliases:\n        u: x\n    condition: {gte: 2, field: Image}\n",
     "correlation aliases: 'u' must map rule names to field names", 17),
    ("    type: value_percentile\n    rules: [a]\n    timespan: 1m\n    condition:\n"
     "        field: User\n        percentile: 150\n        gte: 2\n",
     "needs condition.percentile between 0 and 100", 18),
])
def test_a_bad_correlation_value_is_refused_at_its_key(tmp_path, body, why, line):
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\ntitle: c\ncorrelation:\n" + body)
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    (bad,) = rep.rejected
    assert why in bad.reason and bad.line == line, bad


def test_a_correlations_metadata_is_kept(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        name: pair
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
        references: [https://example.org/x]
        falsepositives: [admins]
        """)
    (corr,) = rep.correlations
    # without an id, the id comes from the file and the name, so it survives edits elsewhere
    assert corr.id == "sigma-rules-pair"
    assert corr.references == ("https://example.org/x",) and corr.falsepositives == ("admins",)


def test_a_correlations_tags_reach_its_alerts(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        tags:
            - attack.credential-access
            - attack.t1110
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
        """)
    (corr,) = rep.correlations
    assert corr.tags == ("attack.credential-access", "attack.t1110")
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"}), (1, {"Image": "C:\\a.exe"})])
    assert len(alerts) == 1 and alerts[0]["rule"]["tags"] == ["attack.credential-access",
                                                              "attack.t1110"], alerts
    # the ATT&CK technique ids among them, as rule alerts show them
    assert alerts[0]["rule"]["mitre"] == ["T1110"]
    assert "name" not in alerts[0]["rule"]                  # the correlation has no name


def test_a_correlations_name_and_techniques_reach_its_alerts(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        name: pair
        tags: [attack.t1059.001, attack.execution, attack.g0016, cve.2021-44228, Attack.T1003]
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
        """)
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"}), (1, {"Image": "C:\\a.exe"})])
    rule = alerts[0]["rule"]
    assert rule["name"] == "pair" and rule["mitre"] == ["T1059.001", "T1003"]


@pytest.mark.parametrize("where", ["top", "inside"])
def test_generate_true_keeps_the_building_block_alerts(tmp_path, where):
    # the specification puts generate at the top level; pySigma reads it inside correlation
    doc = ("title: c\n" + ("generate: true\n" if where == "top" else "") +
           "correlation:\n    type: event_count\n    rules: [a]\n    timespan: 1m\n"
           "    condition: {gte: 2}\n" + ("    generate: true\n" if where == "inside" else ""))
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), doc)
    assert rep.correlations and rep.correlations[0].generate
    base, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"}), (1, {"Image": "C:\\a.exe"})])
    assert len(base) == 2 and len(alerts) == 1


def test_generate_in_both_places_must_agree(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        generate: true
        correlation:
            type: event_count
            rules: [a]
            timespan: 1m
            condition: {gte: 2}
            generate: false
        """)
    assert not rep.correlations and "generate" in rep.rejected[0].reason


def test_one_generate_false_silences_a_shared_rule(tmp_path):
    # pySigma: a rule referenced by several correlations is silent if any says generate: false
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c1
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 5}, generate: true}
        """, """
        title: c2
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 5}}
        """)
    base, _, _ = run(rep, [(0, {"Image": "C:\\a.exe"})])
    assert base == []


def test_unknown_correlation_keys_warn(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        correlation:
            type: event_count
            rules: [a]
            timespan: 1m
            ordered: true
            condition: {gte: 2}
        """)
    assert rep.correlations
    w = [x for x in rep.warnings if "ordered" in x.reason]
    assert w and w[0].line == 17


def test_a_correlation_with_thousands_of_unknown_keys_names_the_first_and_counts_the_rest(tmp_path):
    # Each key named costs a search of its document: a hostile file of a hundred thousand keys
    # would cost keys x lines (minutes). The first ten are named at their lines, the rest counted.
    keys = "".join(f"    k{i}: 1\n" for i in range(5000))
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" +
              "title: c\ncorrelation:\n    type: event_count\n    rules: [a]\n"      # 11-14
              "    timespan: 1m\n    condition: {gte: 2}\n" + keys)                   # 15-16, 17-
    rep = load_rules([p], builtin=False)
    assert rep.correlations and not rep.rejected
    named = [w for w in rep.warnings if "unknown key 'k" in w.reason]
    assert [(w.line, w.reason) for w in named] == [
        (17 + i, f"correlation: unknown key 'k{i}' ignored") for i in range(10)]
    (rest,) = [w for w in rep.warnings if "more unknown keys" in w.reason]
    assert rest.reason == "correlation: 4,990 more unknown keys ignored" and rest.line == 12
    assert len(rep.warnings) == 11


# ---------------------------------------------------------------------------------
# The engine's bounds: evidence, state cap, lateness, time.

def simple(tmp_path, cond="gte: 2", group_by="[Computer]", ctype="event_count", extra=""):
    return loaded(tmp_path, stub(name="a", image="a.exe"), f"""
        title: c
        id: 10000000-0000-4000-8000-0000000000cc
        correlation:
            type: {ctype}
            rules: [a]
            group-by: {group_by}
            timespan: 1m
            condition: {{{cond}}}
        {extra}""")


def test_evidence_is_capped_newest_first_and_flagged(tmp_path):
    rep = simple(tmp_path, "gte: 10")
    rules = rep.rules
    eng = CorrelationEngine(rules, rep.correlations, max_evidence=3)
    m = create(rules, "reference")
    alerts = []
    evs = [ProcessEvent(Image="C:\\a.exe", Computer="h", RecordId=str(i), UtcTime=utc(T0 + i))
           for i in range(10)]
    for e in evs:
        alerts += eng.feed(e, m.match(e))
    alerts += eng.flush()
    c = alerts[0]["correlation"]
    from sensor.detect.correlate import event_id
    assert c["value"] == 10 and c["evidence_truncated"] is True
    assert c["event_ids"] == [event_id(e) for e in evs[-3:]] and c["event_count"] == 3


def test_state_is_bounded_and_eviction_is_counted(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    _, alerts, eng = run(rep, [(i, {"Image": "C:\\a.exe", "Computer": f"h{i}"})
                               for i in range(50)] +
                         [(100, {"Image": "C:\\a.exe", "Computer": "h0"})], max_state=10)
    st = eng.stats()
    assert st["evicted"] == 41 and st["entries"] <= 10
    assert st["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]["evicted"] == 41
    assert alerts == []             # h0's first event was evicted: the count is one, not two
    _, alerts, eng = run(rep, [(i, {"Image": "C:\\a.exe", "Computer": f"h{i}"})
                               for i in range(50)] +
                         [(100, {"Image": "C:\\a.exe", "Computer": "h0"})], max_state=100)
    assert len(alerts) == 1 and eng.stats()["evicted"] == 0


def _recount(node):
    """A correlation's state size counted afresh from what it holds (the running figure must agree)."""
    import sys
    from sensor.detect.correlate import _key_bytes
    total = 0
    for key, g in node.groups.items():
        total += _key_bytes(key)
        for e in g.entries[g.lo:]:
            total += e[4].size + (0 if e[3] is None else sys.getsizeof(e[3]))
    return total


def test_state_memory_is_bounded_for_long_group_values(tmp_path):
    # An attacker's process starts, each with a different 32,767-character command line, grouped
    # by CommandLine: the entry cap alone (20,000) would keep about 1.3 GB of them.
    import tracemalloc
    rep = simple(tmp_path, "gte: 2", group_by="[CommandLine]")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, max_state_mb=4)
    node = eng.nodes[0]
    # What the engine keeps: memory still allocated after the feed, garbage collected (other
    # tests' threads and a raised GC threshold make a process-wide peak meaningless here).
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(1500):
            ev = ProcessEvent(Image="C:\\a.exe", Computer="h", CommandLine=f"{i:06d}" + "X" * 32_761,
                              UtcTime=utc(T0 + i))
            assert eng.feed(ev, m.match(ev)) == []
            assert node.bytes <= 4 << 20
        del ev
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    st = eng.stats()
    assert st["evicted"] > 1000 and 0 < st["state_mb"] <= 4
    assert held < 8 << 20, f"{held / 2**20:.1f} MiB held for a 4 MiB cap"
    assert _recount(node) == node.bytes


def test_state_size_follows_what_is_kept(tmp_path):
    # entries added, expired, evicted over both caps, groups swept: the running size stays the sum
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        id: 10000000-0000-4000-8000-0000000000cd
        correlation:
            type: value_count
            rules: [a]
            group-by: [Computer]
            timespan: 10s
            condition: {gte: 3, field: CommandLine}""")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, max_state=300, max_state_mb=1)
    node = eng.nodes[0]
    for i in range(3000):
        ev = ProcessEvent(Image="C:\\a.exe", Computer=f"h{i % 37}", CommandLine="c" * (i % 4000),
                          UtcTime=utc(T0 + i * 50))
        eng.feed(ev, m.match(ev))
        if i % 97 == 0:
            assert _recount(node) == node.bytes
    eng.flush()
    assert eng.stats()["evicted"] > 0
    assert _recount(node) == node.bytes


def test_the_reorder_buffer_is_bounded_in_bytes(tmp_path):
    # With a long lateness the buffer holds every matched event whole until lateness has passed;
    # over max_state_mb it lets the oldest go early instead of growing.
    import tracemalloc
    rep = simple(tmp_path, "gte: 2", group_by="[Computer]")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, lateness_ms=3_600_000, max_state_mb=4)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fired = 0                   # (the alerts, which carry the command lines, are not kept)
        for i in range(1500):
            ev = ProcessEvent(Image="C:\\a.exe", Computer=f"h{i // 2}",
                              CommandLine=f"{i:06d}" + "X" * 32_761, UtcTime=utc(T0 + i))
            fired += len(eng.feed(ev, m.match(ev)))
            assert eng._heap_bytes <= (4 << 20) + (80 << 10)    # the cap, or one event past it
        del ev
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    fired += len(eng.flush())
    st = eng.stats()
    assert st["reorder_forced"] > 1000
    assert held < 12 << 20, f"{held / 2**20:.1f} MiB held for a 4 MiB cap"
    assert fired == 750             # in order, evaluating early loses nothing: every pair fires
    late = ProcessEvent(Image="C:\\a.exe", Computer="h0", UtcTime=utc(T0))
    eng.feed(late, m.match(late))
    assert eng.stats()["late_events"] == 1     # older than what was let go: late, and counted


def test_early_evaluation_changes_nothing_for_events_in_order(tmp_path):
    rep = simple(tmp_path, "gte: 3", group_by="[Computer]")
    stream = [(i * 700, {"Image": "C:\\a.exe", "Computer": f"h{i % 5}", "CommandLine": "c" * (i * 3137 % 30000)})
              for i in range(400)]
    _, wide, _ = run(rep, stream, lateness_ms=600_000)
    _, tight, eng = run(rep, stream, lateness_ms=600_000, max_state_mb=1)
    assert eng.stats()["reorder_forced"] > 0
    assert [a["id"] for a in tight] == [a["id"] for a in wide] and len(wide) > 50


def _many(n: int) -> list[str]:
    return [stub(name=f"r{i}", image=f"r{i}.exe") for i in range(n)]


@pytest.mark.parametrize("n, ok", [(64, True), (65, False)])
def test_a_correlation_references_at_most_64_rules(tmp_path, n, ok):
    from sensor.detect.metarules import MAX_REFERENCES
    assert MAX_REFERENCES == 64
    rep = loaded(tmp_path, *_many(n), f"""
        title: c
        correlation: {{type: temporal, rules: [{", ".join(f"r{i}" for i in range(n))}], timespan: 1m,
                      group-by: [Computer], condition: {{gte: 2}}}}""")
    if ok:
        assert not rep.rejected and len(rep.correlations) == 1
    else:
        assert not rep.correlations and len(rep.rejected) == 1
        assert "at most 64 references" in rep.rejected[0].reason and rep.rejected[0].line > 9 * n


@pytest.mark.parametrize("n, ok", [(32, True), (33, False)])
def test_a_correlation_groups_by_at_most_32_fields(tmp_path, n, ok):
    from sensor.detect.metarules import MAX_GROUP_BY
    assert MAX_GROUP_BY == 32
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), f"""
        title: c
        correlation: {{type: event_count, rules: [a], timespan: 1m,
                      group-by: [{", ".join(f"F{i}" for i in range(n))}], condition: {{gte: 2}}}}""")
    if ok:
        assert not rep.rejected and len(rep.correlations) == 1
    else:
        assert not rep.correlations and "at most 32 fields" in rep.rejected[0].reason


@pytest.mark.parametrize("n, need, ok", [(9, 4, True), (10, 5, True), (11, 5, False), (9, 9, True)])
def test_temporal_ordered_k_of_n_is_bounded_by_the_orders_it_checks(tmp_path, n, need, ok):
    # C(10,5) = 252 orders is within the bound of 256; C(11,5) = 462 is not
    from math import comb

    from sensor.detect.metarules import MAX_ORDER_SUBSETS
    assert MAX_ORDER_SUBSETS == 256
    assert (comb(n, need) <= MAX_ORDER_SUBSETS) == ok
    rep = loaded(tmp_path, *_many(n), f"""
        title: c
        correlation: {{type: temporal_ordered, rules: [{", ".join(f"r{i}" for i in range(n))}],
                      timespan: 1m, group-by: [Computer], condition: {{gte: {need}}}}}""")
    if ok:
        assert not rep.rejected and len(rep.correlations) == 1
    else:
        assert not rep.correlations and f"{comb(n, need)} orders to check" in rep.rejected[0].reason


@pytest.mark.parametrize("cond, need, ok", [
    ("gt: 2", 3, True), ("gt: 2.5", 3, True), ("gt: 3", 4, False), ("gt: 3.5", 4, False),
    ("gte: 3", 3, True), ("gte: 2.5", 3, True), ("gte: 4", 4, False), ("gte: 3.5", 4, False),
    ("gte: 0", 0, True), ("gte: -1", 0, True), ("gt: -2", 0, True), ("gte: 11", 11, True),
    ("gt: 10", 11, True), ("lt: 5", None, True),
])
def test_temporal_ordered_k_of_n_counts_the_rules_its_condition_needs(tmp_path, cond, need, ok):
    # "gt: k" needs k+1 rules (the next whole number above k), "gte: k" needs k (rounded up);
    # the bound applies to that many of n = 11 rules: C(11,3) = 165 orders, C(11,4) = 330
    from math import comb

    n = 11
    assert need is None or (comb(n, need) <= 256) == ok
    rep = loaded(tmp_path, *_many(n), f"""
        title: c
        correlation: {{type: temporal_ordered, rules: [{", ".join(f"r{i}" for i in range(n))}],
                      timespan: 1m, group-by: [Computer], condition: {{{cond}}}}}""")
    if ok:
        assert not rep.rejected and len(rep.correlations) == 1, rep.rejected
    else:
        assert not rep.correlations
        assert f"temporal_ordered: {need} of {n} rules gives {comb(n, need)} orders to check" \
            in rep.rejected[0].reason, rep.rejected


def test_a_saved_windows_file_over_its_bound_is_not_read(tmp_path, monkeypatch):
    # (the bound is 512 MiB; lowered here so the test does not write half a gigabyte)
    import sensor.detect.correlate as correlate_mod
    rep = simple(tmp_path, "gte: 3")
    rules = rep.rules
    m = create(rules, "reference")
    one = CorrelationEngine(rules, rep.correlations)
    for i in range(2):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", RecordId=str(i), UtcTime=utc(T0 + i))
        one.feed(e, m.match(e))
    one.flush()
    state = tmp_path / "state.json"
    size = one.save_state(str(state))
    monkeypatch.setattr(correlate_mod, "MAX_STATE_FILE", size)
    two = CorrelationEngine(rules, rep.correlations)
    assert two.load_state(str(state))["restored"] is True            # at the bound: read
    monkeypatch.setattr(correlate_mod, "MAX_STATE_FILE", size - 1)
    three = CorrelationEngine(rules, rep.correlations)
    note = three.load_state(str(state))
    assert note["restored"] is False and f"larger than {size - 1} bytes" in note["reason"]
    assert three.stats()["entries"] == 0


def test_late_and_timeless_events_are_counted_not_correlated(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, lateness_ms=1000)
    a = lambda t: ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + t))  # noqa: E731
    out = []
    for e in (a(10_000), a(9_500), a(5_000), ProcessEvent(Image="C:\\a.exe", Computer="h",
                                                           UtcTime="yesterday")):
        out += eng.feed(e, m.match(e))
    out += eng.flush()
    st = eng.stats()
    assert st["late_events"] == 1 and st["no_event_time"] == 1
    assert [x["correlation"]["value"] for x in out] == [2]    # 9.5 s reordered, 5 s too late


def test_state_survives_a_restart(tmp_path):
    rep = simple(tmp_path, "gte: 3")
    rules = rep.rules
    m = create(rules, "reference")
    state = str(tmp_path / "new" / "state.json")      # its folder does not exist yet
    evs = [ProcessEvent(Image="C:\\a.exe", Computer="h", RecordId=str(i),
                        UtcTime=utc(T0 + i * 1000)) for i in range(4)]
    one = CorrelationEngine(rules, rep.correlations)
    for e in evs[:2]:
        assert one.feed(e, m.match(e)) == []
    assert one.flush() == []
    import os
    import stat
    old = os.umask(0o022)
    try:
        one.save_state(state)
    finally:
        os.umask(old)
    if os.name == "posix":       # private whatever the umask: the windows hold command lines
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    two = CorrelationEngine(rules, rep.correlations)
    assert two.load_state(state)["restored"] is True
    out = []
    for e in evs[2:]:
        out += two.feed(e, m.match(e))
    out += two.flush()
    assert [a["correlation"]["value"] for a in out] == [3, 4]
    assert out[-1]["correlation"]["event_count"] == 4
    # a changed correlation does not reuse the old windows, and says so
    rep2 = simple(tmp_path, "gte: 4")
    three = CorrelationEngine(rep2.rules, rep2.correlations)
    note = three.load_state(state)
    assert note["discarded"] == ["10000000-0000-4000-8000-0000000000cc"]
    # a damaged file is reported, and the windows start empty
    with open(state, "r+b") as fh:
        fh.seek(10)
        fh.write(b"\x00garbage")
    four = CorrelationEngine(rules, rep.correlations)
    note = four.load_state(state)
    assert note["restored"] is False and "unusable" in note["reason"]
    assert four.stats()["state"]["restored"] is False


def test_chained_state_survives_a_restart(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="b.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [User], timespan: 1m, condition: {gte: 2}}
        """, """
        title: outer
        correlation: {type: temporal_ordered, rules: [inner, b], group-by: [User], timespan: 5m}
        """)
    m = create(rep.rules, "reference")
    evs = [ProcessEvent(Image=f"C:\\{x}.exe", User="bob", UtcTime=utc(T0 + t))
           for x, t in (("a", 0), ("a", 1000), ("b", 60_000))]
    state = str(tmp_path / "s.json")
    one = CorrelationEngine(rep.rules, rep.correlations)
    for e in evs[:2]:
        one.feed(e, m.match(e))
    one.flush()
    one.save_state(state)
    two = CorrelationEngine(rep.rules, rep.correlations)
    assert two.load_state(state)["restored"]
    out = two.feed(evs[2], m.match(evs[2])) + two.flush()
    assert len(out) == 1 and len(out[0]["correlation"]["alert_ids"]) == 1


@pytest.mark.parametrize("text,ms", [
    ("2025-01-01 12:00:00.000", T0),
    ("2025-01-01 12:00:00.1234", T0 + 123),
    ("2025-01-01 12:00:00.1235", T0 + 124),       # rounded to the millisecond
    ("2025-01-01 12:00:00.0005", T0 + 1),         # half a millisecond rounds up
    ("2025-01-01 12:00:00.000499999", T0),        # less rounds down
    ("2025-01-01 12:00:00.999499999", T0 + 999),
    ("2025-01-01T12:00:00Z", T0),
    ("2025-01-01T13:00:00+01:00", T0),
    ("2025-01-01 12:00:00", T0),
    ("2025-01-01T17:30:00+05:30", T0),             # a zone offset with minutes
    ("2025-01-01T08:15:00-03:45", T0),
    ("2025-01-01 23:59:59.000", T0 + 43_199_000),  # the last hour of the day
    ("2025-01-01 24:00:00", None),
    ("2025-01-01 12:60:00", None),
    ("2016-12-31 23:59:60", parse_time_ms("2017-01-01 00:00:00")),    # a leap second (ISO 8601)
    ("2016-12-31 23:59:61", None),
    ("2025-02-30 12:00:00", None),
    ("12:00", None),
    (None, None),
])
def test_event_time(text, ms):
    assert parse_time_ms(text) == ms


# ---------------------------------------------------------------------------------
# Packs, scan and the live pipeline.

def test_pack_carries_correlations_and_filters(tmp_path):
    from sensor.detect.loader import compile_paths
    from sensor.detect.pack import read_pack_content

    src = write(tmp_path, "r.yml", stub(name="a", image="a.exe") + "---\n" + """
title: c
correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
---
title: f
logsource: {category: process_creation, product: windows}
filter:
    rules: any
    sel: {User: svc}
    condition: not sel
""")
    out = tmp_path / "r.pack"
    report, _ = compile_paths([src], out)
    assert not report.rejected
    content = read_pack_content(out)
    assert len(content.rules) == 1 and len(content.correlations) == 1 and len(content.filters) == 1
    assert "filters" not in content.rules[0].meta          # filters apply when the pack loads
    from_pack = load_rules([out], builtin=False)
    from_yaml = load_rules([src], builtin=False)
    events = [(0, {"Image": "C:\\a.exe", "Computer": "h", "User": "svc"}),
              (1, {"Image": "C:\\a.exe", "Computer": "h", "User": "bob"}),
              (2, {"Image": "C:\\a.exe", "Computer": "h", "User": "eve"})]
    a = [x["correlation"]["value"] for x in run(from_pack, events)[1]]
    b = [x["correlation"]["value"] for x in run(from_yaml, events)[1]]
    assert a == b == [2]


def test_a_packs_backtracking_rule_needs_the_opt_in_and_its_correlation_says_why(tmp_path):
    # the regex engine policy holds for a pack's rules whatever else the pack holds: without
    # the opt-in the rule is refused and the correlation over it names that rule as rejected
    from sensor.detect.loader import compile_paths

    rid = "0a6b1c2d-0000-4000-8000-0000000000bc"
    src = write(tmp_path, "r.yml", stub(ident=rid, name="rep", image="a.exe",
                                        extra="        CommandLine|re: '(\\w+) \\1'\n") + """---
title: c
correlation: {type: event_count, rules: [rep], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
""")
    out = tmp_path / "r.pack"
    report, _ = compile_paths([src], out, allow_backtracking=[rid])
    assert not report.rejected and len(report.correlations) == 1
    refused = load_rules([out], builtin=False)
    assert refused.rules == [] and refused.correlations == []
    assert "backreference" in refused.rejected[0].reason
    assert "'rep' names a rule that is rejected" in refused.rejected[1].reason
    allowed = load_rules([out], builtin=False, allow_backtracking=[rid])
    assert not allowed.rejected and len(allowed.correlations) == 1
    assert allowed.packs[0]["rules"] == 1 and allowed.packs[0]["correlations"] == 1


def test_version_1_packs_still_load(tmp_path):
    import hashlib

    from sensor.detect.pack import MAGIC, encode_pack
    rules = load_rules([write(tmp_path, "a.yml", stub(name="a", image="a.exe"))],
                       builtin=False).rules
    body = json.loads(encode_pack(rules).split(b"\n", 2)[2])
    del body["correlations"], body["filters"]
    raw = json.dumps(body).encode()
    header = json.dumps({"pack": 1, "ir": 1, "length": len(raw),
                         "sha256": hashlib.sha256(raw).hexdigest()}).encode()
    p = tmp_path / "old.pack"
    p.write_bytes(MAGIC + header + b"\n" + raw)
    rep = load_rules([p], builtin=False)
    assert not rep.rejected and [r.id for r in rep.rules] == [r.id for r in rules]


def test_scan_reports_correlations_and_late_events(tmp_path, capsys):
    from sensor.cli import main

    rules = write(tmp_path, "r.yml", stub(name="a", image="a.exe") + "---\n" + """
title: burst
id: 10000000-0000-4000-8000-0000000000dd
correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 3}}
""")
    lines = [{"Image": "C:\\a.exe", "Computer": "h1", "UtcTime": utc(T0 + t)}
             for t in (20_000, 0, 10_000, 500_000, 1_000)]
    rec = tmp_path / "e.jsonl"
    rec.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["scan", str(rec), "--rules", str(rules), "--no-builtin-rules",
                 "--lateness", "60"]) == 0
    cap = capsys.readouterr()
    alerts = [json.loads(x) for x in cap.out.splitlines()]
    assert [a["correlation"]["value"] for a in alerts] == [3]
    assert "1 late" in cap.err
    assert main(["scan", str(rec), "--rules", str(rules), "--no-builtin-rules",
                 "--lateness", "0"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "3 late" in cap.err and "raise --lateness" in cap.err


def test_pipeline_spools_correlation_alerts_and_keeps_state_across_restarts(tmp_path, engine):
    from sensor.daemon.pipeline import Pipeline
    from sensor.deliver.spool import Spool
    from sensor.sources.replay import ReplaySource

    rep = simple(tmp_path, "gte: 3")
    state = str(tmp_path / "corr-state.json")

    def rec(name, offsets):
        p = tmp_path / name
        p.write_text("".join(json.dumps({"Image": "C:\\a.exe", "Computer": "h1",
                                         "UtcTime": utc(T0 + t)}) + "\n" for t in offsets))
        return str(p)

    def once(path):
        spool = Spool(tmp_path / "spool.sqlite")
        eng = CorrelationEngine(rep.rules, rep.correlations, lateness_ms=5000)
        p = Pipeline(source=ReplaySource([path]), rules=rep.rules, spool=spool, engine=engine,
                     heartbeat_interval=0, correlator=eng, correlation_state=state)
        p.start()
        assert p.wait_source(60)
        status = p.stop(drain_timeout=10)
        spooled = [a for a in (item.decode() for item in spool.fetch(100))
                   if a.get("rule", {}).get("kind") == "correlation"]   # not health documents
        spool.close()
        return status, spooled

    status, spooled = once(rec("one.jsonl", [0, 1000]))
    assert status["alerts"]["total"] == 0 and status["correlation"]["events_correlated"] == 2
    assert status["correlation"]["state"]["restored"] is False and spooled == []
    status, spooled = once(rec("two.jsonl", [2000]))
    assert status["correlation"]["state"]["restored"] is True
    assert status["alerts"]["total"] == 1
    assert status["alerts"]["by_rule"] == {"10000000-0000-4000-8000-0000000000cc": 1}
    assert [a["correlation"]["value"] for a in spooled] == [3]
    assert spooled[0]["correlation"]["event_count"] == 3


def test_pipeline_evaluates_what_it_holds_when_the_source_goes_quiet(tmp_path):
    import threading

    from sensor.daemon.pipeline import Pipeline
    from sensor.sources.replay import ReplaySource

    rep = simple(tmp_path, "gte: 3")
    rec = tmp_path / "e.jsonl"
    rec.write_text("".join(json.dumps({"Image": "C:\\a.exe", "Computer": "h1",
                                       "UtcTime": utc(T0 + t)}) + "\n" for t in (0, 10, 20)))
    got: list = []
    seen = threading.Event()

    def hook(alert):
        got.append(alert)
        seen.set()

    # a lateness of an hour holds the events; 0.2 s without input evaluates them anyway
    eng = CorrelationEngine(rep.rules, rep.correlations, lateness_ms=3_600_000)
    p = Pipeline(source=ReplaySource([str(rec)]), rules=rep.rules, engine="reference",
                 heartbeat_interval=0, correlator=eng, alert_hook=hook, idle_flush_s=0.2)
    p.start()
    try:
        assert p.wait_source(60)                  # 60 s only guards a hang
        assert seen.wait(60), "the held events were not evaluated while the sensor ran"
        assert [a["correlation"]["value"] for a in got] == [3]
        assert p.status()["correlation"]["reorder_buffered"] == 0
    finally:
        p.stop(drain_timeout=5)


@pytest.mark.parametrize("text,key", [
    ("[correlation]\nmax_state = 0\n", "correlation.max_state"),
    ("[correlation]\nmax_evidence = 1000000\n", "correlation.max_evidence"),
    ("[correlation]\nlateness_s = -1\n", "correlation.lateness_s"),
    ("[correlation]\ncheckpoint_s = nan\n", "correlation.checkpoint_s"),
    ("[correlation]\nwindow = 3\n", "correlation.window"),
])
def test_correlation_config_is_checked(tmp_path, text, key):
    from sensor.daemon.config import ConfigError, load
    cfg = tmp_path / "s.toml"
    cfg.write_text('[source]\nkind = "replay"\n[source.replay]\npaths = ["x"]\n' + text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(str(cfg))


def test_correlation_config_reaches_the_engine(tmp_path):
    from sensor.daemon.assemble import build
    from sensor.daemon.config import load
    rules = write(tmp_path, "r.yml", stub(name="a", image="a.exe") + "---\n" + """
title: c
correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
""")
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "d"\n[source]\nkind = "replay"\n[source.replay]\n'
                   f'paths = ["x"]\n[rules]\npaths = ["{rules}"]\n[correlation]\nlateness_s = 2.5\n'
                   f'max_state = 77\nmax_evidence = 9\n')
    cfg.chmod(0o600)
    (tmp_path / "x").write_text("")
    c = load(str(cfg))
    assert c.correlation.state_file == str(tmp_path / "d" / "correlation-state.json")
    parts = build(c, with_source=False, with_delivery=False)
    eng = parts.correlator
    assert (eng.lateness, eng.max_state, eng.max_evidence) == (2500, 77, 9)
    # the built-in rules come first; rule a (the building block) is the one silenced
    a_index = [r.title for r in parts.rules].index("stub a")
    assert len(eng.nodes) == 1 and eng.silent == {a_index} and a_index > 0


def test_deep_chains_and_long_cycles_load_without_recursion(tmp_path):
    n = 1200                                 # deeper than the interpreter's recursion limit
    docs = [stub(name="c0", image="a.exe")]
    for i in range(1, n + 1):
        docs.append(f"title: c{i}\nname: c{i}\ncorrelation: {{type: event_count, rules: [c{i - 1}],"
                    f" timespan: 1m, condition: {{gte: 1}}}}\n")
    rep = loaded(tmp_path, *docs)
    assert not rep.rejected and len(rep.correlations) == n
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"})])
    assert [a["rule"]["title"] for a in alerts] == [f"c{n}"]       # only the outermost alerts
    docs[1] = docs[1].replace("rules: [c0]", f"rules: [c{n}]")       # close the ring
    rep = loaded(tmp_path, *docs)
    assert not rep.correlations and len(rep.rejected) == n
    assert all("cycle" in r.reason for r in rep.rejected)


def test_ecs_documents_keep_the_correlation(tmp_path):
    from sensor.deliver.ecs import to_ecs
    rep = simple(tmp_path, "gte: 2")
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h1", "User": "CORP\\bob"}),
                             (1, {"Image": "C:\\a.exe", "Computer": "h1", "User": "CORP\\bob"})])
    doc = to_ecs(alerts[0])
    assert doc["sensor"]["correlation"]["value"] == 2
    assert doc["sensor"]["correlation"]["group"] == {"Computer": "h1"}
    assert doc["event"]["action"] == "sigma_correlation" and doc["host"]["name"] == "h1"
    assert doc["rule"]["name"] == "c" and doc["user"]["name"] == "bob"


def test_evictions_are_a_health_problem_and_a_health_alert():
    from sensor.daemon.health import CorrelationHealth, Status, problems, transitions
    before = Status(correlation=CorrelationHealth(correlations=2, max_state=10, evicted=0))
    after = Status(correlation=CorrelationHealth(correlations=2, max_state=10, evicted=41,
                                                 state_save_failures=1))
    assert problems(before) == []
    assert any("41 correlation window" in p and "max_state" in p for p in problems(after))
    assert any("could not be saved 1 time" in p for p in problems(after))
    kinds = [t[0] for t in transitions(before, after)]
    assert kinds == ["correlation_evicted"]
    lost = Status(correlation=CorrelationHealth(
        correlations=1, state={"restored": False, "reason": "saved state unusable, windows "
                                                             "start empty: bad JSON"}))
    assert any("lost at restart" in p for p in problems(lost))


# ---------------------------------------------------------------------------------
# A correlation document's own checks: each bad value refused with its reason at its key.

@pytest.mark.parametrize("doc,why,line", [
    # the stub rule takes lines 1-9, the separator 10; the correlation starts on line 11
    ("title: '  '\ncorrelation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}\n",
     "a correlation needs a title (specification: title is mandatory)", 11),
    ("level: high\ncorrelation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}\n",
     "a correlation needs a title (specification: title is mandatory)", 11),
    ("title: c\ncorrelation:\n    type: event_count\n    rules:\n        - true\n"
     "    timespan: 1m\n    condition: {gte: 2}\n",
     "correlation rules: must be a string or a list of strings", 14),
    ("title: c\ncorrelation:\n    type: event_count\n    rules: [a, {b: 1}]\n"
     "    timespan: 1m\n    condition: {gte: 2}\n",
     "correlation rules: must be a string or a list of strings", 14),
    ("title: c\ncorrelation:\n    type: value_count\n    rules: [a]\n    timespan: 1m\n"
     "    condition:\n        field: ''\n        gte: 2\n",
     "condition.field: must be a field name", 17),
    ("title: c\ncorrelation:\n    type: value_count\n    rules: [a]\n    timespan: 1m\n"
     "    condition:\n        field: 5\n        gte: 2\n",
     "condition.field: must be a field name", 17),
    ("title: c\ncorrelation:\n    type: value_percentile\n    rules: [a]\n    timespan: 1m\n"
     "    condition:\n        field: User\n        percentile: true\n        gte: 2\n",
     "condition.percentile: must be a number from 0 to 100", 18),
    ("title: c\ncorrelation:\n    type: value_percentile\n    rules: [a]\n    timespan: 1m\n"
     "    condition:\n        field: User\n        percentile: '50'\n        gte: 2\n",
     "condition.percentile: must be a number from 0 to 100", 18),
    ("title: c\ngenerate: 'yes'\ncorrelation: {type: event_count, rules: [a], timespan: 1m, "
     "condition: {gte: 2}}\n", "generate: must be true or false", 12),
    ("title: c\ncorrelation:\n    type: event_count\n    rules: [a]\n    timespan: 1m\n"
     "    condition: {gte: 2}\n    generate: 1\n", "generate: must be true or false", 17),
    ("title: c\ncorrelation:\n    type: event_count\n    rules: [a]\n    group-by: ['']\n"
     "    timespan: 1m\n    condition: {gte: 2}\n", "correlation group-by: needs field names", 15),
    ("title: c\ncorrelation:\n    type: event_count\n    rules: [a]\n    timespan: 1m\n"
     "    condition: {}\n",
     "a event_count correlation needs a condition (gt, gte, lt, lte, eq, neq: <number>)", 16),
])
def test_a_bad_correlation_is_refused_with_its_reason_at_its_key(tmp_path, doc, why, line):
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" + doc)
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    (bad,) = rep.rejected
    assert (bad.line, bad.reason) == (line, why), bad


def test_exactly_ten_unknown_correlation_keys_are_each_named_and_none_counted(tmp_path):
    # docs/sigma.md: "each named with their line up to ten; the rest are counted in one more
    # warning": with ten there is no rest.
    keys = "".join(f"    k{i}: 1\n" for i in range(10))
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" +
              "title: c\ncorrelation:\n    type: event_count\n    rules: [a]\n"      # 11-14
              "    timespan: 1m\n    condition: {gte: 2}\n" + keys)                   # 15-16, 17-
    rep = load_rules([p], builtin=False)
    assert rep.correlations and not rep.rejected
    assert [(w.line, w.reason) for w in rep.warnings] == [
        (17 + i, f"correlation: unknown key 'k{i}' ignored") for i in range(10)]


def test_a_correlations_description_author_and_status_reach_its_alerts(tmp_path):
    # docs/sigma.md, "Alerts carry the correlation's metadata (rule: id, title, level,
    # description, tags, author, references, falsepositives, status, source ...)"
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: c
        description: '  two starts of a.exe  '
        author: Jane Doe
        status: experimental
        date: 2025-01-02
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
        """, """
        title: bare
        correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}
        """)
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"}), (1, {"Image": "C:\\a.exe"})])
    by_title = {a["rule"]["title"]: a["rule"] for a in alerts}
    assert sorted(by_title) == ["bare", "c"], alerts
    full, bare = by_title["c"], by_title["bare"]
    assert (full["description"], full["author"], full["status"], full["date"]) == (
        "two starts of a.exe", "Jane Doe", "experimental", "2025-01-02"), full
    # nothing written, nothing made up
    assert (bare["description"], bare["author"]) == ("", ""), bare
    assert "status" not in bare and "date" not in bare, bare


def test_a_rule_refused_for_a_name_that_is_not_text_is_reported_and_the_rest_loads(tmp_path):
    # pySigma refuses the rule; its name, a list, must not be used to index references.
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" +
              "title: r\nname: [x]\nlogsource: {category: process_creation}\n"
              "detection: {s: {Image: b.exe}, condition: s}\n"
              "---\ntitle: c\ncorrelation: {type: event_count, rules: [a], timespan: 1m, "
              "condition: {gte: 2}}\n")
    rep = load_rules([p], builtin=False)
    assert [r.title for r in rep.rules] == ["stub a"] and len(rep.correlations) == 1, rep
    (bad,) = rep.rejected
    assert bad.reason == "SigmaTypeError: Sigma rule name must be a string", bad


@pytest.mark.parametrize("head,why,line", [
    ("title: c\nname: [x]\n", "name: must be text (a correlation is referred to by its name)", 12),
    ("title: c\nname: ''\n", "name: must be text (a correlation is referred to by its name)", 12),
    ("title: c\nname: 5\n", "name: must be text (a correlation is referred to by its name)", 12),
    ("title: c\nid: 7\n", "id: must be text (a UUID)", 12),
])
def test_a_correlation_named_or_identified_by_something_not_text_is_refused_at_that_key(tmp_path, head, why, line):
    # a rule whose name is not text is refused (pySigma); so is a correlation's, which other
    # correlations refer to by name: it was silently dropped, and a reference to it failed elsewhere
    p = write(tmp_path, "c.yml", stub(name="a", image="a.exe") + "---\n" + head +
              "correlation: {type: event_count, rules: [a], timespan: 1m, condition: {gte: 2}}\n")
    rep = load_rules([p], builtin=False)
    assert not rep.correlations
    (bad,) = rep.rejected
    assert (bad.line, bad.reason) == (line, why), bad


def test_a_metric_reads_numbers_and_json_number_text():
    from sensor.detect.correlate import number_of
    assert number_of(7) == 7 and number_of(2.5) == 2.5 and number_of(" 1e1 ") == 10.0
    assert number_of(True) is None and number_of("0x10") is None and number_of("junk") is None
    assert number_of(float("nan")) is None and number_of("1e999") is None
    long = "1." + "0" * 398                # a JSON number of 400 characters is a number
    assert len(long) == 400 and number_of(long) == 1.0
    assert number_of(long + "0") is None    # longer text is not read (docs/sigma.md, Decisions)


def test_an_alert_shows_the_event_that_completed_its_window(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h1", "CommandLine": "a.exe first"}),
                             (5000, {"Image": "C:\\a.exe", "Computer": "h1", "CommandLine": "a.exe second",
                                     "User": "CORP\\bob"})])
    (a,) = alerts
    assert a["HOSTNAME"] == "h1" and a["COMMANDLINE"] == "a.exe second"
    assert len(a["correlation"]["event_ids"]) == 2 and a["correlation"]["evidence_truncated"] is False
    assert a["PROCESSNAME"] == "C:\\a.exe" and a["event"]["CommandLine"] == "a.exe second"
    assert a["MESSAGE"].startswith("Correlation 'c': event_count 2 (gte 2) for Computer=h1")
    # the window is [T - timespan, T]
    assert a["correlation"]["window"] == {"start": "2025-01-01T11:59:05.000Z",
                                          "end": "2025-01-01T12:00:05.000Z"}
    assert a["correlation"]["rules"] == [rep.rules[0].id]        # ids, not the references
    assert rep.rules[0].id != "a"
    # the sensor block carries what the engine was given about the sensor
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h1"}),
                             (1, {"Image": "C:\\a.exe", "Computer": "h1"})],
                       sensor_info={"hostname": "box"})
    assert alerts[0]["sensor"]["hostname"] == "box" and alerts[0]["sensor"]["version"]


def test_a_number_and_its_text_are_one_group(tmp_path):
    # docs/sigma.md: "a value that is an integer and its text (5 and "5") are one group"
    rep = simple(tmp_path, "gte: 2", group_by="[ProcessId]")
    _, alerts, eng = run(rep, [(0, {"Image": "C:\\a.exe", "ProcessId": 5}),
                               (1000, {"Image": "C:\\a.exe", "ProcessId": "5"})])
    assert [a["correlation"]["group"] for a in alerts] == [{"ProcessId": "5"}]
    assert eng.stats()["missing_group_key"] == 0


def test_an_event_older_than_what_a_flush_evaluated_is_late(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, lateness_ms=10_000)
    a = lambda t: ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + t))  # noqa: E731
    for t in (0, 1000, 2000):
        assert eng.feed(a(t), m.match(a(t))) == []
    assert [x["correlation"]["value"] for x in eng.flush()] == [2, 3]
    # 2000 was evaluated: an event 1 ms before it, or at it, can no longer be counted
    assert eng.feed(a(1999), m.match(a(1999))) == [] and eng.flush() == []
    assert eng.feed(a(2000), m.match(a(2000))) == [] and eng.flush() == []
    assert eng.stats()["late_events"] == 2
    # one 1 ms after it still counts
    assert [x["correlation"]["value"] for x in eng.feed(a(2001), m.match(a(2001))) + eng.flush()] == [4]


def test_a_restored_clock_without_a_floor_still_refuses_what_was_evaluated(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    rules = rep.rules
    m = create(rules, "reference")
    one = CorrelationEngine(rules, rep.correlations)
    e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + 2000))
    one.feed(e, m.match(e))
    one.flush()
    doc = one.export_state()
    doc["floor"] = None                  # a state file that names only the evaluated time
    state = tmp_path / "s.json"
    state.write_text(json.dumps(doc))
    two = CorrelationEngine(rules, rep.correlations)
    assert two.load_state(str(state))["restored"] is True
    assert two.flush() == []
    late = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + 2000))
    assert two.feed(late, m.match(late)) == [] and two.flush() == []
    assert two.stats()["late_events"] == 1
    on_time = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + 2001))
    out = two.feed(on_time, m.match(on_time)) + two.flush()
    assert [x["correlation"]["value"] for x in out] == [2]


def test_events_in_order_are_never_forced_out_of_the_reorder_buffer(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    stream = [(i * 1000, {"Image": "C:\\a.exe", "Computer": "h"}) for i in range(5)]
    _, alerts, eng = run(rep, stream)              # lateness 0: each event is evaluated at once
    assert len(alerts) == 4
    st = eng.stats()
    assert st["reorder_forced"] == 0 and st["late_events"] == 0 and st["lateness_s"] == 0
    assert st["events_correlated"] == 5 and st["window_updates"] == 5 and st["alerts"] == 4
    assert st["no_event_time"] == 0 and st["windows_discarded"] == 0 and st["evicted"] == 0
    per = st["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]
    assert per["alerts"] == 4 and per["missing_group_key"] == 0 and per["evicted"] == 0


def test_an_event_is_held_until_the_newest_time_is_lateness_past_it(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    rules = rep.rules
    m = create(rules, "reference")
    eng = CorrelationEngine(rules, rep.correlations, lateness_ms=1000)
    assert eng.stats()["lateness_s"] == 1
    a = lambda t: ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + t))  # noqa: E731
    eng.feed(a(0), m.match(a(0)))
    eng.feed(a(999), m.match(a(999)))
    assert eng.stats()["reorder_buffered"] == 2      # 999 ms past the first: both held
    eng.feed(a(1000), m.match(a(1000)))
    assert eng.stats()["reorder_buffered"] == 2      # 1000 ms past the first: it is let go
    assert eng.stats()["reorder_forced"] == 0


def test_the_state_estimate_per_correlation_is_in_megabytes(tmp_path):
    rep = simple(tmp_path, "gte: 2", group_by="[CommandLine]")
    _, _, eng = run(rep, [(i, {"Image": "C:\\a.exe", "CommandLine": f"{i:04d}" + "x" * 300_000})
                          for i in range(8)])
    st = eng.stats()
    per = st["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]
    # each entry keeps its command line and its folded group key: 8 x 2 x 300 KB = 4.6 MiB
    assert 4.5 < st["state_mb"] < 5 and per["state_mb"] == st["state_mb"]


def test_reloads_carry_the_counts_of_windows_they_drop(tmp_path):
    # docs/sigma.md, Reloads: the windows of a correlation that changed are dropped and counted
    # (windows_discarded), and the engine's counters continue across the swaps
    rules_of = lambda cond: simple(tmp_path, cond)      # noqa: E731
    rep = rules_of("gte: 2")
    m = create(rep.rules, "reference")
    one = CorrelationEngine(rep.rules, rep.correlations, max_state=3)
    for i in range(5):
        e = ProcessEvent(Image="C:\\a.exe", Computer=f"h{i}", UtcTime=utc(T0 + i))
        one.feed(e, m.match(e))
    one.flush()
    assert one.stats()["evicted"] == 2 and one.stats()["entries"] == 3
    rep2 = rules_of("gte: 3")
    two = CorrelationEngine(rep2.rules, rep2.correlations)
    assert two.stats()["state"] == {"restored": False, "reason": "not saved or loaded"}
    note = two.take_over(one)
    assert note["restored"] is True and note["at"] == "reload" and two.stats()["state"] == note
    assert note["discarded"] == ["10000000-0000-4000-8000-0000000000cc"]
    assert note["entries_discarded"] == 3
    st = two.stats()
    assert st["windows_discarded"] == 3 and st["evicted"] == 2 and st["entries"] == 0
    rep3 = rules_of("gte: 4")
    three = CorrelationEngine(rep3.rules, rep3.correlations)
    three.take_over(two)
    st = three.stats()
    assert st["windows_discarded"] == 3 and st["evicted"] == 2 and st["events_correlated"] == 5


def test_child_alert_ids_are_capped_like_event_ids(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1s, condition: {gte: 1}}
        """, """
        title: outer
        correlation: {type: event_count, rules: [inner], group-by: [Computer], timespan: 1m, condition: {gte: 3}}
        """)
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations, max_evidence=2)
    out = []
    for i in range(3):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + i * 2000))
        out += eng.feed(e, m.match(e))       # each inner alert has its own one event
    out += eng.flush()
    (c,) = [a["correlation"] for a in out if a["rule"]["title"] == "outer"]
    assert c["value"] == 3 and len(c["alert_ids"]) == 2 and len(c["event_ids"]) == 2
    assert c["evidence_truncated"] is True


def test_a_window_at_exactly_its_caps_keeps_what_it_holds(tmp_path):
    # "at most max_state entries and at most max_state_mb megabytes": at the caps, nothing goes
    rep = simple(tmp_path, "gte: 2")
    m = create(rep.rules, "reference")
    a = lambda t: ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + t))  # noqa: E731
    probe = CorrelationEngine(rep.rules, rep.correlations)
    probe.feed(a(1), m.match(a(1)))
    one_entry = probe.nodes[0].bytes                # one entry and its group key
    eng = CorrelationEngine(rep.rules, rep.correlations, max_state=1,
                            max_state_mb=one_entry / (1 << 20))
    for t in (0, 1):
        eng.feed(a(t), m.match(a(t)))
    st = eng.stats()
    assert st["entries"] == 1 and st["evicted"] == 1     # over max_state by one: one goes


def test_the_reorder_buffer_at_exactly_its_cap_holds_its_event(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    m = create(rep.rules, "reference")
    e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0))
    from sensor.detect.correlate import _event_bytes
    held = _event_bytes(e)                          # the whole event's estimate
    eng = CorrelationEngine(rep.rules, rep.correlations, lateness_ms=3_600_000,
                            max_state_mb=held / (1 << 20))
    eng.feed(e, m.match(e))
    st = eng.stats()
    assert st["reorder_buffered"] == 1 and st["reorder_forced"] == 0
    # a byte less: the first event already goes early, and anything older than it is late
    eng = CorrelationEngine(rep.rules, rep.correlations, lateness_ms=3_600_000,
                            max_state_mb=(held - 1) / (1 << 20))
    eng.feed(e, m.match(e))
    older = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 - 1))
    eng.feed(older, m.match(older))
    st = eng.stats()
    assert st["reorder_forced"] == 1 and st["reorder_buffered"] == 0 and st["late_events"] == 1


@pytest.mark.parametrize("slot", [1, -1])
def test_a_state_file_naming_a_rule_slot_the_correlation_lacks_is_refused(tmp_path, slot):
    rep = simple(tmp_path, "gte: 3")
    m = create(rep.rules, "reference")
    one = CorrelationEngine(rep.rules, rep.correlations)
    e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0))
    one.feed(e, m.match(e))
    one.flush()
    doc = one.export_state()
    (group,) = doc["nodes"]["10000000-0000-4000-8000-0000000000cc"]["groups"]
    group[1][0][1] = slot                # the correlation references one rule: slot 0 only
    state = tmp_path / "s.json"
    state.write_text(json.dumps(doc))
    two = CorrelationEngine(rep.rules, rep.correlations)
    note = two.load_state(str(state))
    assert note["restored"] is False and note["reason"].endswith(": bad slot")
    assert two.stats()["entries"] == 0


def test_the_engine_options_are_keyword_only(tmp_path):
    rep = simple(tmp_path)
    with pytest.raises(TypeError):
        CorrelationEngine(rep.rules, rep.correlations, 5000)     # a bare number names nothing
    eng = CorrelationEngine(rules=rep.rules, correlations=rep.correlations, lateness_ms=5000)
    assert eng.stats()["lateness_s"] == 5


def test_groups_whose_window_emptied_are_forgotten_and_live_ones_kept(tmp_path):
    # 300 hosts once, then one host every second for 10 minutes (a 1-minute window)
    rep = simple(tmp_path, "gte: 2")
    stream = [(i, {"Image": "C:\\a.exe", "Computer": f"h{i}"}) for i in range(300)]
    stream += [(200_000 + i * 1000, {"Image": "C:\\a.exe", "Computer": "k"}) for i in range(600)]
    _, alerts, eng = run(rep, stream)
    # the live window counts on through every clean-up: 2, 3, ... up to 61 (both ends included)
    assert [a["correlation"]["value"] for a in alerts] == [min(i + 1, 61) for i in range(1, 600)]
    per = eng.stats()["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]
    assert per["groups"] == 1 and per["entries"] == 61


def test_a_child_alert_counts_in_its_parent_with_what_it_keeps(tmp_path):
    # docs/sigma.md: "an alert of a correlation that another one references counts with its
    # evidence". The outer window keeps the inner alert for an hour, and with it the inner group
    # key, its evidence event and the fields its alert shows: here a 1 MB user name and a 1 MB
    # command line, which nothing else keeps once the inner window lets its event go.
    import tracemalloc
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [User], timespan: 1s, condition: {gte: 1}}
        """, """
        title: outer
        id: 10000000-0000-4000-8000-0000000000dd
        correlation: {type: event_count, rules: [inner], group-by: [User], timespan: 1h, condition: {gte: 100}}
        """)
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        e = ProcessEvent(Image="C:\\a.exe", User="U" * 1_000_000, CommandLine="C" * 1_000_000,
                         UtcTime=utc(T0))
        assert eng.feed(e, m.match(e)) + eng.flush() == []
        del e
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    outer = eng.stats()["by_correlation"]["10000000-0000-4000-8000-0000000000dd"]
    assert held > 3 << 20 and outer["entries"] == 1
    assert outer["state_mb"] >= held / (1 << 20)


def test_a_flush_after_unmatched_events_keeps_their_time_as_evaluated(tmp_path):
    # Events no referenced rule matched still move the clock: after them and a flush, a matched
    # event older than the newest time seen is late.
    rep = simple(tmp_path, "gte: 2")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    a = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0))
    other = ProcessEvent(Image="C:\\other.exe", Computer="h", UtcTime=utc(T0 + 10_000))
    eng.feed(a, m.match(a))
    eng.feed(other, m.match(other))
    assert eng.flush() == []
    b = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + 5000))
    assert eng.feed(b, m.match(b)) + eng.flush() == []
    assert eng.stats()["late_events"] == 1


def test_a_percentile_alert_names_its_percentile(tmp_path):
    rep = simple(tmp_path, "gte: 1, field: Size, percentile: 90", ctype="value_percentile")
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h", "Size": 10})])
    assert alerts[0]["correlation"]["percentile"] == 90
    _, alerts, _ = run(simple(tmp_path, "gte: 1"), [(0, {"Image": "C:\\a.exe", "Computer": "h"})])
    assert "percentile" not in alerts[0]["correlation"]


def test_a_sum_is_exact_after_a_large_value_leaves_the_window(tmp_path):
    # sum and mean of the numbers in the window: 1e16 leaves it, 1 and 1 remain (a running
    # floating-point sum would have lost both ones to the large value's rounding)
    for ctype, want in (("value_sum", 2.0), ("value_avg", 1.0)):
        rep = simple(tmp_path, "gte: 0, field: Size", ctype=ctype)
        _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h", "Size": 1e16}),
                                 (30_000, {"Image": "C:\\a.exe", "Computer": "h", "Size": 1}),
                                 (61_000, {"Image": "C:\\a.exe", "Computer": "h", "Size": 1})])
        assert alerts[-1]["correlation"]["value"] == want, ctype


def test_a_boolean_groups_as_its_text(tmp_path):
    # fold: a group-by value is its text, folded to lower case (True is "true", False "false")
    rep = simple(tmp_path, "gte: 2", group_by="[Elevated]")
    for value, text in ((True, "TRUE"), (False, "False")):
        _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe", "Elevated": value}),
                                 (1000, {"Image": "C:\\a.exe", "Elevated": text})])
        assert [a["correlation"]["group"] for a in alerts] == [{"Elevated": text.lower()}]


def _held_after(feed) -> int:
    """Memory still allocated after ``feed()`` ran, garbage collected (tracemalloc)."""
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        feed()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_a_long_lived_window_holds_only_what_is_in_it(tmp_path):
    # One host for an hour of a 1-minute window (about 100 entries at a time): what left the
    # window is let go, so memory stays at about the window's worth however long the stream runs.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: values
        correlation: {type: value_count, rules: [a], group-by: [Computer], timespan: 1m,
                      condition: {gte: 1000, field: CommandLine}}
        """)
    eng = CorrelationEngine(rep.rules, rep.correlations)

    def feed():
        for i in range(6000):
            e = {"Computer": "h", "CommandLine": f"{i:06d}" + "x" * 2000}
            assert eng.feed(e, [0], ts=T0 + i * 600) == []

    held = _held_after(feed)
    assert eng.stats()["entries"] == 101           # [T - 60 s, T] at 600 ms steps
    # 101 entries of 2 KB, each kept as written and folded: 0.4 MiB
    assert held < 2 << 20, f"{held / 2**20:.1f} MiB held for a window of 101 entries"


def test_a_long_lived_ordered_window_holds_only_the_times_in_it(tmp_path):
    # temporal_ordered keeps each rule's times in the window; those that left it are let go
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="b.exe"), """
        title: ordered
        correlation: {type: temporal_ordered, rules: [a, b], group-by: [Computer], timespan: 1m}
        """)
    eng = CorrelationEngine(rep.rules, rep.correlations)
    ia, ib = (next(i for i, r in enumerate(rep.rules) if r.title == f"stub {x}") for x in "ab")
    e = {"Computer": "h"}

    def feed():
        for i in range(10_000):                     # a, b, a, b, ... 600 ms apart
            eng.feed(e, [ib if i % 2 else ia], ts=T0 + i * 600)

    held = _held_after(feed)
    st = eng.stats()
    # an alert at every time from the first b on (the last time waits for a flush)
    assert st["alerts"] == 9998 and st["entries"] == 101
    assert held < 256 << 10, f"{held >> 10} KiB held for a window of 101 entries"


def test_an_alert_built_without_a_kept_rule_block_makes_its_own(tmp_path):
    from sensor.detect.correlate import build_correlation_alert, correlation_summary
    (corr,) = simple(tmp_path).correlations
    alert = build_correlation_alert(corr, {"Computer": "h"}, T0, 2, [], [], False, {}, "id",
                                    "now")
    assert alert["rule"] == correlation_summary(corr) and alert["rule"]["id"] == corr.id


def test_a_child_alerts_truncated_evidence_makes_its_parents_truncated(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 3}}
        """, """
        title: outer
        generate: true
        correlation: {type: event_count, rules: [inner], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """)
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations, max_evidence=2)
    out = []
    for i in range(3):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + i * 1000))
        out += eng.feed(e, m.match(e))
    out += eng.flush()
    by = {a["rule"]["title"]: a["correlation"] for a in out}
    assert by["inner"]["evidence_truncated"] is True and len(by["inner"]["event_ids"]) == 2
    # the outer alert shows the two events it got, and that more contributed
    assert by["outer"]["event_ids"] == by["inner"]["event_ids"]
    assert by["outer"]["evidence_truncated"] is True


def test_pending_says_when_something_waits_for_evaluation(tmp_path):
    rep = simple(tmp_path, "gte: 2")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations, lateness_ms=1000)
    assert eng.pending() is False
    e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0))
    eng.feed(e, m.match(e))
    assert eng.stats()["reorder_buffered"] == 1 and eng.pending() is True    # held
    later = ProcessEvent(Image="C:\\other.exe", Computer="h", UtcTime=utc(T0 + 1000))
    eng.feed(later, m.match(later))
    # let go of the buffer, its time not yet final (another event at it may come)
    assert eng.stats()["reorder_buffered"] == 0 and eng.pending() is True
    eng.flush()
    assert eng.pending() is False


def test_a_restored_state_is_the_saved_one(tmp_path):
    # a chain whose outer window keeps an inner alert after the inner window let its events go
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="b.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [User], timespan: 1s, condition: {gte: 2}}
        """, """
        title: outer
        id: 10000000-0000-4000-8000-0000000000ee
        correlation: {type: temporal_ordered, rules: [inner, b], group-by: [User], timespan: 1h}
        """, """
        title: other
        id: 10000000-0000-4000-8000-0000000000ef
        correlation: {type: event_count, rules: [b], group-by: [Computer], timespan: 1h, condition: {gte: 5}}
        """)
    m = create(rep.rules, "reference")
    one = CorrelationEngine(rep.rules, rep.correlations)
    for img, t in (("a", 0), ("a", 500), ("a", 5000), ("b", 6000)):
        e = ProcessEvent(Image=f"C:\\{img}.exe", User="bob", Computer="pc",
                         CommandLine=f"{img} " + "x" * 5000, UtcTime=utc(T0 + t))
        one.feed(e, m.match(e))
    one.flush()
    state = str(tmp_path / "s.json")
    one.save_state(state)
    two = CorrelationEngine(rep.rules, rep.correlations)
    assert two.load_state(state) == {"restored": True, "correlations": 3,
                                     "saved_at": two.state_note["saved_at"]}
    keys = ("entries", "groups", "state_mb", "alerts", "evicted")
    was = {c: {k: v[k] for k in keys} for c, v in one.stats()["by_correlation"].items()}
    now = {c: {k: v[k] for k in keys} for c, v in two.stats()["by_correlation"].items()}
    assert now == was and was["10000000-0000-4000-8000-0000000000ee"]["entries"] == 2
    # it goes on as the first engine would have
    e = ProcessEvent(Image="C:\\b.exe", User="bob", Computer="pc", UtcTime=utc(T0 + 7000))
    a1 = one.feed(e, m.match(e)) + one.flush()
    a2 = two.feed(e, m.match(e)) + two.flush()
    strip = lambda xs: [(x["id"], x["correlation"]) for x in xs]     # noqa: E731
    assert strip(a1) == strip(a2) and len(a1) == 1


def test_a_restart_keeps_the_windows_of_unchanged_correlations_beside_changed_ones(tmp_path):
    docs = [stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: COND}}
        """, """
        title: outer
        correlation: {type: event_count, rules: [inner], group-by: [Computer], timespan: 1m, condition: {gte: 9}}
        """, """
        title: kept
        id: 10000000-0000-4000-8000-0000000000ea
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 3}}
        """]
    rep = loaded(tmp_path, *[d.replace("COND", "1") for d in docs])
    m = create(rep.rules, "reference")
    one = CorrelationEngine(rep.rules, rep.correlations)
    for t in (0, 1000):
        e = ProcessEvent(Image="C:\\a.exe", Computer="pc", UtcTime=utc(T0 + t))
        one.feed(e, m.match(e))
    one.flush()
    state = str(tmp_path / "s.json")
    one.save_state(state)
    # the inner correlation changed: its windows and its alerts kept by "outer" are dropped
    rep2 = loaded(tmp_path, *[d.replace("COND", "2") for d in docs])
    two = CorrelationEngine(rep2.rules, rep2.correlations)
    note = two.load_state(state)
    assert note["restored"] is True and note["discarded"] == ["sigma-rules-inner"]
    per = two.stats()["by_correlation"]
    assert per["10000000-0000-4000-8000-0000000000ea"]["entries"] == 2
    m = create(rep2.rules, "reference")
    e = ProcessEvent(Image="C:\\a.exe", Computer="pc", UtcTime=utc(T0 + 2000))
    out = two.feed(e, m.match(e)) + two.flush()
    assert [a["correlation"]["value"] for a in out if a["rule"]["title"] == "kept"] == [3]


def test_a_restart_without_a_chain_keeps_the_other_chains(tmp_path):
    def chain(n, rule):
        return [f"""
        title: inner{n}
        name: inner{n}
        correlation: {{type: event_count, rules: [{rule}], group-by: [Computer], timespan: 1m, condition: {{gte: 1}}}}
        """, f"""
        title: outer{n}
        id: 10000000-0000-4000-8000-00000000010{n}
        correlation: {{type: event_count, rules: [inner{n}], group-by: [Computer], timespan: 1m, condition: {{gte: 2}}}}
        """]
    base = [stub(name="a", image="a.exe"), stub(name="b", image="b.exe")]
    rep = loaded(tmp_path, *base, *chain(1, "a"), *chain(2, "b"))
    m = create(rep.rules, "reference")
    one = CorrelationEngine(rep.rules, rep.correlations)
    for img in "ab":
        e = ProcessEvent(Image=f"C:\\{img}.exe", Computer="pc", UtcTime=utc(T0))
        one.feed(e, m.match(e))
    one.flush()
    state = str(tmp_path / "s.json")
    one.save_state(state)
    rep2 = loaded(tmp_path, *base, *chain(2, "b"))        # the first chain was removed
    two = CorrelationEngine(rep2.rules, rep2.correlations)
    note = two.load_state(state)
    assert note["restored"] is True and note["correlations"] == 2
    assert sorted(note["discarded"]) == ["10000000-0000-4000-8000-000000000101", "sigma-rules-inner1"]
    m = create(rep2.rules, "reference")
    e = ProcessEvent(Image="C:\\b.exe", Computer="pc", UtcTime=utc(T0 + 1000))
    out = two.feed(e, m.match(e)) + two.flush()
    assert [(a["rule"]["title"], a["correlation"]["value"]) for a in out] == [("outer2", 2)]


def _saved(tmp_path):
    """A correlation's saved state document (two entries) and its rule set."""
    rep = simple(tmp_path, "gte: 3")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    for t in (0, 1000):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + t))
        eng.feed(e, m.match(e))
    eng.flush()
    return json.loads(json.dumps(eng.export_state())), rep


@pytest.mark.parametrize("damage, why", [
    (lambda d: d.update(format="something-else"), "not a correlation state file of this version"),
    (lambda d: d.update(version=2), "not a correlation state file of this version"),
    (lambda d: d.pop("events"), "'events'"),                                 # KeyError
    (lambda d: d.update(events=5), "not iterable"),                          # TypeError
    (lambda d: d["events"][0].__setitem__(3, "x"), "bad event record"),      # ValueError
    (lambda d: d.update(nodes=[]), "no attribute 'items'"),                  # AttributeError
    (lambda d: d["events"].__setitem__(0, [1, 2]), "not enough values"),     # ValueError
    # the first entry restores, the second names an event the file lacks: nothing half kept
    (lambda d: next(iter(d["nodes"].values()))["groups"][0][1][1].__setitem__(3, 999), "999"),
])
def test_a_damaged_state_file_starts_empty_and_says_why(tmp_path, damage, why):
    doc, rep = _saved(tmp_path)
    damage(doc)
    state = tmp_path / "s.json"
    state.write_text(json.dumps(doc))
    eng = CorrelationEngine(rep.rules, rep.correlations)
    note = eng.load_state(str(state))
    assert note["restored"] is False and why in note["reason"], note
    assert note["reason"].startswith("saved state unusable, windows start empty: ")
    assert eng.stats()["entries"] == 0 and eng.stats()["state"] == note
    assert [n.bytes for n in eng.nodes] == [0]          # nothing half restored stays counted


def test_a_state_file_that_cannot_be_read_starts_empty_and_says_why(tmp_path):
    doc, rep = _saved(tmp_path)
    eng = CorrelationEngine(rep.rules, rep.correlations)
    note = eng.load_state(str(tmp_path))                 # a folder, not a file
    assert note["restored"] is False and note["reason"].startswith("saved state unusable")
    note = eng.load_state(str(tmp_path / "none.json"))
    assert note["restored"] is False and note["reason"].startswith("no saved state")


def test_a_restart_keeps_the_values_a_parent_read_from_its_children(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: outer
        correlation: {type: value_sum, rules: [inner], group-by: [Computer], timespan: 1m,
                      condition: {gte: 3, field: sigma_metric}}
        """)
    m = create(rep.rules, "reference")
    e = lambda t: ProcessEvent(Image="C:\\a.exe", Computer="pc", UtcTime=utc(T0 + t))  # noqa: E731
    one = CorrelationEngine(rep.rules, rep.correlations)
    one.feed(e(0), m.match(e(0)))            # inner: 1; outer: 1
    one.flush()
    state = str(tmp_path / "s.json")
    one.save_state(state)
    two = CorrelationEngine(rep.rules, rep.correlations)
    assert two.load_state(state)["restored"] is True
    out = two.feed(e(1000), m.match(e(1000))) + two.flush()     # inner: 2; outer: 1 + 2
    assert [a["correlation"]["value"] for a in out] == [3]


def test_an_event_without_one_correlations_group_field_still_counts_for_the_others(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: by tag
        id: 10000000-0000-4000-8000-0000000000b1
        correlation: {type: event_count, rules: [a], group-by: [Tag], timespan: 1m, condition: {gte: 2}}
        """, """
        title: by host
        id: 10000000-0000-4000-8000-0000000000b2
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
        """)
    _, alerts, eng = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "pc"}),
                               (1000, {"Image": "C:\\a.exe", "Computer": "pc"})])
    assert [a["rule"]["title"] for a in alerts] == ["by host"]
    per = eng.stats()["by_correlation"]
    assert per["10000000-0000-4000-8000-0000000000b1"]["missing_group_key"] == 2
    assert per["10000000-0000-4000-8000-0000000000b2"]["missing_group_key"] == 0


def test_the_documented_defaults_and_bounds(tmp_path):
    # docs/hostile-inputs.md ("Correlation state") and docs/sigma.md ("Time, order and bounds")
    import sys

    import sensor.detect.correlate as correlate_mod
    assert correlate_mod.MAX_STATE_FILE == 512 << 20
    rep = simple(tmp_path, "gte: 101")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    st = eng.stats()
    assert st["max_state"] == 20_000 and st["max_state_mb"] == 64
    out = []
    for i in range(101):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", RecordId=str(i), UtcTime=utc(T0 + i))
        out += eng.feed(e, m.match(e))
    out += eng.flush()
    (c,) = [a["correlation"] for a in out]
    assert c["value"] == 101 and len(c["event_ids"]) == 100 and c["evidence_truncated"] is True
    # the state estimate: the kept strings' exact sizes plus 256 bytes per entry and per group
    one = CorrelationEngine(rep.rules, rep.correlations)
    e = ProcessEvent(Image="C:\\a.exe", Computer="Host", UtcTime=utc(T0))
    one.feed(e, m.match(e))
    assert one.nodes[0].bytes == 256 + sys.getsizeof("host") + 256 + sys.getsizeof("Host")
    two = simple(tmp_path, "gte: 2", group_by="[Computer, User]")
    eng = CorrelationEngine(two.rules, two.correlations)
    e = ProcessEvent(Image="C:\\a.exe", Computer="Host", User="Bob", UtcTime=utc(T0))
    eng.feed(e, create(two.rules, "reference").match(e))
    assert eng.nodes[0].bytes == (256 + sys.getsizeof("host") + sys.getsizeof("bob")
                                  + 256 + sys.getsizeof("Host") + sys.getsizeof("Bob"))


def test_a_state_file_says_its_format_and_version(tmp_path):
    # files saved by earlier runs carry version 1 and must keep loading
    rep = simple(tmp_path, "gte: 3")
    doc = CorrelationEngine(rep.rules, rep.correlations).export_state()
    assert doc["format"] == "etw-sensor-correlation-state" and doc["version"] == 1


def test_a_child_alert_without_its_parents_group_field_is_counted_as_missing(tmp_path):
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: outer
        id: 10000000-0000-4000-8000-0000000000c1
        correlation: {type: event_count, rules: [inner], group-by: [User], timespan: 1m, condition: {gte: 1}}
        """)
    _, alerts, eng = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "pc"}),
                               (1000, {"Image": "C:\\a.exe", "Computer": "pc"})])
    assert alerts == []             # the inner alerts' events have no User
    per = eng.stats()["by_correlation"]["10000000-0000-4000-8000-0000000000c1"]
    assert per["missing_group_key"] == 2 and per["entries"] == 0


def test_one_correlation_over_its_cap_leaves_the_others_alerts_alone(tmp_path):
    # Both keep the event (its 100 KB command line is carried); "by command line" also keeps the
    # command line as its group key, which puts its one entry over the 0.15 MB cap, so it is
    # evicted at once. "by host" keeps its entry and alerts at that time as usual.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: by host
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: by command line
        correlation: {type: event_count, rules: [a], group-by: [CommandLine], timespan: 1m, condition: {gte: 1}}
        """)
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations, max_state_mb=0.15)
    e = ProcessEvent(Image="C:\\a.exe", Computer="pc", CommandLine="x" * 100_000, UtcTime=utc(T0))
    out = eng.feed(e, m.match(e)) + eng.flush()
    assert [a["rule"]["title"] for a in out] == ["by host"]
    per = {v["title"]: v for v in eng.stats()["by_correlation"].values()}
    assert per["by command line"]["evicted"] == 1 and per["by host"]["entries"] == 1


def test_a_window_keeps_only_the_carried_fields_of_its_events(tmp_path):
    # grouped by host: the 20 KB command lines are not carried, so once an event's time is
    # evaluated the window keeps its host name, not the whole event
    rep = simple(tmp_path, "gte: 1000")
    eng = CorrelationEngine(rep.rules, rep.correlations)

    def feed():
        for i in range(600):
            e = {"Computer": "h", "CommandLine": f"{i:06d}" + "x" * 20_000}
            assert eng.feed(e, [0], ts=T0 + i * 100) == []

    held = _held_after(feed)
    assert eng.stats()["entries"] == 600           # all within the minute
    assert held < 1 << 20, f"{held / 2**20:.1f} MiB held for 600 host names"


def test_a_state_file_without_the_counters_restores_them_as_zero(tmp_path):
    doc, rep = _saved(tmp_path)
    for saved in doc["nodes"].values():
        del saved["alerts"], saved["evicted"]
    state = tmp_path / "s.json"
    state.write_text(json.dumps(doc))
    eng = CorrelationEngine(rep.rules, rep.correlations)
    assert eng.load_state(str(state))["restored"] is True
    per = eng.stats()["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]
    assert per["entries"] == 2 and per["alerts"] == 0 and per["evicted"] == 0


@pytest.mark.parametrize("seq", [None, 1])
def test_a_state_file_without_a_usable_next_number_still_counts_new_events_apart(tmp_path, seq):
    # A state file is input: one that lost (or understates) its `seq` must not make a new event
    # pass for a restored one (the count would stay 1 and the evidence lose an event).
    rep = simple(tmp_path, "gte: 2")
    rules = rep.rules
    m = create(rules, "reference")
    state = tmp_path / "state.json"
    evs = [ProcessEvent(Image="C:\\a.exe", Computer="h", RecordId=str(i),
                        UtcTime=utc(T0 + i * 1000)) for i in range(2)]
    one = CorrelationEngine(rules, rep.correlations)
    assert one.feed(evs[0], m.match(evs[0])) == [] and one.flush() == []
    one.save_state(str(state))
    doc = json.loads(state.read_text())
    if seq is None:
        del doc["seq"]
    else:
        doc["seq"] = seq
    state.write_text(json.dumps(doc))
    two = CorrelationEngine(rules, rep.correlations)
    assert two.load_state(str(state))["restored"] is True
    out = two.feed(evs[1], m.match(evs[1])) + two.flush()
    from sensor.detect.correlate import event_id
    assert [a["correlation"]["value"] for a in out] == [2]
    assert sorted(out[0]["correlation"]["event_ids"]) == sorted(event_id(e) for e in evs)


@pytest.mark.parametrize("ctype, cond, value", [("value_sum", "gte: 5", 5), ("value_avg", "gte: 5", 5),
                                                ("value_count", "gte: 1", 1),
                                                ("event_count", "gte: 1", 1)])
def test_an_event_in_two_slots_keeps_its_value_when_the_cap_drops_one_of_its_entries(tmp_path, ctype,
                                                                                    cond, value):
    # One event in two slots is one event with one value; with max_state=1 the cap drops one of
    # its two entries, the other keeps the event in the window, and with it the value.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="a.exe"), f"""
        title: c
        id: 10000000-0000-4000-8000-0000000000ce
        correlation:
            type: {ctype}
            rules: [a, b]
            group-by: [Computer]
            timespan: 1m
            condition: {{{cond}, field: bytes_sent}}""" if ctype != "event_count" else f"""
        title: c
        id: 10000000-0000-4000-8000-0000000000ce
        correlation:
            type: {ctype}
            rules: [a, b]
            group-by: [Computer]
            timespan: 1m
            condition: {{{cond}}}""")
    assert not rep.rejected
    _, alerts, eng = run(rep, [(0, {"Image": "C:\\a.exe", "Computer": "h", "bytes_sent": "5"})],
                         max_state=1)
    assert eng.stats()["entries"] == 1 and eng.stats()["evicted"] == 1
    assert [a["correlation"]["value"] for a in alerts] == [value]


def test_an_event_keeps_each_of_its_values_when_the_cap_drops_its_first_slot(tmp_path):
    # Three slots read the value through aliases (x, y, x): the event's values are 5 and 7, once
    # each. The cap drops its first entry; the other two still hold both values.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="a.exe"),
                 stub(name="c", image="a.exe"), """
        title: c
        id: 10000000-0000-4000-8000-0000000000cf
        correlation:
            type: value_sum
            rules: [a, b, c]
            group-by: [Computer]
            timespan: 1m
            aliases:
                v: {a: x, b: y, c: x}
            condition: {gte: 1, field: v}""")
    assert not rep.rejected
    event = {"Image": "C:\\a.exe", "Computer": "h", "x": "5", "y": "7"}
    _, alerts, eng = run(rep, [(0, event)])
    assert [a["correlation"]["value"] for a in alerts] == [12]         # uncapped: 5 + 7
    _, alerts, eng = run(rep, [(0, event)], max_state=2)
    assert eng.stats()["entries"] == 2 and eng.stats()["evicted"] == 1
    assert [a["correlation"]["value"] for a in alerts] == [12]
    # with one entry left (c's, read from x) the event counts with that slot's value only
    _, alerts, eng = run(rep, [(0, event)], max_state=1)
    assert eng.stats()["entries"] == 1 and eng.stats()["evicted"] == 2
    assert [a["correlation"]["value"] for a in alerts] == [5]


def _mixed_window(tmp_path, inners: int):
    """outer counts a's events and the alerts of ``inners`` correlations over b (one per b event);
    the inner alerts are kept (``generate: true``) to name them."""
    docs = [stub(name="a", image="a.exe"), stub(name="b", image="b.exe")]
    for i in range(inners):
        docs.append(f"""
        title: inner{i}
        name: inner{i}
        correlation: {{type: event_count, rules: [b], group-by: [Computer], timespan: 1s, condition: {{gte: 1}}}}
        """)
    refs = ", ".join([f"inner{i}" for i in range(inners)] + ["a"])
    docs.append(f"""
        title: outer
        generate: true
        correlation: {{type: event_count, rules: [{refs}], group-by: [Computer], timespan: 1m, condition: {{gte: 4}}}}
        """)
    return loaded(tmp_path, *docs)


@pytest.mark.parametrize("inners, stream, events, kids", [
    # newest first: a, a (event_ids full), child of b@2000 (its id fits, its event does not):
    # the listing stops there; the older child is not listed
    (1, [("b", 0), ("b", 2000), ("a", 4000), ("a", 6000)], [6000, 4000], [2000]),
    # newest first: a, a (full), a (does not fit): the listing stops; the child is not listed
    (1, [("b", 0), ("a", 2000), ("a", 4000), ("a", 6000)], [6000, 4000], []),
    # three children of one b event, then an older a: alert_ids is full at the third child, and
    # the listing stops there though event_ids has room
    (3, [("a", 0), ("b", 10)], [10], None),
])
def test_evidence_of_a_mixed_window_is_its_newest_part_up_to_the_first_that_does_not_fit(
        tmp_path, inners, stream, events, kids):
    # event_ids and alert_ids (at most max_evidence each) list the newest contributions, newest
    # first, and stop at the first event or child alert that does not fit: both lists describe
    # the same newest part of the window, and evidence_truncated says more contributed.
    rep = _mixed_window(tmp_path, inners)
    assert not rep.rejected
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations, max_evidence=2)
    from sensor.detect.correlate import event_id
    evs, out = {}, []
    for name, t in stream:
        e = ProcessEvent(Image=f"C:\\{name}.exe", Computer="h", UtcTime=utc(T0 + t))
        evs[t] = event_id(e)
        out += eng.feed(e, m.match(e))
    out += eng.flush()
    (c,) = [a["correlation"] for a in out if a["rule"]["title"] == "outer"]
    assert c["value"] == 4 and c["evidence_truncated"] is True
    assert sorted(c["event_ids"]) == sorted(evs[t] for t in events)
    if kids is None:
        assert len(c["alert_ids"]) == 2
    else:
        from sensor.detect.correlate import parse_time_ms as ms
        inner = {ms(a["event_time"]) - T0: a["id"] for a in out if a["rule"]["title"] == "inner0"}
        assert sorted(inner) == [t for name, t in stream if name == "b"]
        assert sorted(c["alert_ids"]) == sorted(inner[t] for t in kids)


def test_a_child_alert_costs_64_bytes_per_child_alert_id_it_lists(tmp_path):
    # i counts a's events, m counts i's alerts, o counts m's alerts, all grouped by Computer.
    # i's alert (in m's window) and m's alert (in o's window) keep the same event, group and
    # anchor; m's also lists i's alert id: o's one entry costs 64 bytes more than m's.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: i
        name: i
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: m
        name: m
        correlation: {type: event_count, rules: [i], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: o
        correlation: {type: event_count, rules: [m], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
        """)
    assert not rep.rejected
    m = create(rep.rules, "reference")
    e = ProcessEvent(Image="C:\\a.exe", Computer="h", CommandLine="x" * 100, UtcTime=utc(T0))

    def engine(cap_bytes=None):
        eng = CorrelationEngine(rep.rules, rep.correlations,
                                **({} if cap_bytes is None else {"max_state_mb": cap_bytes / (1 << 20)}))
        eng.feed(e, m.match(e))
        eng.flush()
        return eng, {n.corr.title: n for n in eng.nodes}

    _, nodes = engine()
    mid, out = nodes["m"].bytes, nodes["o"].bytes
    assert nodes["m"].total == nodes["o"].total == 1
    assert out - mid == 64
    # a cap of exactly o's estimate keeps its entry; a byte less drops it (and only it)
    eng, nodes = engine(mid + 64)
    assert eng.stats()["evicted"] == 0 and nodes["o"].total == 1
    eng, nodes = engine(mid + 63)
    assert nodes["o"].evicted == 1 and nodes["o"].total == 0 and nodes["m"].total == 1


def test_a_group_whose_window_emptied_is_forgotten_at_the_next_sweep_every_256_evaluations(tmp_path):
    # The windows are evaluated at each event time as time moves past it; every 256th
    # evaluation (counted from the start) sweeps: a group whose window emptied is forgotten then,
    # and the status counts it under `groups` until then. A group whose last event is exactly
    # `timespan` before the swept time is still in its window and stays.
    rep = simple(tmp_path, "gte: 100000")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)        # lateness 0
    cid = "10000000-0000-4000-8000-0000000000cc"

    def feed(host, t):
        e = ProcessEvent(Image="C:\\a.exe", Computer=host, UtcTime=utc(T0 + t))
        assert eng.feed(e, m.match(e)) == []
        return eng.stats()["by_correlation"][cid]["groups"]

    # distinct times 1..256: h1 at 0, then h2 up to 60,000 (one minute after h1)
    times = [0] + [60_000 - 254 + i for i in range(255)]
    assert feed("h1", times[0]) == 1
    for t in times[1:]:
        assert feed("h2", t) == 2
    # the 257th time makes time move past the 256th (60,000): the sweep keeps h1, whose event
    # is exactly one timespan before it; nothing is swept again until the 512th evaluation
    for t in range(60_001, 60_001 + 256):
        assert feed("h2", t) == 2, t
    # the 513th time: the 512th evaluation sweeps, h1's window is empty and it goes
    assert feed("h2", 60_001 + 256) == 1


def test_a_child_alert_counts_the_fields_its_alert_shows_not_the_events_message(tmp_path):
    # The anchor fields an alert shows (HOSTNAME, COMMANDLINE, ..., event) come from the event
    # that completed the window; MESSAGE says what was counted. A child alert kept in its
    # parent's window counts what it shows: two events that differ only in ProcessId (in the
    # event's own message, not shown) cost the same.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), """
        title: i
        name: i
        correlation: {type: event_count, rules: [a], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: m
        correlation: {type: event_count, rules: [i], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
        """)
    assert not rep.rejected
    m = create(rep.rules, "reference")
    sizes = []
    for pid in ("1", "4" * 40):
        e = ProcessEvent(Image="C:\\a.exe", Computer="h", CommandLine="x", ProcessId=pid,
                         UtcTime=utc(T0))
        eng = CorrelationEngine(rep.rules, rep.correlations)
        eng.feed(e, m.match(e))
        eng.flush()
        (node,) = [n for n in eng.nodes if n.corr.title == "m"]
        assert node.total == 1
        sizes.append(node.bytes)
    assert sizes[0] == sizes[1]


def test_a_correlation_reads_techniques_from_its_tags_as_a_rule_does(tmp_path):
    # rule.mitre is the same for a correlation as for a rule with the same tags (docs/delivery.md
    # maps both to threat.technique): `attack.t` and a digit, whatever follows
    tags = "[attack.t1059.001, attack.t1a, attack.t1, attack.t2.x, attack.tx, attack.execution]"
    rep = loaded(tmp_path, f"""
        title: a
        name: a
        tags: {tags}
        logsource: {{category: process_creation, product: windows}}
        detection: {{selection: {{Image|endswith: '\\a.exe'}}, condition: selection}}
        """, f"""
        title: c
        tags: {tags}
        correlation: {{type: event_count, rules: [a], timespan: 1m, condition: {{gte: 2}}}}
        """)
    assert not rep.rejected
    (rule,) = rep.rules
    _, alerts, _ = run(rep, [(0, {"Image": "C:\\a.exe"}), (1, {"Image": "C:\\a.exe"})])
    assert alerts[0]["rule"]["mitre"] == rule.mitre_techniques
    assert "T1059.001" in rule.mitre_techniques and "TX" not in rule.mitre_techniques


def test_a_restored_child_alert_is_not_taken_for_a_new_event(tmp_path):
    # outer counts b's child alerts (through inner) and a's events. The saved window holds one
    # child alert, numbered after its evidence event; a state file without `seq` must still
    # count a new a event as a second contribution.
    rep = loaded(tmp_path, stub(name="a", image="a.exe"), stub(name="b", image="b.exe"), """
        title: inner
        name: inner
        correlation: {type: event_count, rules: [b], group-by: [Computer], timespan: 1m, condition: {gte: 1}}
        """, """
        title: outer
        correlation: {type: event_count, rules: [inner, a], group-by: [Computer], timespan: 1m, condition: {gte: 2}}
        """)
    assert not rep.rejected
    m = create(rep.rules, "reference")
    state = tmp_path / "state.json"
    b = ProcessEvent(Image="C:\\b.exe", Computer="h", UtcTime=utc(T0))
    a = ProcessEvent(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0 + 1000))
    one = CorrelationEngine(rep.rules, rep.correlations)
    assert one.feed(b, m.match(b)) + one.flush() == []
    one.save_state(str(state))
    doc = json.loads(state.read_text())
    assert doc["children"]
    del doc["seq"]
    state.write_text(json.dumps(doc))
    two = CorrelationEngine(rep.rules, rep.correlations)
    assert two.load_state(str(state))["restored"] is True
    out = two.feed(a, m.match(a)) + two.flush()
    (c,) = [x["correlation"] for x in out if x["rule"]["title"] == "outer"]
    assert c["value"] == 2 and len(c["alert_ids"]) == 1


def test_an_event_that_counted_nowhere_is_let_go_once_its_time_is_evaluated(tmp_path):
    # The engine holds a matched event whole only until its time is evaluated (then its windows
    # keep the fields they need). One without the group-by field counts nowhere (it is counted
    # under missing_group_key) and is let go as well, once time moves past it.
    import weakref

    class Event(dict):          # a mapping that can be watched (ProcessEvent has no weak refs)
        pass

    rep = simple(tmp_path, "gte: 2", group_by="[User]")
    (i,) = range(len(rep.rules))
    eng = CorrelationEngine(rep.rules, rep.correlations)        # lateness 0
    e = Event(Image="C:\\a.exe", Computer="h", UtcTime=utc(T0))  # no User
    gone = weakref.ref(e)
    assert eng.feed(e, [i]) == []
    del e
    # a later event that no referenced rule matched moves time past the first one
    assert eng.feed(Event(Image="C:\\z.exe", UtcTime=utc(T0 + 1)), []) == []
    gc.collect()
    assert gone() is None
    assert eng.stats()["by_correlation"]["10000000-0000-4000-8000-0000000000cc"]["missing_group_key"] == 1
