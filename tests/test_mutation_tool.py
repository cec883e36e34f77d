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


# -- test selection by coverage ------------------------------------------------------------------

def test_import_time_code_is_not_runtime_code():
    tool = _tool()
    src = ("import os\n"                       # 1 import time
           "LIMIT = 3 + 4\n"                   # 2 import time
           "def deco(f):\n"                    # 3
           "    return f\n"                    # 4 runtime
           "@deco\n"                           # 5 import time (decorator)
           "def f(a, b=LIMIT - 1):\n"          # 6 import time (default value)
           "    x = a + b\n"                   # 7 runtime
           "    return (x\n"                   # 8 runtime, a statement over two lines
           "            - 1)\n"                # 9
           "class C:\n"                        # 10
           "    K = 2 * 2\n"                   # 11 import time (class body)
           "    def m(self):\n"                # 12 import time (the def itself)
           "        return self.K\n")          # 13 runtime
    lines = tool.runtime_lines(src)
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 9, 12, 13]       # not 1, 2, 10, 11
    assert lines[4] == [4] and lines[8] == [8] and lines[13] == [13]       # its own coverage
    # a header is seen by the tests that call the function: any line of its body
    assert lines[3] == [4] and lines[5] == lines[6] == [7, 8, 9] and lines[12] == [13]
    abstract = "import abc\nclass A(abc.ABC):\n    @abc.abstractmethod\n    def f(self, x=1):\n        return x\n"
    assert sorted(tool.runtime_lines(abstract)) == [5]


def test_selection_runs_only_tests_that_reach_the_line_and_the_full_set_when_unsure():
    tool = _tool()
    cmap = {"order": ["t.py::a", "t.py::b", "t.py::c", "u.py::d"],
            "users": {"server": ["t.py::c", "u.py::d"]},
            "lines": {"7": ["u.py::d", "t.py::a"], "8": ["fixture:server"], "9": ["t.py::b"],
                      "13": [""], "14": ["between:t.py::a"]}}
    runtime = {x: [x] for x in (7, 8, 9, 10, 13, 14)} | {6: [7, 8, 9]}

    def m(line, end=0):
        return tool.Mutant("X#0", "X", 0, line, "a", "b", end_line=end or line)

    assert tool.select_tests(m(7), cmap, runtime) == ["t.py::a", "u.py::d"]      # collection order
    assert tool.select_tests(m(8), cmap, runtime) == ["t.py::c", "u.py::d"]      # a wider fixture
    assert tool.select_tests(m(8, 9), cmap, runtime) == ["t.py::b", "t.py::c", "u.py::d"]
    assert tool.select_tests(m(10), cmap, runtime) == []                         # reached by none
    assert tool.select_tests(m(6), cmap, runtime) == ["t.py::a", "t.py::b", "t.py::c", "u.py::d"]
    assert tool.select_tests(m(2), cmap, runtime) is None                        # import time
    assert tool.select_tests(m(9, 11), cmap, runtime) is None                    # partly
    assert tool.select_tests(m(13), cmap, runtime) is None                       # collection
    assert tool.select_tests(m(14), cmap, runtime) is None                       # between tests


_DEMO_MOD = '''\
import functools

def add(a, b):
    return a + b

def from_fixture(n):
    return n * 2

def in_subprocess(n):
    return n - 1

@functools.lru_cache(maxsize=None)
def cached(n):
    return n + 100

def never_called(n):
    return n * 5
'''

_DEMO_TEST_A = '''\
import subprocess, sys
import pytest
from mutdemo_pkg import mod

@pytest.fixture(scope="module")
def doubled():
    return mod.from_fixture(21)

def test_add():
    assert mod.add(2, 3) == 5

def test_uses_the_fixture(doubled):
    assert doubled == 42

def test_subprocess():
    out = subprocess.run([sys.executable, "-c",
                          "from mutdemo_pkg import mod; print(mod.in_subprocess(10))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "9"

def test_warms_the_cache():
    mod.cached(1)

def test_reads_the_cache():
    assert mod.cached.cache_info().currsize == 1 and mod.cached(1) == 101
'''

_DEMO_TEST_B = '''\
from mutdemo_pkg import mod

def test_fixture_user_elsewhere(doubled):
    assert doubled == 42
'''


def test_coverage_map_and_selected_runs_on_a_small_project(tmp_path, monkeypatch):
    """A real coverage run over a small project: a test's own lines, a module-scoped fixture's
    (charged to every test using it), a subprocess's (charged to the test that started it);
    then mutants run with their selected tests, and a survivor of the selection (a value cached
    by one test and checked by another) is caught by the full-set confirmation."""
    import pytest
    pytest.importorskip("coverage", reason="coverage is installed by `make mutation` only")
    pytest.importorskip("cosmic_ray", reason="cosmic-ray is installed by `make mutation` only")
    tool = _tool()
    proj = tmp_path / "proj"
    (proj / "mutdemo_pkg").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "mutdemo_pkg" / "__init__.py").write_text("")
    (proj / "mutdemo_pkg" / "mod.py").write_text(_DEMO_MOD)
    (proj / "tests" / "conftest.py").write_text(
        "import pytest\nfrom mutdemo_pkg import mod\n\n"
        "@pytest.fixture(scope='session')\ndef doubled():\n    return mod.from_fixture(21)\n")
    (proj / "tests" / "test_a.py").write_text(_DEMO_TEST_A)
    (proj / "tests" / "test_b.py").write_text(_DEMO_TEST_B)
    (proj / "pytest.ini").write_text("[pytest]\n")
    monkeypatch.setattr(tool, "TREE", proj)
    monkeypatch.setattr(tool, "WORK", tmp_path / "work")
    monkeypatch.setenv("PYTHONPATH", str(proj))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    (tmp_path / "work").mkdir()
    tests = ["tests/test_a.py", "tests/test_b.py"]
    cmap = tool.coverage_map("mutdemo_pkg/mod.py", tests, [], tmp_path / "cov.log")
    lines = {int(k): set(v) for k, v in cmap["lines"].items()}
    a = "tests/test_a.py::"
    assert lines[4] == {a + "test_add"}
    assert lines[7] == {"fixture:doubled"}
    assert set(cmap["users"]["doubled"]) == {a + "test_uses_the_fixture",
                                             "tests/test_b.py::test_fixture_user_elsewhere"}
    assert lines[10] == {a + "test_subprocess"}
    assert lines[14] == {a + "test_warms_the_cache"}
    assert "" in lines[1]                             # import time: collection
    again = tool.coverage_map("mutdemo_pkg/mod.py", tests, [], tmp_path / "cov2.log")
    assert again == cmap and not (tmp_path / "cov2.log").exists()     # cached

    runtime = tool.runtime_lines(_DEMO_MOD)
    src = proj / "mutdemo_pkg" / "mod.py"

    def run(line, new, confirm=False):
        src.write_text(_DEMO_MOD.replace(*new))
        m = tool.Mutant("X#0", "X", 0, line, "", "", end_line=line)
        try:
            tool.run_mutant(m, tests, cmap, runtime, tmp_path / "m.log", 60, [], compare=True,
                            confirm=confirm)
        finally:
            src.write_text(_DEMO_MOD)
        return m

    m = run(4, ("a + b", "a - b"))
    assert (m.selected, m.first_outcome, m.outcome, m.full_outcome) == (1, "killed", "killed", "killed")
    m = run(7, ("n * 2", "n * 3"))
    assert (m.selected, m.first_outcome, m.outcome) == (2, "killed", "killed")
    m = run(10, ("n - 1", "n + 1"))
    assert (m.selected, m.first_outcome, m.outcome) == (1, "killed", "killed")
    # only the cache reader sees it, and it never runs the line: a survivor of the selection
    # (pessimistic, never the other way round), caught when survivors are confirmed
    m = run(14, ("n + 100", "n + 99"))
    assert (m.selected, m.first_outcome, m.outcome, m.full_outcome) == (1, "survived", "survived", "killed")
    m = run(14, ("n + 100", "n + 99"), confirm=True)
    assert (m.selected, m.first_outcome, m.outcome, m.full_outcome) == (1, "survived", "killed", "killed")
    m = run(12, ("maxsize=None", "maxsize=0"))     # a decorator: the tests that call it
    assert (m.selected, m.outcome) == (1, "survived")
    assert m.full_outcome == "killed"              # (the cache reader again)
    # a line no test executes: a survivor without a run, and its log says so (never the log of
    # the mutant before it)
    m = run(17, ("n * 5", "n * 6"))
    assert (m.selected, m.outcome) == (0, "survived")
    assert (tmp_path / "m.log").read_text().startswith("no test of the list executes lines 17-17")
    m = run(1, ("import functools", "import functools, os"))   # module level: the full set
    assert (m.selected, m.outcome) == (-1, "survived")
    # the conftest's import fails: the session refuses to start (exit code 4), a caught mutant
    m = run(1, ("import functools", "import functools_is_gone"))
    assert (m.selected, m.outcome) == (-1, "killed")
    summary = tool.compare_summary([m])
    assert summary["mutants"] == 1 and summary["agree"] == 1


def test_a_selected_runs_timeout_is_generous_and_never_above_the_full_lists():
    tool = _tool()
    cmap = {"durations": {"a": 0.5, "b": 2.0, "c": 20.0}}
    assert tool.selected_timeout(["a", "b"], cmap, 60) == 30          # the floor
    assert tool.selected_timeout(["c"], cmap, 200) == 90              # 4x + 10 s
    assert tool.selected_timeout(["b", "c"], cmap, 60) == 60          # the full list's cap
    assert tool.selected_timeout(["x"], cmap, 60) == 60               # unknown: the full list's


def test_a_resumed_run_keeps_what_was_finished_and_runs_only_the_pending_mutants(tmp_path, monkeypatch):
    import argparse
    import json
    import pytest
    pytest.importorskip("cosmic_ray", reason="cosmic-ray is installed by `make mutation` only")
    tool = _tool()
    proj = tmp_path / "proj"
    (proj / "mutdemo_pkg").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "mutdemo_pkg" / "__init__.py").write_text("")
    (proj / "mutdemo_pkg" / "mod.py").write_text("def add(a, b):\n    return a + b\n\n"
                                                 "def neg(a):\n    return -a\n")
    (proj / "tests" / "test_a.py").write_text(
        "from mutdemo_pkg import mod\n\ndef test_add():\n    assert mod.add(2, 3) == 5\n\n"
        "def test_neg():\n    assert mod.neg(2) == -2\n")
    (proj / "pytest.ini").write_text("[pytest]\n")
    monkeypatch.setattr(tool, "TREE", proj)
    monkeypatch.setattr(tool, "ROOT", proj)
    monkeypatch.setattr(tool, "WORK", tmp_path / "work")
    monkeypatch.setattr(tool, "RESULTS", tmp_path / "work" / "results")
    monkeypatch.setenv("PYTHONPATH", str(proj))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    ran = []
    real = tool.run_mutant
    monkeypatch.setattr(tool, "run_mutant", lambda m, *a, **k: (ran.append(m.id), real(m, *a, **k)))
    args = argparse.Namespace(tests="tests/test_a.py", markers="", timeout=60, lines=None, sample=None,
                              seed=1, full_set=True, compare=False, confirm=False, resume=False)
    first = tool.run_module("mutdemo_pkg/mod.py", args, [])
    ids = [m["id"] for m in first["mutants"]]
    assert len(ids) >= 3 and ran == ids and all(m["outcome"] == "killed" for m in first["mutants"])
    # a run stopped after its first mutant: the rest pending
    out = tmp_path / "work" / "results" / "mutdemo_pkg__mod.py.json"
    saved = json.loads(out.read_text())
    saved["mutants"][0]["seconds"] = 12345.0
    for m in saved["mutants"][1:]:
        m["outcome"] = "pending"
    out.write_text(json.dumps(saved))
    ran.clear()
    args.resume = True
    again = tool.run_module("mutdemo_pkg/mod.py", args, [])
    assert ran == ids[1:]                                  # only the pending ones ran
    assert again["mutants"][0]["seconds"] == 12345.0       # the finished one is kept as it was
    assert all(m["outcome"] == "killed" for m in again["mutants"])
    # --survivors: a mutant that survived (before a test was written for it) runs again, the
    # killed ones are kept as they were
    saved = json.loads(out.read_text())
    saved["mutants"][2]["outcome"] = "survived"
    out.write_text(json.dumps(saved))
    ran.clear()
    args.resume, args.survivors = False, True
    third = tool.run_module("mutdemo_pkg/mod.py", args, [])
    assert ran == [ids[2]]
    assert third["seconds"] >= saved["seconds"]            # the run time adds up over the parts
    assert third["mutants"][0]["seconds"] == 12345.0
    assert all(m["outcome"] == "killed" for m in third["mutants"])
    args.survivors = False
    # stopped during its second mutant (SIGTERM, ^C: the runner's _stop raises SystemExit): the
    # first one's outcome is saved, the rest stay pending for --resume
    args.resume = False

    def stop_at_second(m, *a, **k):
        if m.id == ids[1]:
            raise SystemExit(143)
        real(m, *a, **k)
    monkeypatch.setattr(tool, "run_mutant", stop_at_second)
    with pytest.raises(SystemExit):
        tool.run_module("mutdemo_pkg/mod.py", args, [])
    stopped = json.loads(out.read_text())
    assert [m["outcome"] for m in stopped["mutants"]] == ["killed"] + ["pending"] * (len(ids) - 1)
    assert stopped["partial"] is True
    assert (proj / "mutdemo_pkg" / "mod.py").read_text().startswith("def add(a, b):\n    return a + b")
    # the source changed since: no resume on results of other code
    args.resume = True
    (proj / "mutdemo_pkg" / "mod.py").write_text("def add(a, b):\n    return b + a\n\n"
                                                 "def neg(a):\n    return -a\n")
    with pytest.raises(SystemExit, match="changed since its last results"):
        tool.run_module("mutdemo_pkg/mod.py", args, [])


def test_the_weekly_workflow_runs_every_mapped_module():
    # a module added to the map and not to the schedule would never be measured again
    import re
    modules = set(_tool().MODULES)
    workflow = (ROOT / ".github" / "workflows" / "mutation.yml").read_text()
    scheduled = set(re.findall(r"module: (sensor/\S+\.py)", workflow))
    assert scheduled == modules, (modules - scheduled, scheduled - modules)


def test_an_entry_for_a_removed_line_says_so_and_matches_that_mutant_only(tmp_path, monkeypatch):
    import pytest
    tool = _tool()
    head = 'module = "m.py"\nline = "@cache def f(x):"\nreason = "a cache of a pure function"\n'
    path = tmp_path / "eq.toml"
    monkeypatch.setattr(tool, "EQUIVALENTS", path)
    # an empty mutant is a forgotten one unless the entry says the mutation deletes the line
    for body in ('mutant = ""\n', 'mutant = ""\nremoved = false\n', 'mutant = "def f(x):"\nremoved = true\n'):
        path.write_text("[[equivalent]]\n" + head + body)
        with pytest.raises(SystemExit):
            tool.load_equivalents()
    path.write_text("[[equivalent]]\n" + head + 'mutant = ""\nremoved = true\n')
    entries = tool.load_equivalents()
    ms = [tool.Mutant("RemoveDecorator#0", "RemoveDecorator", 0, 3, "@cache def f(x):", "", "survived"),
          tool.Mutant("X#0", "X", 0, 3, "@cache def f(x):", "def f(x):", "survived")]
    assert tool.mark_equivalents("m.py", ms, entries) == {0}
    assert [m.outcome for m in ms] == ["equivalent", "survived"]
