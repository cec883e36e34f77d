"""Placeholders and the expand modifier (sigma-rules-specification.md "Placeholders",
sigma-appendix-modifiers.md "expand"), with values from a placeholders file."""
from __future__ import annotations

import json
import textwrap

import pytest

from sensor.detect.matcher import create
from sensor.detect.placeholders import PlaceholderError, load_placeholders
from sensor.detect.sigma import load_sigma_text
from sensor.events import ProcessEvent

HEAD = """\
title: t
id: 5f2c7d9a-0000-4000-8000-0000000000e1
logsource:
    category: process_creation
    product: windows
detection:
"""


def compile_(detection: str, values=None):
    res = load_sigma_text(HEAD + textwrap.indent(textwrap.dedent(detection), "    "), "p.yml",
                          placeholders=values)
    return res


def matches(detection: str, values, event: dict) -> bool:
    res = compile_(detection, values)
    assert not res.rejected, res.rejected
    return bool(create(res.rules, "reference").match(ProcessEvent(event)))


VALUES = {"Administrators": ("adm_*", "Administrator"), "JumpServers": ("jump01",),
          "name": ("X",), "Dom": ("corp", "lab")}


@pytest.mark.parametrize("detection,event,expected", [
    # "`field: %name%` handles `%name%` as literal value."
    ("s:\n  User: '%Administrators%'\ncondition: s", {"User": "%Administrators%"}, True),
    ("s:\n  User: '%Administrators%'\ncondition: s", {"User": "adm_bob"}, False),
    # "`field|expand: %name%` handles `%name%` as placeholder."
    ("s:\n  User|expand: '%Administrators%'\ncondition: s", {"User": "ADM_bob"}, True),
    ("s:\n  User|expand: '%Administrators%'\ncondition: s", {"User": "administrator"}, True),
    ("s:\n  User|expand: '%Administrators%'\ncondition: s", {"User": "bob"}, False),
    ("s:\n  User|expand: '%Administrators%'\ncondition: s", {"User": "%Administrators%"}, False),
    # "`field|expand: \\%plain%name%` handles `%plain` as plain value and `%name%` as placeholder."
    ("s:\n  CommandLine|expand: '\\%plain%name%'\ncondition: s", {"CommandLine": "%plainX"}, True),
    ("s:\n  CommandLine|expand: '\\%plain%name%'\ncondition: s", {"CommandLine": "\\%plainX"},
     False),
    # other modifiers still apply, and several placeholders give every combination
    ("s:\n  Computer|expand|contains: '%JumpServers%'\ncondition: s", {"Computer": "x.jump01.y"},
     True),
    ("s:\n  User|expand: '%Dom%\\\\%Administrators%'\ncondition: s", {"User": "lab\\adm_x"},
     True),
    ("s:\n  User|expand: '%Dom%\\\\%Administrators%'\ncondition: s", {"User": "dmz\\adm_x"},
     False),
    # a single backslash escapes the percent sign: the rest is text
    ("s:\n  User|expand: '%Dom%\\%Administrators%'\ncondition: s",
     {"User": "corp%Administrators%"}, True),
    ("s:\n  User|expand: '%Dom%\\%Administrators%'\ncondition: s", {"User": "corp\\adm_x"},
     False),
    # a list value under |all: every expansion must hold (pySigma's value_placeholders)
    ("s:\n  CommandLine|expand|contains|all:\n    - '%Dom%'\n    - run\ncondition: s",
     {"CommandLine": "run corp lab"}, True),
    ("s:\n  CommandLine|expand|contains|all:\n    - '%Dom%'\n    - run\ncondition: s",
     {"CommandLine": "run corp"}, False),
    # in a regular expression the value is inserted as written
    ("s:\n  Computer|re|expand: '^%JumpServers%\\.'\ncondition: s", {"Computer": "jump01.corp"},
     True),
    ("s:\n  Computer|re|expand: '^%JumpServers%\\.'\ncondition: s", {"Computer": "jump01"},
     False),
])
def test_expand(detection, event, expected):
    assert matches(detection, VALUES, event) is expected


def test_an_unresolved_placeholder_rejects_the_rule_naming_it():
    det = "s:\n  User|expand: '%Administrators%'\nt:\n  Computer|expand: '%Servers%'\ncondition: s or t"
    res = compile_(det, VALUES)
    assert not res.rules
    (p,) = res.rejected
    assert p.path == "p.yml" and p.line == 10 and "%Servers%" in p.reason
    res = compile_(det)                       # no placeholders file at all
    assert "%Administrators%" in res.rejected[0].reason and res.rejected[0].line == 8


def test_expansion_is_bounded():
    values = {"A": tuple(str(i) for i in range(20)), "B": tuple(str(i) for i in range(20))}
    res = compile_("s:\n  User|expand: '%A%%B%'\ncondition: s", values)
    assert not res.rules and "at most 200" in res.rejected[0].reason


@pytest.mark.parametrize("text,why,line", [
    ("Administrators: ['adm_*', 1, 2.5]\n", None, None),
    ("- a\n- b\n", "maps names to values", 1),
    ("a: 1\nb: {c: 1}\n", "values must be strings or numbers", 2),
    ("a: 1\nb: true\n", "values must be strings or numbers", 2),
    ("a: []\n", "at least one value", 1),
    ("a: x\n'b%c': y\n", "without % or", 2),
    ("a: [x\n", "YAML syntax error", 2),
])
def test_placeholders_file(tmp_path, text, why, line):
    p = tmp_path / "ph.yml"
    p.write_text(text)
    if why is None:
        assert load_placeholders(p) == {"Administrators": ("adm_*", "1", "2.5")}
        return
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    assert why in e.value.message and e.value.line == line and str(p) in str(e.value)


def test_placeholders_file_is_bounded(tmp_path):
    p = tmp_path / "big.yml"
    p.write_text("a: '" + "x" * (1 << 20) + "'\n")
    with pytest.raises(PlaceholderError, match="larger than"):
        load_placeholders(p)


RULE = HEAD + "    s:\n        User|expand: '%Administrators%'\n    condition: s\n"


def test_scan_and_validate_take_a_placeholders_file(tmp_path, capsys):
    from sensor.cli import main
    rules = tmp_path / "r.yml"
    rules.write_text(RULE)
    ph = tmp_path / "ph.yml"
    ph.write_text("Administrators: ['adm_*']\n")
    rec = tmp_path / "e.jsonl"
    rec.write_text(json.dumps({"User": "adm_x"}) + "\n" + json.dumps({"User": "bob"}) + "\n")
    assert main(["scan", str(rec), "--rules", str(rules), "--no-builtin-rules",
                 "--placeholders", str(ph)]) == 0
    out = capsys.readouterr().out
    assert [json.loads(x)["USERNAME"] for x in out.splitlines()] == ["adm_x"]
    # without the file the rule is rejected (and scan has nothing to run)
    assert main(["scan", str(rec), "--rules", str(rules), "--no-builtin-rules"]) == 2
    assert "r.yml:8: placeholder %Administrators% has no value" in capsys.readouterr().err
    assert main(["rules", "validate", str(rules), "--placeholders", str(ph)]) == 0
    ph.write_text("Administrators: {x: 1}\n")
    assert main(["rules", "validate", str(rules), "--placeholders", str(ph)]) == 2
    assert "ph.yml:1:" in capsys.readouterr().err


def test_config_placeholders_key(tmp_path, capsys):
    from sensor.cli import main
    from sensor.daemon.assemble import build
    from sensor.daemon.config import load
    rules = tmp_path / "r.yml"
    rules.write_text(RULE)
    rec = tmp_path / "e.jsonl"
    rec.write_text(json.dumps({"User": "adm_x"}) + "\n")
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                   f'[rules]\nbuiltin = false\npaths = ["r.yml"]\nplaceholders = "ph.yml"\n')
    cfg.chmod(0o600)                 # a config others can read is refused before anything else
    assert main(["run", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "rules.placeholders" in err and "ph.yml" in err and "Traceback" not in err
    (tmp_path / "ph.yml").write_text("Administrators: adm_*\n")
    parts = build(load(str(cfg)), with_source=False, with_delivery=False)
    assert [r.id for r in parts.rules] == ["5f2c7d9a-0000-4000-8000-0000000000e1"]


def test_a_pack_holds_the_resolved_rule(tmp_path, capsys):
    from sensor.cli import main
    from sensor.detect.loader import load_rules
    rules = tmp_path / "r.yml"
    rules.write_text(RULE)
    ph = tmp_path / "ph.yml"
    ph.write_text("Administrators: ['adm_*']\n")
    pack = tmp_path / "r.pack"
    assert main(["rules", "compile", str(rules), "-o", str(pack), "--placeholders", str(ph)]) == 0
    assert "wrote" in capsys.readouterr().out
    rep = load_rules([pack], builtin=False)          # no placeholders needed to load it
    m = create(rep.rules, "reference")
    assert m.match(ProcessEvent(User="ADM_x")) == [0] and m.match(ProcessEvent(User="x")) == []
    assert main(["rules", "compile", str(rules), "-o", str(tmp_path / "no.pack")]) == 1


def test_a_placeholders_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    import os
    import subprocess
    import sys
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs mkfifo (POSIX)")
    rules = tmp_path / "r.yml"
    rules.write_text(RULE)
    fifo = tmp_path / "ph.yml"
    os.mkfifo(fifo)
    # no writer ever opens the FIFO: a blocking open would hang (the timeout only guards that)
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "validate", str(rules),
                        "--placeholders", str(fifo)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_doctor_takes_the_placeholders_file_like_validate(tmp_path, capsys):
    # without it the |expand rule is rejected (no verdict); with it the rule gets one
    from sensor.cli import main
    rules = tmp_path / "r.yml"
    rules.write_text(RULE)
    ph = tmp_path / "ph.yml"
    ph.write_text("Administrators: ['adm_*']\n")
    assert main(["rules", "doctor", str(rules), "--no-builtin-rules", "--json"]) == 1
    assert "placeholder %Administrators% has no value" in capsys.readouterr().err
    assert main(["rules", "doctor", str(rules), "--no-builtin-rules", "--json",
                 "--placeholders", str(ph)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rejected"] == [] and "5f2c7d9a-0000-4000-8000-0000000000e1" in json.dumps(doc)


def test_a_placeholders_file_that_is_not_utf8_is_refused_at_its_line(tmp_path):
    p = tmp_path / "ph.yml"
    p.write_bytes(b"\na: x\nb: '\xff'\nc: y\n")         # the bad byte is on line 3
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    assert e.value.message.startswith("not UTF-8 text") and e.value.line == 3
    assert str(e.value).startswith(f"{p}:3: ")


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "No such file or directory"),
    (lambda p: p.mkdir(), "not a regular file"),
])
def test_an_unreadable_placeholders_file_is_named_once_with_the_reason(tmp_path, make, reason):
    p = tmp_path / "ph.yml"
    make(p)
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    # the path is given once (as file:), the reason as the system states it, no "[Errno ...]"
    assert str(e.value) == f"{p}: cannot read placeholders file: {reason}"


def test_a_yaml_error_is_one_line_at_the_files_line(tmp_path):
    p = tmp_path / "ph.yml"
    p.write_text("a: x\nb: [y\n")
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: YAML syntax error: ") and "\n" not in msg
    assert "<unicode string>" not in msg          # the parser's own name for the text


def test_a_name_that_is_not_text_is_refused_at_its_line(tmp_path):
    p = tmp_path / "ph.yml"
    p.write_text("a: x\n2: y\n")
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    assert "placeholder name 2 must be text" in e.value.message and e.value.line == 2


def test_placeholder_values_are_bounded_at_exactly_max_values(tmp_path):
    from sensor.detect.placeholders import MAX_VALUES
    assert MAX_VALUES == 10_000                   # docs/hostile-inputs.md states the number
    p = tmp_path / "ph.yml"
    p.write_text("a: [" + ", ".join(["x"] * 9_999) + "]\nb: y\n")
    values = load_placeholders(p)
    assert len(values["a"]) + len(values["b"]) == MAX_VALUES
    p.write_text("a: [" + ", ".join(["x"] * 9_999) + "]\nb: [y, z]\n")
    with pytest.raises(PlaceholderError) as e:
        load_placeholders(p)
    assert e.value.message == "more than 10000 placeholder values" and e.value.line == 2


def test_a_placeholders_file_of_exactly_the_bound_is_read(tmp_path):
    from sensor.detect.placeholders import MAX_FILE_BYTES
    assert MAX_FILE_BYTES == 1 << 20              # docs/hostile-inputs.md states the number
    p = tmp_path / "ph.yml"
    head = b"a: '"
    p.write_bytes(head + b"x" * (MAX_FILE_BYTES - len(head) - 2) + b"'\n")
    assert load_placeholders(p) == {"a": ("x" * (MAX_FILE_BYTES - len(head) - 2),)}
    p.write_bytes(head + b"x" * (MAX_FILE_BYTES - len(head) - 1) + b"'\n")
    with pytest.raises(PlaceholderError, match="larger than"):
        load_placeholders(p)


# A value that uses the specification's \% is read by the sensor itself (pySigma reads \% as a
# backslash before a placeholder): the rest of the value keeps the Sigma escapes and wildcards
# (rules specification, "Escaping": a backslash escapes *, ? and itself, and is a plain
# backslash before anything else, or at the end).
@pytest.mark.parametrize("value,text,expected", [
    ("\\%p%name%\\", "%pX\\", True),                 # a backslash at the end is plain
    ("\\%p%name%C:\\Win", "%pXC:\\Win", True),       # a backslash before a letter is plain
    ("\\%p%name%C:\\Win", "%pXC:Win", False),
    ("\\%p%name%a\\*", "%pXa*", True),               # \* is a plain star, even at the end
    ("\\%p%name%a\\*", "%pXa\\zz", False),
    ("\\%p*x", "%pabcx", True),                      # * is any run of characters
    ("\\%p*x", "%pabc", False),
    ("\\%p?x", "%pZx", True),                        # ? is exactly one character
    ("\\%p?x", "%pZ", False),
    ("\\%p?x", "%pZZx", False),
    ("\\%p%N%", "%pn1", True),                       # a one-character placeholder name
    ("\\%p%%name%", "%p%X", True),                   # a lone % is text, then the placeholder
    ("%%name%", "%X", True),                         # the same without \% (pySigma's reading)
])
def test_a_value_with_an_escaped_percent_keeps_the_sigma_escapes(value, text, expected):
    det = f"s:\n  CommandLine|expand: '{value}'\ncondition: s"
    assert matches(det, dict(VALUES, N=("n1",)), {"CommandLine": text}) is expected


def test_expand_after_windash_expands_every_variant():
    det = "s:\n  CommandLine|windash|expand|contains: '-f %name%'\ncondition: s"
    assert matches(det, VALUES, {"CommandLine": "run /f X"})
    assert matches(det, VALUES, {"CommandLine": "run -f X"})
    assert not matches(det, VALUES, {"CommandLine": "run -f Y"})


def test_every_map_of_a_list_has_its_placeholders_resolved():
    det = ("s:\n  - User|expand: '%Administrators%'\n  - Computer|expand: '%JumpServers%'\n"
           "condition: s")
    assert matches(det, VALUES, {"Computer": "jump01"})
    assert matches(det, VALUES, {"User": "adm_x"})
    assert not matches(det, VALUES, {"Computer": "jump02"})


def test_expansion_bound_is_200_values_and_names_the_values_line():
    values = {"A": tuple(str(i) for i in range(20)), "B": tuple(str(i) for i in range(10))}
    res = compile_("s:\n  User|expand: '%A%%B%'\ncondition: s", values)
    assert not res.rejected and res.rules                 # 20 x 10 = 200: at the bound
    assert matches("s:\n  User|expand: '%A%%B%'\ncondition: s", values, {"User": "199"})
    values = {"A": tuple(str(i) for i in range(201)), "B": ("b",)}
    res = compile_("s:\n  User|expand: '%A%'\ncondition: s", values)
    (r,) = res.rejected
    assert "into 201 values (at most 200)" in r.reason and r.line == 8
    # the line is the one of the value that expands too far (%B% alone is fine on line 8)
    res = compile_("s:\n  Computer|expand: '%B%'\nu:\n  User|expand: '%A%%B%'\n"
                   "condition: s or u", values)
    (r,) = res.rejected
    assert "into 201 values" in r.reason and r.line == 10


# "\%" is a plain percent sign whatever modifiers come before expand, and adding it to a value
# changes nothing else in how the value reads: a placeholder lies between two wildcards at most
# (pySigma's reading of a value without \%), an escaped wildcard may be part of its name.
@pytest.mark.parametrize("key,value,text,expected", [
    ("CommandLine|contains|expand", "\\%p%name%", "run %pX now", True),
    ("CommandLine|contains|expand", "\\%p%name%", "run \\pX now", False),
    ("CommandLine|startswith|expand", "\\%p%name%", "%pX now", True),
    ("CommandLine|windash|expand|contains", "-f \\%p%name%", "run /f %pX", True),
    ("CommandLine|re|expand", "^\\%p%name%$", "%pX", True),     # \% in a regex: a plain %
    ("CommandLine|re|expand", "^\\%p%name%$", "\\pX", False),
    ("CommandLine|re|expand", "^a\\\\%name%$", "a\\X", True),  # \\ in a regex, then %name%
    ("CommandLine|expand", "%a*b%", "%aZb%", True),             # not a placeholder: text and *
    ("CommandLine|expand", "\\%%a*b%", "%%aZb%", True),         # the same after \%
    ("CommandLine|expand", "\\%%a*b%", "%Q", False),
    ("CommandLine|expand", "%a\\*b%", "Q", True),               # the placeholder a*b
    ("CommandLine|expand", "\\%%a\\*b%", "%Q", True),
    ("CommandLine|expand", "%a\\%b%name%", "%a%bX", True),      # a name holds no escaped %
])
def test_an_escaped_percent_is_plain_before_any_modifier(key, value, text, expected):
    det = f"s:\n  {key}: '{value}'\ncondition: s"
    assert matches(det, dict(VALUES, **{"a*b": ("Q",)}), {"CommandLine": text}) is expected


def test_a_value_with_every_mark_is_rejected_clearly():
    # the sensor marks \% with a private-use character (U+E000 to U+F8FF) the values do not hold
    marks = "".join(chr(c) for c in range(0xE000, 0xF900))
    res = compile_(f"s:\n  CommandLine|expand: '{marks}\\%p%name%'\ncondition: s", VALUES)
    (r,) = res.rejected
    assert "uses every private-use character" in r.reason and r.line == 8
    assert "(U+E000 to U+F8FF)" in r.reason
    # one left free is enough, the first or the last
    for free in (marks[1:], marks[:-1]):
        det = f"s:\n  CommandLine|expand: '{free}\\%p%name%'\ncondition: s"
        assert matches(det, VALUES, {"CommandLine": free + "%pX"})
