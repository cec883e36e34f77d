"""Sigma correlation rules and filters as data (sensor/detect/metarules.py): timespans, the
checks a correlation or filter passes whether it comes from YAML or from a rule pack, the pack
form itself, reference spelling, the state fingerprint and the defaults."""
from __future__ import annotations

import dataclasses
import re
import textwrap

import pytest

from sensor.detect.loader import load_rules
from sensor.detect.metarules import (Correlation, Filter, MetaError, canonical_uuid, resolve,
                                     rule_name, silent_rules, timespan_ms)

RULE = """\
title: rule a
id: 00000000-0000-4000-8000-00000000000a
name: a
logsource:
    category: process_creation
    product: windows
detection:
    selection:
        Image|endswith: '\\a.exe'
    condition: selection
"""

FILTER = """\
title: not the service account
description: svc runs a.exe all day
logsource:
    category: process_creation
    product: windows
filter:
    rules: [a]
    svc:
        User: svc
    condition: not svc
"""


def load(tmp_path, *docs):
    p = tmp_path / "r.yml"
    p.write_text("\n---\n".join(textwrap.dedent(d) for d in docs))
    return load_rules([p], builtin=False)


def corr(**kw) -> Correlation:
    args = dict(id="c1", title="c", type="event_count", rules=("a",), timespan="1m",
                condition=(("gte", 2),))
    args.update(kw)
    return Correlation(**args)


# ---------------------------------------------------------------------------------
# Timespans (docs/sigma.md, "Decisions": s m h d, and w M y as pySigma with M = 30.436875 d
# and y = 365.2425 d).

def test_every_timespan_unit_has_its_documented_length():
    day = 86_400_000
    assert timespan_ms("1s") == 1000
    assert timespan_ms("90s") == 90_000
    assert timespan_ms("1m") == 60_000
    assert timespan_ms("1h") == 3_600_000
    assert timespan_ms("2h") == 7_200_000
    assert timespan_ms("1d") == day
    assert timespan_ms("3d") == 3 * day
    assert timespan_ms("1w") == 7 * day
    assert timespan_ms("2w") == 14 * day
    assert timespan_ms("1M") == round(30.436875 * day)
    assert timespan_ms("12M") == round(12 * 30.436875 * day)
    assert timespan_ms("1y") == round(365.2425 * day)
    assert timespan_ms("2y") == round(2 * 365.2425 * day)
    assert timespan_ms("12M") == timespan_ms("1y")     # twelve mean months are a mean year


# ---------------------------------------------------------------------------------
# Condition thresholds, read as pySigma reads them: a number, or text that is one; integers
# stay exact, a fraction is kept; anything else, or a number that is not finite, is refused.

def _threshold(tmp_path, value: str):
    return load(tmp_path, RULE, f"""\
        title: c
        correlation:
            type: event_count
            rules: [a]
            timespan: 1m
            condition:
                gte: {value}
        """)


@pytest.mark.parametrize("value, want", [("2.5", 2.5), ("'2.5'", 2.5), ("' 3 '", 3),
                                         ("'3.0'", 3), ("3.0", 3), ("'1e1'", 10)])
def test_a_threshold_may_be_a_number_or_text_that_is_one(tmp_path, value, want):
    rep = _threshold(tmp_path, value)
    assert not rep.rejected and len(rep.correlations) == 1, rep.rejected
    ((op, n),) = rep.correlations[0].effective_condition()
    assert op == "gte" and n == want and type(n) is type(want)


@pytest.mark.parametrize("value, why", [("abc", "must be a number"), ("'0x10'", "must be a number"),
                                        (".inf", "must be a finite number"),
                                        ("'1e400'", "must be a finite number"),
                                        ("'nan'", "must be a"),
                                        ("true", "must be a number")])
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path, value, why):
    rep = _threshold(tmp_path, value)
    assert not rep.correlations
    assert len(rep.rejected) == 1 and why in rep.rejected[0].reason, rep.rejected


def test_a_fractional_threshold_is_compared_as_written(tmp_path):
    # gte: 2.5 needs three events: two are not 2.5
    from sensor.detect.correlate import CorrelationEngine
    from sensor.detect.matcher import create
    from sensor.events import ProcessEvent

    rep = _threshold(tmp_path, "'2.5'")
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    values = []
    for s in range(3):
        ev = ProcessEvent({"Image": "C:\\a.exe", "UtcTime": f"2025-01-01 12:00:0{s}.000"})
        values += [a["correlation"]["value"] for a in eng.feed(ev, m.match(ev))]
    values += [a["correlation"]["value"] for a in eng.flush()]
    assert values == [3]


# ---------------------------------------------------------------------------------
# value_percentile's percentile: 0 to 100, both ends included (docs/sigma.md).

@pytest.mark.parametrize("p, ok", [(0, True), (0.5, True), (50, True), (100, True),
                                   (99.5, True), (-1, False), (-0.5, False), (100.5, False),
                                   (101, False)])
def test_a_percentile_is_from_0_to_100_inclusive(tmp_path, p, ok):
    rep = load(tmp_path, RULE, f"""\
        title: c
        correlation:
            type: value_percentile
            rules: [a]
            timespan: 1m
            condition:
                field: Size
                percentile: {p}
                gte: 10
        """)
    if ok:
        assert not rep.rejected and rep.correlations[0].percentile == p
    else:
        assert not rep.correlations
        assert "between 0 and 100" in rep.rejected[0].reason, rep.rejected


# ---------------------------------------------------------------------------------
# Aliases: each alias maps rule references to field names (text, not empty).

def _aliased(mapping: str) -> str:
    """An event_count correlation over rule ``a`` grouped by ``host``, an alias mapping it so."""
    return f"""\
        title: c
        correlation:
            type: event_count
            rules: [a]
            group-by: [host]
            timespan: 1m
            aliases:
                host: {mapping}
            condition: {{gte: 2}}
        """


@pytest.mark.parametrize("mapping", ["{}", "{1: Computer}", "{a: 5}", "{a: ''}", "{a: [x]}"])
def test_an_alias_that_does_not_map_rules_to_field_names_is_refused(tmp_path, mapping):
    rep = load(tmp_path, RULE, _aliased(mapping))
    assert not rep.correlations
    assert "'host' must map rule names to field names" in rep.rejected[0].reason, rep.rejected


def test_an_alias_that_maps_rules_to_field_names_is_taken(tmp_path):
    rep = load(tmp_path, RULE, _aliased("{a: Computer}"))
    assert not rep.rejected and rep.correlations[0].aliases == {"host": {"a": "Computer"}}


# ---------------------------------------------------------------------------------
# The pack form: what to_json writes, from_json reads back whole, and checks again.

def test_a_correlation_comes_back_from_its_pack_form_whole():
    c = corr(type="value_percentile", rules=("a", "b"), timespan="90m",
             group_by=("Computer", "User"), condition=(("gt", 10), ("lte", 20.5)), field="Size",
             percentile=95, aliases={"host": {"a": "Computer", "b": "Host"}}, generate=True,
             name="big", level="high", description="d", tags=("attack.t1059",), author="me",
             references=("https://example.org",), falsepositives=("backups",), source="c.yml",
             line=7, meta={"status": "test"})
    back = Correlation.from_json(c.to_json())
    assert back.origin == "pack"
    assert back.to_json() == dict(c.to_json(), origin="pack")
    # what a pack leaves out falls back to the defaults
    bare = Correlation.from_json({"id": "c2", "title": "t", "type": "temporal", "rules": ["a", "b"],
                                  "timespan": "1m"})
    assert (bare.group_by, bare.condition, bare.aliases, bare.generate, bare.level,
            bare.description, bare.tags, bare.author, bare.references, bare.falsepositives,
            bare.source, bare.meta) == ((), (), {}, False, "medium", "", (), "", (), (), "", {})


def test_a_filter_comes_back_from_its_pack_form_whole(tmp_path):
    rep = load(tmp_path, RULE, FILTER)
    (flt,) = rep.filters
    assert flt.logsource and flt.description and flt.text and flt.source and flt.line
    back = Filter.from_json(flt.to_json())
    assert back.origin == "pack"
    assert back.to_json() == flt.to_json()
    bare = flt.to_json()
    for k in ("logsource", "description", "source", "text"):
        bare[k] = None
    back = Filter.from_json(bare)
    assert (back.logsource, back.description, back.source, back.text) == ({}, "", "", "")


@pytest.mark.parametrize("change", [
    {"id": None},                            # KeyError: a key the form must have
    {"rules": 5},                            # TypeError: not a list
    {"condition": [["gte", 2, 3]]},          # ValueError: not (operator, threshold) pairs
])
def test_a_malformed_correlation_in_a_pack_is_a_meta_error(change):
    d = corr().to_json()
    d.update(change)
    if change.get("id", "") is None:
        del d["id"]
    with pytest.raises(MetaError, match="malformed correlation"):
        Correlation.from_json(d)


@pytest.mark.parametrize("change, why", [
    ({"type": "value_max"}, "is not one of"),
    ({"rules": [""]}, "references must be rule ids or names"),
    ({"rules": [5]}, "references must be rule ids or names"),
    ({"rules": ["b", "a", "b"]}, "listed twice: 'b'"),
    ({"rules": ["b", "c", "a", "c", "b"]}, "listed twice: 'b', 'c'"),   # every one, at once
    ({"condition": [["above", 2]]}, "unknown operator 'above'"),
    ({"condition": [["gte", "abc"]]}, "must be a number"),
    ({"aliases": {"host": {}}}, "must map rule names to field names"),
])
def test_a_pack_correlation_is_checked_as_its_document_was(change, why):
    d = corr().to_json()
    d.update(change)
    with pytest.raises(MetaError, match=why) as err:
        Correlation.from_json(d)
    assert "malformed" not in err.value.message     # the check's own reason, not a wrapper


@pytest.mark.parametrize("change, why", [
    ({"id": None}, "malformed filter"),                                   # KeyError
    ({"predicates": 5}, "malformed filter"),                              # TypeError
    ({"logsource": "ab"}, "malformed filter"),                            # ValueError
    ({"rules": [""]}, "references must be rule ids or names"),
    ({"rules": [5]}, "references must be rule ids or names"),
    ({"logsource": {"os": "windows"}}, "category/product/service strings"),
    ({"logsource": {"category": 5}}, "category/product/service strings"),
])
def test_a_pack_filter_is_checked_as_its_document_was(tmp_path, change, why):
    d = load(tmp_path, RULE, FILTER).filters[0].to_json()
    d.update(change)
    if change.get("id", "") is None:
        del d["id"]
    with pytest.raises(MetaError, match=why):
        Filter.from_json(d)


def test_a_filter_logsource_must_be_a_mapping(tmp_path):
    flt = load(tmp_path, RULE, FILTER).filters[0]
    fields = {f.name: getattr(flt, f.name) for f in dataclasses.fields(Filter)}
    for bad in ("windows", ["category"], None):
        with pytest.raises(MetaError, match="category/product/service strings"):
            Filter(**dict(fields, logsource=bad))


# ---------------------------------------------------------------------------------
# References, names, fingerprints and defaults.

def test_a_uuid_reference_in_any_spelling_is_canonical_and_anything_else_is_none():
    u = "6f3e2987-db24-4c78-a860-b4f4095a7095"
    for spelling in (u, u.upper(), "{" + u + "}", "urn:uuid:" + u, u.replace("-", "")):
        assert canonical_uuid(spelling) == u
    for other in ("rar", "", "6f3e2987", None, 5, 5.5, ["x"], b"x"):
        assert canonical_uuid(other) is None


def test_a_name_is_non_empty_text(tmp_path):
    r = load(tmp_path, RULE).rules[0]
    assert rule_name(r) == "a"
    for bad in ("", 5, ["a"], None):
        assert rule_name(dataclasses.replace(r, meta=dict(r.meta, name=bad))) is None
    assert rule_name(corr(name="n")) == "n"


def test_a_correlation_silences_its_rules_unless_it_says_generate(tmp_path):
    rules = load(tmp_path, RULE).rules
    c = corr()                                   # generate not given: false (the spec's default)
    assert c.generate is False
    res = resolve(rules, [c], [])
    assert res.correlations == [c] and silent_rules(res.correlations) == {id(res.rules[0])}
    loud = corr(id="c2", generate=True)
    res = resolve(rules, [loud], [])
    assert silent_rules(res.correlations) == set()


def test_the_fingerprint_does_not_depend_on_how_aliases_are_written():
    # a restart or reload keeps the windows of an unchanged correlation (docs/sigma.md,
    # "Restarts"): the same aliases written in another order are the same definition
    one = corr(rules=("a", "b"), group_by=("host",),
               aliases={"host": {"a": "Computer", "b": "Host"}, "user": {"a": "User", "b": "U"}})
    two = corr(rules=("a", "b"), group_by=("host",),
               aliases={"user": {"b": "U", "a": "User"}, "host": {"b": "Host", "a": "Computer"}})
    assert one.fingerprint() == two.fingerprint()
    three = corr(rules=("a", "b"), group_by=("host",),
                 aliases={"host": {"a": "Computer", "b": "User"}, "user": {"a": "User", "b": "U"}})
    assert three.fingerprint() != one.fingerprint()


def test_the_fingerprint_is_the_documented_96_bit_digest():
    # docs/sigma.md ("Reloads"): 24 lower-case hex digits, saved in the state file
    for c in (corr(), corr(id="c2", rules=("a", "b"), group_by=("host",))):
        assert re.fullmatch(r"[0-9a-f]{24}", c.fingerprint())
