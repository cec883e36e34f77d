#!/usr/bin/env python3
"""Mutation testing for the modules that decide verdicts and durability.

    python tools/mutation.py                         every module in MODULES, one after another
    python tools/mutation.py sensor/detect/ir.py     one module (or several)
    python tools/mutation.py --report                the report from the last results, no run
    python tools/mutation.py --show sensor/detect/ir.py OPERATOR#N      one mutant's diff
    python tools/mutation.py --check sensor/detect/ir.py OPERATOR#N     run its tests on it
    python tools/mutation.py --sample 200 sensor/deliver/spool.py      a seeded random sample of 200
    python tools/mutation.py --resume sensor/detect/ir.py               continue a stopped run
    python tools/mutation.py --survivors sensor/detect/ir.py            its survivors again, after new tests

Mutants come from cosmic-ray's operators (a curated subset, ``OPERATORS``); the runner is ours,
because a fresh interpreter per mutant costs more than most mutants' tests on a shared 2-core
machine. It works like this:

* the project is copied to ``.mutation/tree`` (tracked and untracked-not-ignored files, plus the
  native builds under ``sensor/``) with ``.mutation/shared`` pointing at the research data, so
  the worktree itself is never mutated and an interrupted run leaves nothing behind;
* one parent process imports pytest and the heavy third-party packages once, never ``sensor``;
* the module's tests (``MODULES``: module -> test files, pytest node ids such as
  ``tests/x.py::test_y``, and ``!`` + a node id to deselect a slow test whose checks the rest of
  the list makes faster) run once under coverage.py, one dynamic context per test, to learn
  which tests execute which line (``coverage_map``; cached in ``.mutation/coverage`` while the
  code and tests stay the same);
* for each mutant it writes the mutated module into the copy and forks a child that runs, with
  ``pytest -x``, only the tests that execute the mutant's lines (``select_tests``): a test that
  never executes a line cannot see it changed. Code run at import (module level, class bodies)
  and lines run while test files are collected get the full list; a function's decorators and
  default values get the tests that call the function; a line no test executes is a survivor
  without a run. ``--full-set`` runs every mutant against the whole list (the way before),
  ``--compare`` both ways, mutant by mutant, with the agreement and the speed of each. A
  selection can err only towards "survived" (a value one test caches and another reads; a line
  reached only in a process a test kills hard), never towards "killed"; ``--check`` and
  ``--confirm`` run the whole list on a survivor;
* the child imports the sensor afresh from the copy, and so do subprocesses the tests start
  (``PYTHONPATH``); its bytecode is checked against each source's hash, so no stale ``.pyc``
  can hide a mutant;
* a child that outlives its timeout (``--timeout``, default: 4x the unmutated run, at least
  60 s) is killed with its process group, and the mutant counts as killed (it hangs);
* any failing exit of pytest counts as killed (a mutant that breaks import is caught too),
  except "no tests collected", which is a configuration error.

One worker, one module at a time: the machine is shared. Results go to
``tests/mutation-results/<module>.json`` (tracked, so a score stays checkable after the run's
machine is gone) and the report to ``.mutation/report.md``; the score of a
module is killed / (mutants - equivalent). A survivor is either killed by a new test or listed in
``tests/mutation-equivalents.toml`` with the reason it cannot be told apart (matched by module,
source line and mutated line, so it follows the code when lines move).
"""
from __future__ import annotations

import argparse
import builtins
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, asdict
from pathlib import Path

import pluggy

_hookimpl = pluggy.HookimplMarker("pytest")     # pytest.hookimpl, without importing pytest here

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
TREE = WORK / "tree"
# Results are kept with the tests (tracked): a score is only worth what its results show, and a
# run takes hours, so the record outlives the machine it ran on.
RESULTS = ROOT / "tests" / "mutation-results"
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.toml"
TARGET = 0.90

# module -> the test files that decide whether one of its mutants is caught. Fast, targeted files
# first: pytest -x stops at the first failure, so a killed mutant costs little. An entry may be a
# pytest node id (``file::test``); ``!`` + a node id deselects that test (one too slow to run per
# mutant; it still runs in ``make test``, and the faster tests of the list must kill what it would).
MODULES: dict[str, list[str]] = {
    "sensor/detect/criteria.py": ["tests/test_criteria.py", "tests/test_seed_rule.py"],
    "sensor/detect/ir.py": ["tests/test_ir.py", "tests/test_matcher.py", "tests/test_criteria.py",
                            "tests/test_sigma.py", "tests/test_matcher_parity.py",
                            # the time-part modifiers against pySigma's SQLite backend, the bounds
                            # on one rule as the loaders meet them
                            "tests/test_sigma_modifiers_spec.py",
                            *(f"tests/test_rule_bounds.py::{t}" for t in (
                                "test_rule_with_too_many_values_is_refused_naming_the_file",
                                "test_rule_size_bounds",
                                "test_pack_rule_with_a_deep_condition_is_refused"))],
    "sensor/detect/_matcher_py.py": ["tests/test_matcher.py", "tests/test_ir.py", "tests/test_criteria.py",
                                     "tests/test_matcher_parity.py",
                                     # the modifiers as the Sigma specification words them: the
                                     # time parts are tested nowhere else
                                     "tests/test_sigma_modifiers_spec.py"],
    "sensor/sources/etw_decode.py": ["tests/test_etw_decode.py", "tests/test_etw_decode_native.py"],
    "sensor/enrich/process_table.py": ["tests/test_process_table.py", "tests/test_tree_store.py",
                                       "tests/test_lineage.py"],
    "sensor/enrich/_pe_py.py": ["tests/test_pe.py", "tests/test_pe_property.py"],
    "sensor/deliver/http.py": ["tests/test_http_contract.py", "tests/test_outputs.py", "tests/test_delivery.py"],
    "sensor/deliver/ecs.py": ["tests/test_outputs.py"],
    "sensor/deliver/splunk.py": ["tests/test_outputs.py"],
    "sensor/deliver/elastic.py": ["tests/test_outputs.py"],
    "sensor/deliver/webhook.py": ["tests/test_outputs.py"],
    "sensor/detect/sigma.py": ["tests/test_sigma_refusals.py", "tests/test_sigma.py",
                               "tests/test_sigma_modifiers_spec.py",
                               "tests/test_sigma_filters.py", "tests/test_correlation.py",
                               "tests/test_placeholders.py", "tests/test_sigma_regression.py",
                               "tests/test_sigma_sqlite.py",
                               # 45 s: the rules x corpus sample against the SQLite backend; the
                               # modifier, semantics and regression tests above hold its cases
                               "!tests/test_sigma_sqlite.py::test_same_matches_as_sqlite_backend_on_sample"],
    "sensor/deliver/spool.py": ["tests/test_spool_contract.py",
                                # the disk-full tests but the 75 s one (receiver down, then up)
                                *(f"tests/test_faults_disk.py::{t}" for t in (
                                    "test_a_full_disk_drops_the_oldest_never_raises_and_says_so",
                                    "test_every_write_path_raises_the_spools_own_error",
                                    "test_alerts_held_on_a_full_disk_survive_a_failed_retry",
                                    "test_a_spool_that_filled_its_disk_can_still_confirm_without_a_restart",
                                    "test_confirmations_the_disk_refuses_are_retried_never_resent",
                                    "test_the_disk_full_state_reaches_the_health_status_and_ends_by_itself",
                                    "test_disk_filled_by_someone_else_no_resend_storm_and_recovery",
                                    "test_never_drained_while_alerts_are_being_committed",
                                    "test_a_spool_opened_on_a_full_disk_runs_on_what_is_there",
                                    "test_a_partial_reserve_is_topped_up_on_a_small_volume_with_room_for_the_rest")),
                                "tests/test_spool.py", "tests/test_faults_damage.py",
                                "tests/test_spool_cli.py", "tests/test_delivery.py",
                                # wait_for_volume, the linger's wait, at its edges
                                "tests/test_forwarder_linger.py"],
    "sensor/deliver/forwarder.py": ["tests/test_forwarder_contract.py", "tests/test_forwarder_fetches.py",
                                    "tests/test_forwarder_linger.py", "tests/test_delivery.py",
                                    "tests/test_faults_delivery.py"],
    "sensor/deliver/syslog.py": ["tests/test_syslog.py"],
    "sensor/detect/signing.py": ["tests/test_signing.py"],
    "sensor/daemon/reload.py": ["tests/test_reload.py", "tests/test_reload_units.py"],
    "sensor/detect/correlate.py": ["tests/test_correlation.py", "tests/test_correlation_sqlite.py",
                                   "tests/test_sigma_filters.py"],
    # which engine a rule regex runs on, and the budgeted engine for the ones that opt in
    "sensor/detect/regex.py": ["tests/test_regex.py", "tests/test_rule_bounds.py",
                               "tests/test_sigma_refusals.py", "tests/test_matcher.py"],
    "sensor/detect/backtrack.py": ["tests/test_backtrack.py", "tests/test_regex.py",
                                   "tests/test_rule_bounds.py", "tests/test_matcher.py"],
    # the compiled matcher's prefilter (anchors, required literals): a wrong one misses matches;
    # its direct tests first (about a second), so most mutants are killed before the slow ones run
    "sensor/detect/index.py": ["tests/test_index.py", "tests/test_matcher.py", "tests/test_regex.py",
                               "tests/test_matcher_parity.py"],
    # a damaged spool's alerts, read back
    "sensor/deliver/salvage.py": ["tests/test_salvage_units.py", "tests/test_salvage_pages.py",
                                  "tests/test_salvage_bounds.py", "tests/test_faults_damage.py",
                                  "tests/test_spool_contract.py"],
    # the bounded hand-off between the source and the worker
    # (less the wake-up count that the machine's other work can blur: it measures the waker's
    # scheduling, which no mutant of queues.py changes, and a run under load fails it)
    "sensor/daemon/queues.py": ["tests/test_queues.py", "tests/test_budget.py", "tests/test_at_rest.py",
                                "!tests/test_at_rest.py::test_a_start_from_a_consumer_callback_wakes_the_worker_once"],
    # the outputs' TLS policy (verification, pinning, client certificates) and secrets
    "sensor/deliver/tls.py": ["tests/test_http_contract.py", "tests/test_outputs.py", "tests/test_syslog.py",
                              "tests/test_delivery.py"],
    # the one repair of text a receiver cannot carry, on every delivery path
    "sensor/deliver/text.py": ["tests/test_outputs.py", "tests/test_spool_contract.py"],
    # the file output
    "sensor/deliver/jsonl.py": ["tests/test_outputs.py", "tests/test_delivery.py", "tests/test_private_files.py"],
    # Sigma loading: placeholders, the character sets of |windash and friends, filters and
    # correlation rules as data, and the suppression that decides whether an alert is sent
    "sensor/detect/placeholders.py": ["tests/test_placeholders.py"],
    "sensor/detect/charsets.py": ["tests/test_regex.py", "tests/test_backtrack.py",
                                  "tests/test_sigma_modifiers_spec.py"],
    "sensor/detect/metarules.py": ["tests/test_correlation.py", "tests/test_sigma_filters.py",
                                   "tests/test_metarules.py"],
    "sensor/detect/noise.py": ["tests/test_noise.py", "tests/test_sigma_filters.py", "tests/test_pipeline.py"],
}

# cosmic-ray's operators, curated. Dropped: the other binary-operator swaps (one wrong operator
# per site is enough to ask "does any test look at this arithmetic?"; eleven mostly ask it again)
# and the comparison swaps that are not the negation or the off-by-one neighbour.
_BINARY = ["Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Div", "Mod_FloorDiv", "Pow_Mul",
           "LShift_RShift", "RShift_LShift", "BitOr_BitAnd", "BitAnd_BitOr", "BitXor_BitOr"]
_COMPARE = ["Eq_NotEq", "NotEq_Eq", "Lt_LtE", "LtE_Lt", "Gt_GtE", "GtE_Gt", "Is_IsNot", "IsNot_Is"]
_UNARY = ["UAdd_USub", "USub_UAdd", "Invert_USub", "Delete_Not", "Delete_Invert", "Delete_USub"]
OPERATORS = ([f"core/ReplaceBinaryOperator_{x}" for x in _BINARY]
             + [f"core/ReplaceComparisonOperator_{x}" for x in _COMPARE]
             + [f"core/ReplaceUnaryOperator_{x}" for x in _UNARY]
             + ["core/AddNot", "core/ReplaceTrueWithFalse", "core/ReplaceFalseWithTrue",
                "core/ReplaceAndWithOr", "core/ReplaceOrWithAnd", "core/ReplaceBreakWithContinue",
                "core/ReplaceContinueWithBreak", "core/ExceptionReplacer", "core/NumberReplacer",
                "core/RemoveDecorator", "core/ZeroIterationForLoop"])

# Imported once in the parent so that each mutant's child starts warm. Never ``sensor``.
PRELOAD = ["pytest", "hypothesis", "hypothesis.strategies", "_pytest.python", "yaml", "sigma",
           "sigma.collection", "sigma.rule", "cryptography.x509", "trustme", "urllib3", "msgspec",
           "psutil", "pefile", "cffi", "sqlite3", "ssl", "http.server", "ipaddress", "evtx",
           "truststore"]


@dataclass
class Mutant:
    id: str            # "<operator>#<occurrence>", unique within one version of the module
    operator: str
    occurrence: int
    line: int
    original: str      # the source line(s) the mutation touches, stripped
    mutated: str
    outcome: str = "pending"   # killed | survived | timeout | error | equivalent | pending
    seconds: float = 0.0
    reason: str = ""           # why equivalent (from the equivalents file)
    rechecked: str = ""        # when --check last ran this mutant alone (after new tests)
    end_line: int = 0          # the last source line the mutation touches
    selected: int = -1         # tests its first run ran: -1 the full mapped set, 0 none covers it
    first_outcome: str = ""    # the outcome of that first run (a survivor is then confirmed)
    full_outcome: str = ""     # --compare: the outcome of the full mapped set
    full_seconds: float = 0.0


def say(*a) -> None:
    print(*a, flush=True)


# -- the scratch copy ----------------------------------------------------------------------------

def make_tree() -> None:
    """Copy the project (as it is now, uncommitted work included) to .mutation/tree."""
    if TREE.exists():
        shutil.rmtree(TREE)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    files = [f for f in files if f and (ROOT / f).is_file()]
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "sensor").rglob("*")
              if p.suffix in (".so", ".pyd")]
    for f in files:
        dst = TREE / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst)
    # Bytecode checked against the source's hash at every import: the unmutated modules and the
    # tests load without compiling, a mutated module never matches its .pyc and is compiled anew.
    import compileall
    import py_compile
    for top in ("sensor", "tests"):
        compileall.compile_dir(TREE / top, quiet=2, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    shared = WORK / "shared"
    real = ROOT.parent / "shared"
    if not shared.exists() and real.exists():
        shared.symlink_to(real.resolve())


# -- mutants -------------------------------------------------------------------------------------

def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the annotations are, when the module never evaluates them (PEP 563)."""
    import ast
    tree = ast.parse(source)
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not lazy:
        return []
    spans = []
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
        elif isinstance(node, ast.arg):
            anns.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for a in anns:
            if a is not None:
                spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def mutation_sites(path: Path, operators: list[str] | None = None) -> list[tuple[str, int, tuple, tuple]]:
    """(operator, occurrence, start, end) of every site a mutant can be made at, outside annotations
    that are never evaluated. Cheap: one parse per operator, no mutant is built."""
    from cosmic_ray.ast import ast_nodes, get_ast_from_path
    from cosmic_ray.plugins import get_operator

    spans = annotation_spans(path.read_text(encoding="utf-8"))
    out = []
    for name in operators or OPERATORS:
        op = get_operator(name)()
        tree = get_ast_from_path(path)
        positions = [(start, end) for node in ast_nodes(tree) for start, end in op.mutation_positions(node)]
        for occ, (start, end) in enumerate(positions):
            if not any(a <= tuple(start) < b for a, b in spans):
                out.append((name, occ, tuple(start), tuple(end)))
    return out


def sample_sites(path: Path, sites: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` sites, so a module whose every mutant would take hours on a shared
    machine still gets an estimate of its score. A site is drawn by a hash of the seed, its
    operator and its source line and column, not by its index: an edit elsewhere in the module
    leaves the draw of the other sites as it was, so a sample run before and after an edit
    mostly holds the same mutants."""
    lines = path.read_text(encoding="utf-8").splitlines()
    seen: dict[tuple, int] = {}
    keyed = []
    for site in sites:
        name, _occ, start, _end = site
        key = (name, lines[start[0] - 1].strip(), start[1])
        k = seen[key] = seen.get(key, -1) + 1       # the same operator twice at one column
        digest = hashlib.sha256(f"{seed}\0{name}\0{key[1]}\0{key[2]}\0{k}".encode()).hexdigest()
        keyed.append((digest, site))
    picked = {id(site) for _, site in sorted(keyed, key=lambda x: x[0])[:n]}
    return [site for site in sites if id(site) in picked]


# (module path, operator, occurrence) -> mutated source: building a mutant parses the whole module,
# so the run reuses the text its enumeration made.
_MUTATED: dict[tuple[str, str, int], str] = {}


def enumerate_mutants(path: Path, sites: list[tuple[str, int, tuple, tuple]] | None = None) -> list[Mutant]:
    """The mutants of the module at ``sites`` (default: every site, see mutation_sites)."""
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    source = path.read_text(encoding="utf-8")
    src_lines = source.splitlines()
    out = []
    for name, occ, start, end in (mutation_sites(path) if sites is None else sites):
        try:
            mutated = mutate_code(source, get_operator(name)(), occ)
        except Exception:   # cosmic-ray cannot rewrite this site (e.g. a dotted except name)
            continue
        if mutated is None:
            continue
        _MUTATED[(str(path), name, occ)] = mutated
        m_lines = mutated.splitlines()
        a, b = start[0] - 1, end[0]
        # The mutated lines: same span when the line count did not change.
        delta = len(m_lines) - len(src_lines)
        orig = " ".join(x.strip() for x in src_lines[a:b])
        new = " ".join(x.strip() for x in m_lines[a:b + delta])
        out.append(Mutant(f"{name.split('/')[-1]}#{occ}", name, occ, start[0], orig, new,
                          end_line=end[0]))
    return out


def mutated_source(path: Path, m: Mutant) -> str:
    code = _MUTATED.pop((str(path), m.operator, m.occurrence), None)
    if code is not None:
        return code
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    code = mutate_code(path.read_text(encoding="utf-8"), get_operator(m.operator)(), m.occurrence)
    if code is None:
        raise SystemExit(f"{m.id}: no such mutation in {path}")
    return code


def load_equivalents() -> list[dict]:
    if not EQUIVALENTS.exists():
        return []
    data = tomllib.loads(EQUIVALENTS.read_text(encoding="utf-8"))
    entries = data.get("equivalent", [])
    for e in entries:
        if "removed" in e and (e["removed"] is not True or e.get("mutant") != ""):
            raise SystemExit(f"{EQUIVALENTS}: `removed = true` goes with `mutant = \"\"` only: {e}")
        for key in ("module", "line", "mutant", "reason"):
            if key == "mutant" and e.get("removed") is True:
                continue    # the mutation deletes the line (a removed decorator): nothing is left
            if not str(e.get(key, "")).strip():
                raise SystemExit(f"{EQUIVALENTS}: an entry lacks {key!r}: {e}")
    return entries


def _norm(s: str) -> str:
    return " ".join(s.split())


def mark_equivalents(module: str, mutants: list[Mutant], entries: list[dict]) -> set[int]:
    """Mark survivors listed as equivalent; the indices of the entries that matched."""
    used = set()
    for m in mutants:
        if m.outcome != "survived":
            continue
        for i, e in enumerate(entries):
            if e["module"] == module and _norm(e["line"]) == _norm(m.original) \
                    and _norm(e["mutant"]) == _norm(m.mutated):
                m.outcome = "equivalent"
                m.reason = e["reason"].strip()
                used.add(i)
                break
    return used


# -- running -------------------------------------------------------------------------------------

def preload() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:   # an optional package: its tests skip or import it themselves
            pass
    if any(k == "sensor" or k.startswith("sensor.") for k in sys.modules):
        raise SystemExit("internal error: the parent imported sensor; mutants would not be seen")


_CHILD: list[int] = []


def _stop(signum, frame) -> None:
    """Interrupted: take the running tests (the child's whole process group) down too."""
    for pid in _CHILD:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def pytest_args(tests: list[str]) -> list[str]:
    """A module's test list as pytest arguments (``!node`` deselects ``node``)."""
    out: list[str] = []
    for t in tests:
        out += ["--deselect", t[1:]] if t.startswith("!") else [t]
    return out


# Exit codes of a child beside pytest's own: 98 "the selected tests were not all collected (the
# mutant changed what a test file collects): run the full set", 99 "the runner itself failed".
_RERUN_FULL = 98
# --assert=plain: an assert fails the same without pytest's rewriting, which re-parses every test
# file in every child (no bytecode cache there) and cost more than most killed mutants' tests.
_PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--assert=plain",
                "-W", "ignore::pytest.PytestAssertRewriteWarning"]


def _fork(body, log: Path, timeout: float) -> tuple[int | None, float]:
    """Run ``body()`` (returns an exit code) in a forked child in its own process group, inside
    the copy; kill the group at the end or at ``timeout``. (exit status or None on timeout, s)."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:   # child
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(TREE)
            sys.path.insert(0, str(TREE))
            sys.dont_write_bytecode = True
            from cosmic_ray.exceptions import CosmicRayTestingException
            builtins.CosmicRayTestingException = CosmicRayTestingException  # a handler that never matches
            code = body()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    try:
        os.setpgid(pid, pid)   # also here: no window in which a kill would miss the group
    except (PermissionError, ProcessLookupError):
        pass
    _CHILD[:] = [pid]
    deadline = t0 + timeout
    status = None
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    try:
        os.killpg(pid, signal.SIGKILL)   # the child's group: whatever its tests started
    except ProcessLookupError:
        pass
    _CHILD.clear()
    if status is None:
        os.waitpid(pid, 0)
    return status, elapsed


class _Only:
    """pytest plugin: keep only the selected tests (by node id), in collection order."""

    def __init__(self, ids):
        self.ids = set(ids)

    @_hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        have = {item.nodeid for item in items}
        if not self.ids <= have:
            missing = sorted(self.ids - have)[:5]
            print(f"mutation: selected tests not collected ({missing}); the full set decides",
                  file=sys.stderr, flush=True)
            os._exit(_RERUN_FULL)
        drop = [item for item in items if item.nodeid not in self.ids]
        items[:] = [item for item in items if item.nodeid in self.ids]
        if drop:
            config.hook.pytest_deselected(items=drop)


class _ExitAtSessionEnd:
    """pytest plugin: leave as soon as the session's outcome is known and reported, skipping
    pytest's unconfigure (a forced garbage collection; nothing there changes the outcome)."""

    @_hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        yield
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(session.exitstatus))


def run_child(tests: list[str], log: Path, timeout: float, extra: list[str],
              only: list[str] | None = None) -> tuple[str, float]:
    """Run pytest -x on ``tests`` inside the copy, in a fresh child; with ``only`` (node ids),
    just those tests, collecting only their files. (outcome, seconds)."""
    if only is not None:
        files = list(dict.fromkeys(n.split("::", 1)[0] for n in only))
        args = files + [a for t in tests if t.startswith("!") for a in ("--deselect", t[1:])]
    else:
        args = pytest_args(tests)

    def body() -> int:
        import pytest
        plugins = [_ExitAtSessionEnd()] + ([] if only is None else [_Only(only)])
        return pytest.main(["-x", *_PYTEST_ARGS, *extra, *args], plugins=plugins)

    status, elapsed = _fork(body, log, timeout)
    if status is None:
        return "timeout", elapsed
    if os.WIFSIGNALED(status):
        return "killed", elapsed          # a crash is a caught mutant
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "survived", elapsed
    if code == _RERUN_FULL and only is not None:
        outcome, more = run_child(tests, log, timeout, extra)
        return outcome, elapsed + more
    if code in (5, 99, _RERUN_FULL):
        return "error", elapsed           # no tests collected / the runner itself failed
    return "killed", elapsed


# -- which tests reach which line ----------------------------------------------------------------
#
# One run of the module's tests under coverage.py records, per source line of the module, the
# tests that executed it (a dynamic context per test: its setup, call and teardown; a fixture of a
# wider scope gets its own context, charged to every test that uses it; a subprocess the tests
# start records too, under the context of the test that started it). A mutant then runs only the
# tests that reach its lines. That is sound because a test that never executes a line cannot
# see it changed, with two exceptions handled by running the full set instead:
# * code that runs at import (module level, class bodies, decorators, default values) and any
#   line executed while test files were collected: every test sees it;
# * a mutant whose tests all pass: it is confirmed with the full mapped set (a line reached only
#   by a process the tests kill hard records nothing, and a value computed once and cached is
#   seen by later tests that never execute the line), so a survivor always survived everything.

_SITECUSTOMIZE = '''\
import os
if os.environ.get("MUTATION_COV_DATA"):
    try:
        import coverage
        _cov = coverage.Coverage(data_file=os.environ["MUTATION_COV_DATA"], data_suffix=True,
                                 include=[os.environ["MUTATION_COV_INCLUDE"]], auto_data=True,
                                 context=os.environ.get("MUTATION_COV_CONTEXT") or None,
                                 config_file=False)
        _cov.set_option("run:sigterm", True)
        _cov.start()
    except Exception:
        pass
'''


class _Contexts:
    """pytest plugin for the coverage run: one dynamic context per test (setup, call, teardown),
    one per fixture of a wider scope; records which tests use which fixture, and failures."""

    def __init__(self, cov):
        self.cov = cov
        self.current = ""
        self.item = ""
        self.order: list[str] = []
        self.users: dict[str, list[str]] = {}
        self.failed: list[str] = []
        self.durations: dict[str, float] = {}

    def _switch(self, ctx: str) -> None:
        self.current = ctx
        self.cov.switch_context(ctx)
        os.environ["MUTATION_COV_CONTEXT"] = ctx       # for the subprocesses a test starts

    def pytest_collection_modifyitems(self, items):
        for item in items:
            for name in getattr(item, "fixturenames", ()):
                self.users.setdefault(name, []).append(item.nodeid)

    @_hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.order.append(item.nodeid)
        self.item = item.nodeid
        self._switch(item.nodeid)
        yield
        self._switch(f"between:{item.nodeid}")

    @_hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_fixture_setup(self, fixturedef, request):
        if fixturedef.scope == "function":
            yield
            return
        ctx = f"fixture:{fixturedef.argname}"
        prev = self.current
        self._switch(ctx)
        try:
            yield
        finally:
            self._switch(prev)
            # finalizers run last-added first: this one switches before the fixture's teardown
            fixturedef.addfinalizer(lambda: self._switch(ctx))

    def pytest_fixture_post_finalizer(self, fixturedef, request):
        if fixturedef.scope != "function":
            self._switch(self.item)

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)


def runtime_lines(source: str) -> dict[int, list[int]]:
    """Which lines run only when a function is called, and the lines whose coverage says which
    tests can see a mutant there: a statement in a function body is seen by the tests that
    execute it; a function's header (its decorators, default values, the ``def`` line) by the
    tests that execute any line of its body, since a default or a decorator matters only when the
    function is called. Everything else (module level, class bodies, class decorators, an
    ``abstractmethod``) runs at import, where every test sees it: not in the result."""
    import ast
    tree = ast.parse(source)
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    out: dict[int, list[int]] = {}
    for node in funcs:
        for stmt in node.body:
            for x in range(stmt.lineno, stmt.end_lineno + 1):
                out[x] = [x]
    for node in funcs:
        if any("abstract" in ast.unparse(d) for d in node.decorator_list):
            continue        # decides whether a subclass can be made at all, called or not
        body = list(range(node.body[0].lineno, node.body[-1].end_lineno + 1))
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        for x in range(first, node.body[0].lineno):
            out.setdefault(x, body)
    return out


def tree_digest(module: str, tests: list[str], extra: list[str]) -> str:
    """What a coverage map depends on: the copy's code and tests, the module, the test list."""
    h = hashlib.sha256(json.dumps([module, tests, extra]).encode())
    for top in ("sensor", "tests"):
        for p in sorted((TREE / top).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".so", ".pyd", ".yml", ".yaml", ".toml", ".json"):
                h.update(str(p.relative_to(TREE)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def coverage_map(module: str, tests: list[str], extra: list[str], log: Path) -> dict:
    """Run the module's tests once under coverage (no -x). Returns {"lines": {line: [context]},
    "users": {fixture: [node id]}, "order": [node id], "failed": [node id], "seconds": s}.
    Cached per digest of the copy (a re-run over the same code and tests reuses it)."""
    digest = tree_digest(module, tests, extra)
    cache = WORK / "coverage" / f"{module_key(module)}-{digest[:16]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = WORK / f"{TREE.name}-cov"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    data = out / "data"
    target = str(TREE / module)
    meta = out / "meta.json"

    def body() -> int:
        import coverage
        import pytest
        os.environ["MUTATION_COV_DATA"] = str(data)
        os.environ["MUTATION_COV_INCLUDE"] = target
        os.environ["PYTHONPATH"] = str(out) + os.pathsep + os.environ.get("PYTHONPATH", "")
        cov = coverage.Coverage(data_file=str(data), include=[target], config_file=False)
        plugin = _Contexts(cov)
        try:
            from hypothesis import settings
            # only the map run: tracing makes examples slower, and deadlines are not what it asks
            settings.register_profile("mutation-map", parent=settings.get_profile("ci"),
                                      deadline=None)
            os.environ["SENSOR_HYPOTHESIS_PROFILE"] = "mutation-map"
        except Exception:
            pass
        cov.start()
        try:
            code = pytest.main([*_PYTEST_ARGS, *extra, *pytest_args(tests)], plugins=[plugin])
        finally:
            cov.stop()
            cov.save()
        meta.write_text(json.dumps({"order": plugin.order, "users": plugin.users,
                                    "failed": plugin.failed, "durations": plugin.durations}))
        return int(code)

    status, seconds = _fork(body, log, 3 * 3600)
    if status is None or not os.WIFEXITED(status) or not meta.exists():
        raise SystemExit(f"{module}: the coverage run did not finish (see {log})")
    result = json.loads(meta.read_text())
    if os.WEXITSTATUS(status) != 0 or result["failed"]:
        raise SystemExit(f"{module}: the tests fail without any mutant: {result['failed'][:5]} "
                         f"(see {log})")
    from coverage import CoverageData
    lines: dict[int, set[str]] = {}
    for f in out.glob("data*"):
        cd = CoverageData(basename=str(f))
        cd.read()
        for measured in cd.measured_files():
            if Path(measured).resolve() != Path(target).resolve():
                continue
            for line, ctxs in cd.contexts_by_lineno(measured).items():
                lines.setdefault(line, set()).update(ctxs)
    result["lines"] = {str(k): sorted(v) for k, v in lines.items()}
    result["seconds"] = round(seconds, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    shutil.rmtree(out)
    return result


def select_tests(m: Mutant, cmap: dict, runtime: dict[int, list[int]]) -> list[str] | None:
    """The tests that execute the mutant's lines, in collection order; None: the full mapped set
    (import-time code, or a line run while test files were collected)."""
    span = range(m.line, max(m.end_line, m.line) + 1)
    if not all(x in runtime for x in span):
        return None
    chosen: set[str] = set()
    order = cmap["order"]
    known = set(order)
    for x in sorted({y for line in span for y in runtime[line]}):
        for ctx in cmap["lines"].get(str(x), ()):
            if ctx in known:
                chosen.add(ctx)
            elif ctx.startswith("fixture:"):
                chosen.update(cmap["users"].get(ctx.removeprefix("fixture:"), ()))
            elif ctx.startswith("between:"):
                return None       # between two tests (a thread that outlived its test): unknown
            else:
                return None       # collection or start-up: every test may see it
    return [n for n in order if n in chosen]


def module_key(module: str) -> str:
    return module.replace("/", "__")


def run_module(module: str, args, entries: list[dict]) -> dict:
    tests = args.tests.split(",") if args.tests else MODULES[module]
    path = TREE / module
    original = path.read_text(encoding="utf-8")
    logs = WORK / "logs" / module_key(module)
    if logs.exists():
        shutil.rmtree(logs)           # survivor logs of an earlier run would mislead
    logs.mkdir(parents=True)
    extra = ["-m", args.markers] if args.markers else []

    say(f"== {module}: tests {' '.join(tests)}")
    outcome, base = run_child(tests, logs / "baseline.log", 3600, extra)
    if outcome != "survived":
        raise SystemExit(f"{module}: the tests fail without any mutant (see {logs / 'baseline.log'})")
    timeout = args.timeout or max(60.0, 4 * base)
    sites = mutation_sites(path)
    if args.lines:
        sites = [s for s in sites if args.lines[0] <= s[2][0] <= args.lines[1]]
    total = len(sites)
    if args.sample and args.sample < total:
        sites = sample_sites(path, sites, args.sample, args.seed)
    mutants = enumerate_mutants(path, sites)
    sample = f" (a sample of {len(sites)} of {total} sites, seed {args.seed})" if len(sites) < total else ""
    say(f"   unmutated run {base:.1f} s; {len(mutants)} mutants{sample}; timeout {timeout:.0f} s each")
    cmap, runtime = None, {}
    if not args.full_set:
        cmap = coverage_map(module, tests, extra, logs / "coverage.log")
        runtime = runtime_lines(original)
        say(f"   coverage map: {len(cmap['order'])} tests, {len(cmap['lines'])} lines reached "
            f"({cmap['seconds']:.0f} s, cached after the first run)")
    t_start = time.monotonic()

    sha = hashlib.sha256(original.encode()).hexdigest()
    out = RESULTS / f"{module_key(module)}.json"
    prior_seconds = 0.0
    again = getattr(args, "survivors", False)
    if (args.resume or again) and out.exists():
        old = json.loads(out.read_text())
        flag = "--survivors" if again else "--resume"
        if old["source_sha256"] != sha:
            raise SystemExit(f"{flag}: {module} changed since its last results; run it afresh")
        # --survivors: the tests changed since (new ones written for the survivors), the code did
        # not; every mutant that survived runs again, the rest keep their outcome
        rerun = ("pending", "survived") if again else ("pending",)
        finished = {x["id"]: x for x in old["mutants"] if x["outcome"] not in rerun}
        prior_seconds = float(old.get("seconds") or 0.0)     # the run time is the sum of the parts
        for m in mutants:
            x = finished.get(m.id)
            if x is not None and x["original"] == m.original and x["mutated"] == m.mutated:
                for k in ("outcome", "seconds", "selected", "first_outcome", "reason", "rechecked"):
                    setattr(m, k, x.get(k, getattr(m, k)))
        say(f"   resumed: {sum(m.outcome != 'pending' for m in mutants)} mutants kept from "
            f"{old['finished']}")

    def save(done: int) -> dict:
        result = {
            "module": module, "tests": tests, "source_sha256": sha,
            "baseline_seconds": round(base, 2), "timeout": timeout,
            "seconds": round(prior_seconds + time.monotonic() - t_start, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M"),
            "lines": [list(args.lines)] if args.lines else None,
            "partial": done < len(mutants),
            "sites": total, "sample_seed": args.seed if len(sites) < total else None,
            "selection": "full mapped set" if args.full_set else "tests that cover the line",
            "coverage_seconds": cmap["seconds"] if cmap else None,
            "compare": compare_summary(mutants) if args.compare else None,
            "mutants": [asdict(m) for m in mutants],
        }
        if args.lines and out.exists():
            # a part of the module: merged with the other parts run on the same source
            old = json.loads(out.read_text())
            ranges = old.get("lines") or []
            if ranges and isinstance(ranges[0], int):
                ranges = [ranges]
            if old["source_sha256"] == sha and ranges:
                a, b = args.lines
                secs = dict(old.get("range_seconds") or {f"{x}-{y}": old["seconds"] for x, y in ranges})
                secs[f"{a}-{b}"] = result["seconds"]
                result.update(
                    lines=sorted([r for r in ranges if r != [a, b]] + [[a, b]]),
                    mutants=[x for x in old["mutants"] if not a <= x["line"] <= b] + result["mutants"],
                    range_seconds=secs, seconds=round(sum(secs.values()), 1),
                    tests=old["tests"] + [t for t in tests if t not in old["tests"]])
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        return result

    done = 0
    try:
        for i, m in enumerate(mutants, 1):
            if m.outcome != "pending":         # --resume: finished by the run it continues
                done = i
                continue
            path.write_text(mutated_source(path, m), encoding="utf-8")
            run_mutant(m, tests, cmap, runtime, logs / "last.log", timeout, extra, args.compare,
                       args.confirm)
            path.write_text(original, encoding="utf-8")
            if m.outcome == "survived":
                shutil.copy(logs / "last.log", logs / f"{m.id.replace('/', '_')}.log")
            if m.outcome == "error":
                shutil.copy(logs / "last.log", logs / f"error-{m.id}.log")
            if i % 25 == 0 or i == len(mutants):
                n_surv = sum(x.outcome == "survived" for x in mutants[:i])
                say(f"   {i}/{len(mutants)} done, {n_surv} survived, "
                    f"{time.monotonic() - t_start:.0f} s")
                save(i)    # an interrupted run keeps what it measured (the rest stays pending)
            done = i
    except SystemExit:
        # stopped (SIGTERM, ^C: _stop): keep every mutant finished since the last save
        path.write_text(original, encoding="utf-8")
        mark_equivalents(module, mutants, entries)
        save(done)
        say(f"   stopped after {done}/{len(mutants)} mutants; the rest stay pending in {out}")
        raise
    finally:
        path.write_text(original, encoding="utf-8")
    mark_equivalents(module, mutants, entries)
    result = save(len(mutants))
    if not args.full_set:
        run = [m for m in mutants if m.first_outcome]
        say(f"   selection: {sum(m.selected == -1 for m in run)} mutants ran the full set "
            f"(import-time code), {sum(m.selected == 0 for m in run)} reached by no test, "
            f"the rest {sum(max(m.selected, 0) for m in run)} tests in all"
            + (f"; {sum(m.first_outcome == 'survived' and m.selected >= 0 for m in run)} survivors "
               f"confirmed with the full set, "
               f"{sum(m.first_outcome == 'survived' and _caught(m.outcome) for m in run)} "
               f"of them caught there" if args.confirm or args.compare else ""))
    if args.compare:
        say("   compare: " + json.dumps(result["compare"]))
    return result


def _caught(outcome: str) -> bool:
    return outcome in ("killed", "timeout")


def run_mutant(m: Mutant, tests: list[str], cmap: dict | None, runtime: dict[int, list[int]],
               log: Path,
               timeout: float, extra: list[str], compare: bool, confirm: bool = False) -> None:
    """Run one mutant (already written into the copy): the tests that reach its lines, or the
    full mapped set when selection cannot be trusted. ``confirm``: a survivor of its selected
    tests runs the full set too. ``compare``: the full set runs for every mutant (outcome and
    time kept apart)."""
    only = select_tests(m, cmap, runtime) if cmap is not None else None
    m.selected = -1 if only is None else len(only)
    if only is None:
        outcome, secs = run_child(tests, log, timeout, extra)
    elif not only:
        outcome, secs = "survived", 0.0          # no test reaches it (confirmed below)
        # the survivor's log says so (and never is the previous mutant's log)
        log.write_text(f"no test of the list executes lines {m.line}-{m.end_line or m.line}; "
                       "nothing ran\n", encoding="utf-8")
    else:
        outcome, secs = run_child(tests, log, selected_timeout(only, cmap, timeout), extra,
                                  only=only)
    m.first_outcome = outcome
    if compare:
        if only is None:
            m.full_outcome, m.full_seconds = outcome, secs
        else:
            m.full_outcome, m.full_seconds = run_child(tests, log.with_suffix(".full.log"),
                                                       timeout, extra)
    if outcome == "survived" and only is not None and confirm:
        if compare:
            outcome, more = m.full_outcome, m.full_seconds
        else:
            outcome, more = run_child(tests, log, timeout, extra)
        secs += more
    m.outcome, m.seconds = outcome, round(secs, 2)


def selected_timeout(only: list[str], cmap: dict, timeout: float) -> float:
    """A hang of a few selected tests is told from slowness sooner than one of the whole list:
    4x their time in the coverage run (itself slower than a plain run: tracing) plus 10 s, at
    least 30 s, at most the full list's timeout."""
    durations = cmap.get("durations") or {}
    if not all(n in durations for n in only):
        return timeout
    return min(timeout, max(30.0, 4 * sum(durations[n] for n in only) + 10))


def compare_summary(mutants: list[Mutant]) -> dict:
    """--compare: selected runs against the full mapped set, mutant by mutant, and the speed."""
    done = [m for m in mutants if m.full_outcome]
    sel_s = sum(m.seconds for m in done)
    full_s = sum(m.full_seconds for m in done)
    return {
        "mutants": len(done),
        # before the confirmation of survivors: the selection alone
        "agree_before_confirmation": sum(_caught(m.first_outcome) == _caught(m.full_outcome)
                                         for m in done),
        "caught_by_selection_only": sum(_caught(m.first_outcome) and not _caught(m.full_outcome)
                                        for m in done),
        "agree": sum(_caught(m.outcome) == _caught(m.full_outcome) for m in done),
        "selected_seconds": round(sel_s, 1), "full_seconds": round(full_s, 1),
        "selected_per_minute": round(60 * len(done) / sel_s, 2) if sel_s else None,
        "full_per_minute": round(60 * len(done) / full_s, 2) if full_s else None,
        "speedup": round(full_s / sel_s, 2) if sel_s else None,
    }


# -- report --------------------------------------------------------------------------------------

def score(result: dict) -> tuple[int, int, int, int, int, float]:
    """(mutants, killed, of which timeouts, equivalent, survived or error, score)."""
    ms = result["mutants"]
    killed = sum(m["outcome"] in ("killed", "timeout") for m in ms)
    timeouts = sum(m["outcome"] == "timeout" for m in ms)
    equiv = sum(m["outcome"] == "equivalent" for m in ms)
    surv = sum(m["outcome"] == "survived" for m in ms)
    errors = sum(m["outcome"] == "error" for m in ms)
    denom = killed + surv
    return len(ms), killed, timeouts, equiv, surv + errors, (killed / denom if denom else 1.0)


def report(results: list[dict], entries: list[dict]) -> tuple[str, list[str]]:
    """The report, and the modules that miss the target or have an unexplained survivor."""
    failing = []
    lines = ["# Mutation report", "",
             "| module | mutants | killed | of which timeouts | equivalent | survived | score | run (s) | stale |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    survivors = []
    for r in results:
        # re-apply the equivalents file as it is now (it may have changed since the run)
        ms = [Mutant(**m) for m in r["mutants"]]
        for m in ms:
            if m.outcome == "equivalent":
                m.outcome, m.reason = "survived", ""
        mark_equivalents(r["module"], ms, entries)
        r = dict(r, mutants=[asdict(m) for m in ms])
        n, killed, timeouts, equiv, surv, sc = score(r)
        cur = ROOT / r["module"]
        stale = "" if cur.exists() and hashlib.sha256(cur.read_bytes()).hexdigest() == r["source_sha256"] \
            else "module changed since: re-run"
        if r.get("sample_seed") is not None:
            n = f"{n} (sample of {r['sites']}, seed {r['sample_seed']})"
        lines.append(f"| `{r['module']}` | {n} | {killed} | {timeouts} | {equiv} | {surv} | {sc:.1%} "
                     f"| {r['seconds']:.0f} | {stale} |")
        if sc < TARGET or surv or any(m.outcome == "pending" for m in ms):
            failing.append(r["module"])
        for m in ms:
            if m.outcome in ("survived", "error"):
                how = m.outcome
                if m.outcome == "survived" and m.selected == 0:
                    how = "survived: no test executes its line"
                elif m.outcome == "survived" and m.selected > 0 and m.first_outcome == "survived":
                    how = f"survived the {m.selected} test(s) that execute its line"
                survivors.append(f"- `{r['module']}:{m.line}` {m.id} ({how})\n"
                                 f"  `{m.original}` -> `{m.mutated}`")
        pending = sum(m.outcome == "pending" for m in ms)
        if pending or r.get("lines"):
            scope = ("lines " + ", ".join(f"{a}-{b}" for a, b in r["lines"]) + " only"
                     if r.get("lines") else "all lines")
            lines.append(f"|  | ({scope}; {pending} not run yet: interrupted) |||||||" if pending
                         else f"|  | ({scope}) |||||||")
    lines += ["", f"Target: >= {TARGET:.0%} killed per module; timeouts count as killed.", ""]
    lines += ["## Survivors (neither killed nor listed as equivalent)", ""]
    lines += survivors or ["none"]
    return "\n".join(lines) + "\n", failing


def load_results(modules: list[str]) -> list[dict]:
    out = []
    for mod in modules:
        p = RESULTS / f"{module_key(mod)}.json"
        if p.exists():
            out.append(json.loads(p.read_text()))
    return out


def record_check(module: str, m: Mutant, outcome: str) -> None:
    """Write a re-checked mutant's outcome into the module's last results (same source only)."""
    p = RESULTS / f"{module_key(module)}.json"
    if not p.exists() or outcome == "error":
        return
    r = json.loads(p.read_text())
    if r["source_sha256"] != hashlib.sha256((ROOT / module).read_bytes()).hexdigest():
        say("note: the module changed since its last run; its results were not updated")
        return
    for x in r["mutants"]:
        if x["id"] == m.id:
            x["outcome"] = outcome
            x["rechecked"] = time.strftime("%Y-%m-%d %H:%M")
    p.write_text(json.dumps(r, indent=1))


def find_mutant(module: str, mid: str) -> Mutant:
    short, _, occ = mid.partition("#")
    names = [n for n in OPERATORS if n.split("/")[-1] == short]
    sites = [s for s in mutation_sites(ROOT / module, names) if str(s[1]) == occ]
    for m in enumerate_mutants(ROOT / module, sites):
        if m.id == mid:
            return m
    raise SystemExit(f"no mutant {mid} in {module}")


def main(argv=None) -> int:
    global TREE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    ap.add_argument("--report", action="store_true", help="print the report of the last results")
    ap.add_argument("--show", nargs=2, metavar=("MODULE", "MUTANT"), help="print one mutant's diff")
    ap.add_argument("--check", nargs=2, metavar=("MODULE", "MUTANT"),
                    help="run the module's tests against one mutant")
    ap.add_argument("--list", metavar="MODULE", help="list a module's mutants")
    ap.add_argument("--tests", help="comma-separated test files instead of the mapping")
    ap.add_argument("--markers", default="not slow",
                    help="pytest -m expression (default: 'not slow'; '' runs the slow tier too)")
    ap.add_argument("--timeout", type=float, default=0.0, help="seconds per mutant")
    ap.add_argument("--sample", type=int, default=0,
                    help="run a seeded random sample of this many mutants per module (the report says so)")
    ap.add_argument("--seed", type=int, default=1, help="the sample's seed")
    ap.add_argument("--lines", type=lambda v: tuple(int(x) for x in v.split("-", 1)),
                    help="FIRST-LAST: only the mutants starting on these source lines (a part of "
                         "a big module; the report says so)")
    ap.add_argument("--full-set", action="store_true",
                    help="run every mutant against the module's whole test list (no selection "
                         "by coverage; the way before selection, for comparison)")
    ap.add_argument("--confirm", action="store_true",
                    help="run the full set on every survivor of its selected tests (a survivor "
                         "is confirmed anyway by --check before a test is written for it)")
    ap.add_argument("--compare", action="store_true",
                    help="run every mutant both ways (selected tests, then the full set) and "
                         "report agreement and mutants per minute of each")
    ap.add_argument("--tree", default="tree",
                    help="name of the scratch copy under .mutation/ (two runs at once need two)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished mutants of the module's last results (same source) "
                         "and run only the pending ones (a stopped run continued)")
    ap.add_argument("--survivors", action="store_true",
                    help="run again only the mutants that survived in the module's last results "
                         "(same source), with the tests as they are now (after tests were written "
                         "for them); the other outcomes are kept")
    ap.add_argument("--fail-under", action="store_true",
                    help="exit 1 when a module scores below the target or has an unlisted survivor")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    os.chdir(ROOT)
    if not args.tree or os.sep in args.tree or args.tree in (".", "..", "check-tree", "results",
                                                           "logs", "shared", "coverage") \
            or args.tree.endswith("-cov"):
        raise SystemExit(f"--tree {args.tree!r}: a plain name under .mutation/ is needed")
    TREE = WORK / args.tree
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ["SENSOR_HYPOTHESIS_PROFILE"] = "ci"    # derandomised: the same examples every run
    os.environ["SENSOR_REQUIRE_EXTENSIONS"] = "1"     # the parity tests must not skip
    base_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(TREE) + os.pathsep + base_path
    entries = load_equivalents()

    for mod in args.modules + [x[0] for x in (args.show, args.check) if x] + ([args.list] if args.list else []):
        if mod not in MODULES:
            raise SystemExit(f"{mod} is not in the module map (tools/mutation.py MODULES)")

    if args.list:
        for m in enumerate_mutants(ROOT / args.list):
            say(f"{args.list}:{m.line} {m.id}: {m.original}  ->  {m.mutated}")
        return 0
    if args.show:
        mod, mid = args.show
        m = find_mutant(mod, mid)
        old = (ROOT / mod).read_text(encoding="utf-8")
        new = mutated_source(ROOT / mod, m)
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), mod, mod))
        return 0
    if args.check:
        TREE = WORK / "check-tree"   # a run in progress keeps its own copy
        os.environ["PYTHONPATH"] = str(TREE) + os.pathsep + base_path
        mod, mid = args.check
        m = find_mutant(mod, mid)
        make_tree()
        preload()
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        (TREE / mod).write_text(mutated_source(ROOT / mod, m), encoding="utf-8")
        tests = args.tests.split(",") if args.tests else MODULES[mod]
        outcome, secs = run_child(tests, WORK / "logs" / "check.log", args.timeout or 600,
                                  ["-m", args.markers] if args.markers else [])
        (TREE / mod).write_text((ROOT / mod).read_text(encoding="utf-8"), encoding="utf-8")
        say(f"{mod} {mid}: {outcome} in {secs:.1f} s (log: {WORK / 'logs' / 'check.log'})")
        record_check(mod, m, outcome)
        return 0

    modules = args.modules or list(MODULES)
    if not args.report:
        make_tree()
        preload()
        for mod in modules:
            run_module(mod, args, entries)
    results = load_results(modules if args.modules else list(MODULES))
    text, failing = report(results, entries)
    WORK.mkdir(exist_ok=True)
    (WORK / "report.md").write_text(text)
    say(text)
    matched = set()
    for r in results:
        matched |= mark_equivalents(r["module"], [Mutant(**dict(m, outcome="survived"))
                                                  for m in r["mutants"]
                                                  if m["outcome"] in ("survived", "equivalent")], entries)
    stale = [e for i, e in enumerate(entries) if i not in matched
             and any(r["module"] == e["module"] for r in results)]
    for e in stale:
        say(f"note: equivalent entry matches no survivor now: {e['module']}: {e['line']!r} -> {e['mutant']!r}")
    if args.fail_under and failing:
        say(f"below the target or with unexplained survivors: {', '.join(failing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
