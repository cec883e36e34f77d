"""tools/mutation.py's own rules, checked on every run (the mutation run itself is scheduled):
the equivalents file is well formed and names real code, annotations are never mutated, and an
equivalent entry matches only its own mutant."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def test_every_equivalent_names_a_mapped_module_a_real_line_and_a_reason():
    tool = _tool()
    entries = tool.load_equivalents()
    for e in entries:
        assert e["module"] in tool.MODULES, e
        source = {" ".join(x.split()) for x in (ROOT / e["module"]).read_text().splitlines()}
        assert tool._norm(e["line"]) in source, f"{e['module']}: no line {e['line']!r} (stale entry)"
        assert tool._norm(e["line"]) != tool._norm(e["mutant"]), e
        assert len(e["reason"].split()) >= 5, f"a reason, not a label: {e}"


def test_every_mapped_module_and_test_file_exists():
    tool = _tool()
    for module, tests in tool.MODULES.items():
        assert (ROOT / module).is_file(), module
        for t in tests:
            assert (ROOT / t).is_file(), t


def test_annotations_are_not_mutated_only_when_they_are_never_evaluated():
    tool = _tool()
    lazy = "from __future__ import annotations\ndef f(a: int | None, *, b: 'x' = 1) -> int | str:\n    y: int = a | 1\n"
    spans = tool.annotation_spans(lazy)
    inside = [(2, 9), (2, 15), (2, 39)]
    outside = [(3, 13), (2, 32)]          # `a | 1` in the body, the default value
    assert all(any(a <= p < b for a, b in spans) for p in inside)
    assert not any(any(a <= p < b for a, b in spans) for p in outside)
    assert tool.annotation_spans(lazy.split("\n", 1)[1]) == []   # evaluated at def time: mutate


def test_an_equivalent_entry_matches_its_mutant_only():
    tool = _tool()
    entries = [{"module": "m.py", "line": "x = a  <  b", "mutant": "x = a <= b", "reason": "r"}]
    survivors = [tool.Mutant("A#0", "A", 0, 3, "x = a < b", "x = a <= b", "survived"),
                 tool.Mutant("B#0", "B", 0, 3, "x = a < b", "x = a > b", "survived"),
                 tool.Mutant("C#0", "C", 0, 3, "x = a < b", "x = a <= b", "killed")]
    used = tool.mark_equivalents("m.py", survivors, entries)
    assert [m.outcome for m in survivors] == ["equivalent", "survived", "killed"]
    assert used == {0}
    other = [tool.Mutant("A#0", "A", 0, 3, "x = a < b", "x = a <= b", "survived")]
    assert tool.mark_equivalents("n.py", other, entries) == set() and other[0].outcome == "survived"
