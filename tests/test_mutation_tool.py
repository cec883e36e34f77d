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


def _is_run_of_lines(text: str, lines: list[str]) -> bool:
    """``text`` is one source line, or consecutive lines joined by a space (a mutant's site that
    spans lines is recorded that way)."""
    for i, first in enumerate(lines):
        if not first or not text.startswith(first):
            continue
        joined = first
        for nxt in lines[i + 1:]:
            if joined == text or len(joined) >= len(text):
                break
            joined = f"{joined} {nxt}" if nxt else joined
        if joined == text:
            return True
    return False


def test_every_equivalent_names_a_mapped_module_a_real_line_and_a_reason():
    tool = _tool()
    entries = tool.load_equivalents()
    for e in entries:
        assert e["module"] in tool.MODULES, e
        lines = [tool._norm(x) for x in (ROOT / e["module"]).read_text().splitlines()]
        assert _is_run_of_lines(tool._norm(e["line"]), lines), \
            f"{e['module']}: no line {e['line']!r} (stale entry)"
        assert tool._norm(e["line"]) != tool._norm(e["mutant"]), e
        assert len(e["reason"].split()) >= 5, f"a reason, not a label: {e}"


def test_every_mapped_module_and_test_file_exists():
    tool = _tool()
    for module, tests in tool.MODULES.items():
        assert (ROOT / module).is_file(), module
        for t in tests:
            path, _, node = t.removeprefix("!").partition("::")
            assert (ROOT / path).is_file(), t
            if node:
                assert f"def {node}(" in (ROOT / path).read_text(), t


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


def test_a_sample_draws_the_same_sites_after_an_edit_elsewhere(tmp_path):
    import pytest
    pytest.importorskip("cosmic_ray", reason="cosmic-ray is installed by `make mutation` only")
    tool = _tool()
    body = "".join(f"def f{i}(a, b):\n    return a + {i} if a < b else b - {i}\n" for i in range(30))
    mod = tmp_path / "m.py"
    mod.write_text(body)
    before = tool.sample_sites(mod, tool.mutation_sites(mod), 12, 1)
    again = tool.sample_sites(mod, tool.mutation_sites(mod), 12, 1)
    assert before == again and len(before) == 12
    mod.write_text("def g(x):\n    return x * 2\n" + body)     # new sites, every line moved
    sites = tool.mutation_sites(mod)
    after = tool.sample_sites(mod, sites, 12, 1)
    lines = mod.read_text().splitlines()
    old_lines = body.splitlines()

    def keys(sample, src):
        return {(op, src[start[0] - 1].strip(), start[1]) for op, _occ, start, _end in sample}

    added = sum(1 for op, _o, start, _e in sites if start[0] <= 2)
    assert len(keys(before, old_lines) & keys(after, lines)) >= 12 - added
    assert tool.sample_sites(mod, sites, 12, 2) != after            # another seed, another draw
