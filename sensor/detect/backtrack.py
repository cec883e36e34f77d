"""A backtracking regex engine with a hard step budget, for the few regexes RE2 cannot run.

Backreferences, lookaround, conditionals, atomic groups and possessive repeats need
backtracking, and backtracking can take exponential time.  The rule loader refuses a rule
with such a regex unless the operator opts in for that rule (docs/matcher.md); an
opted-in regex runs here.  Every search gets at most ``budget`` steps (one step = one
instruction of the program below, counted across all start positions); past that it
raises :class:`BudgetExceeded` and the matcher records the rule as undecided for that
event (counted and reported; every other rule is still evaluated).

The program follows Python's ``re`` (``sre``) semantics: it is compiled from Python's own
parse tree, tries alternatives and repeats in the same order (greedy first unless lazy,
left to right), keeps the captures of the last iteration, stops repeating a group whose
last optional iteration matched nothing (as sre's MAX_UNTIL and MIN_UNTIL do: the iterations
up to the minimum are exempt, so one more may follow an empty required one), and uses the exact character sets
of :mod:`sensor.detect.regex`.  Both matchers call this one implementation, so they agree
by construction, including on when the budget runs out; tests compare it with ``re``.
"""
from __future__ import annotations

import re
import re._constants as _K
import re._parser as _parser
import warnings

from .charsets import char_set, py_flags, scan_count

ENGINE_BACKTRACK = "backtrack"

DEFAULT_BUDGET = 200_000

# instructions
_CHAR, _SPLIT, _JMP, _SAVE, _MATCH, _AT, _BACKREF, _LOOK, _ATOMIC, _REP0, _REP, _ITER, \
    _INC, _COND = range(14)


class BudgetExceeded(Exception):
    """The search used up its step budget: the answer is unknown."""


def _word(ch: str, ascii_only: bool) -> bool:
    if ascii_only:
        return ch.isascii() and (ch.isalnum() or ch == "_")
    return ch.isalnum() or ch == "_"


def _lower1(ch: str) -> str:
    """Simple (one-character) lower-case mapping, as sre compares backreferences."""
    low = ch.lower()
    return low if len(low) == 1 else ("i" if ch == "\u0130" else ch)


class _Prog:
    def __init__(self):
        self.code: list = []
        self.nloops = 0

    def emit(self, *ins) -> int:
        self.code.append(list(ins))
        return len(self.code) - 1


def _compile(items, flags: int, prog: _Prog) -> None:
    for op, av in items:
        if op in (_K.LITERAL, _K.NOT_LITERAL, _K.IN, _K.ANY):
            prog.emit(_CHAR, char_set((op, av), flags))
        elif op is _K.SUBPATTERN:
            group, add, rem, sub = av
            f = (flags | add) & ~rem
            if group:
                prog.emit(_SAVE, 2 * group)
            _compile(list(sub), f, prog)
            if group:
                prog.emit(_SAVE, 2 * group + 1)
        elif op is _K.BRANCH:
            jumps = []
            alts = av[1]
            for i, alt in enumerate(alts):
                if i < len(alts) - 1:
                    split = prog.emit(_SPLIT, 0, 0)
                    prog.code[split][1] = split + 1
                    _compile(list(alt), flags, prog)
                    jumps.append(prog.emit(_JMP, 0))
                    prog.code[split][2] = len(prog.code)
                else:
                    _compile(list(alt), flags, prog)
            for j in jumps:
                prog.code[j][1] = len(prog.code)
        elif op in (_K.MAX_REPEAT, _K.MIN_REPEAT):
            _repeat(av, op is _K.MAX_REPEAT, flags, prog)
        elif op is _K.POSSESSIVE_REPEAT:
            sub = _Prog()
            sub.nloops = prog.nloops
            _repeat(av, True, flags, sub)
            sub.emit(_MATCH)
            prog.nloops = sub.nloops
            prog.emit(_ATOMIC, sub.code)
        elif op is _K.ATOMIC_GROUP:
            prog.emit(_ATOMIC, _subprog(list(av), flags, prog))
        elif op in (_K.ASSERT, _K.ASSERT_NOT):
            direction, sub = av
            width = 0
            if direction < 0:
                lo, hi = sub.getwidth()
                if lo != hi:
                    raise re.error("look-behind requires fixed-width pattern")
                width = lo
            prog.emit(_LOOK, direction < 0, op is _K.ASSERT, _subprog(list(sub), flags, prog), width)
        elif op is _K.GROUPREF:
            prog.emit(_BACKREF, av, bool(flags & re.IGNORECASE))
        elif op is _K.GROUPREF_EXISTS:
            group, yes, no = av
            cond = prog.emit(_COND, group, 0)
            _compile(list(yes), flags, prog)
            if no is not None:
                j = prog.emit(_JMP, 0)
                prog.code[cond][2] = len(prog.code)
                _compile(list(no), flags, prog)
                prog.code[j][1] = len(prog.code)
            else:
                prog.code[cond][2] = len(prog.code)
        elif op is _K.AT:
            prog.emit(_AT, av, flags)
        else:
            raise re.error(f"unsupported regex element {op}")


def _subprog(items, flags: int, prog: _Prog) -> list:
    sub = _Prog()
    sub.nloops = prog.nloops
    _compile(items, flags, sub)
    sub.emit(_MATCH)
    prog.nloops = sub.nloops
    return sub.code


def _repeat(av, greedy: bool, flags: int, prog: _Prog) -> None:
    lo, hi, sub = av
    k = prog.nloops
    prog.nloops += 1
    prog.emit(_REP0, k)
    head = prog.emit(_REP, k, lo, None if hi is _K.MAXREPEAT else hi, greedy, 0)
    prog.emit(_ITER, k, lo)
    _compile(list(sub), flags, prog)
    prog.emit(_INC, k)
    prog.emit(_JMP, head)
    prog.code[head][5] = len(prog.code)


class _Run:
    """One search: the text, the shared step counter, the loop state."""

    __slots__ = ("text", "n", "steps", "budget", "nloops")

    def __init__(self, text: str, budget: int, nloops: int):
        self.text = text
        self.n = len(text)
        self.steps = 0
        self.budget = budget
        self.nloops = nloops

    def at(self, code, flags: int, sp: int) -> bool:
        text, n = self.text, self.n
        multi = flags & re.MULTILINE
        if code is _K.AT_BEGINNING:
            return sp == 0 or (bool(multi) and text[sp - 1] == "\n")
        if code is _K.AT_BEGINNING_STRING:
            return sp == 0
        if code is _K.AT_END:
            if multi:
                return sp == n or text[sp] == "\n"
            return sp == n or (sp == n - 1 and text[sp] == "\n")
        if code is _K.AT_END_STRING:
            return sp == n
        if code in (_K.AT_BOUNDARY, _K.AT_NON_BOUNDARY):
            if n == 0:
                return False
            a = bool(flags & re.ASCII)
            before = sp > 0 and _word(text[sp - 1], a)
            after = sp < n and _word(text[sp], a)
            return (before != after) == (code is _K.AT_BOUNDARY)
        raise re.error(f"unsupported anchor {code}")

    def run(self, code: list, sp: int, caps: list, loops: list) -> int:
        """Match ``code`` anchored at ``sp``; the end position, or -1.  ``caps`` and
        ``loops`` are updated in place on success (restored on failure)."""
        text, n = self.text, self.n
        stack: list = []        # (pc, sp, undo length)
        undo: list = []         # (list, index, old value)
        pc = 0
        while True:
            self.steps += 1
            if self.steps > self.budget:
                raise BudgetExceeded()
            ins = code[pc]
            op = ins[0]
            ok = True
            if op == _CHAR:
                if sp < n and ord(text[sp]) in ins[1]:
                    sp += 1
                    pc += 1
                else:
                    ok = False
            elif op == _SPLIT:
                stack.append((ins[2], sp, len(undo)))
                pc = ins[1]
            elif op == _JMP:
                pc = ins[1]
            elif op == _SAVE:
                undo.append((caps, ins[1], caps[ins[1]]))
                caps[ins[1]] = sp
                pc += 1
            elif op == _MATCH:
                return sp
            elif op == _AT:
                if self.at(ins[1], ins[2], sp):
                    pc += 1
                else:
                    ok = False
            elif op == _REP0:
                k = 2 * ins[1]
                undo.append((loops, k, loops[k]))
                undo.append((loops, k + 1, loops[k + 1]))
                loops[k] = 0
                loops[k + 1] = -1
                pc += 1
            elif op == _REP:
                k = 2 * ins[1]
                count = loops[k]
                lo, hi, greedy, out = ins[2], ins[3], ins[4], ins[5]
                if count < lo:
                    pc += 1
                elif (hi is not None and count >= hi) or sp == loops[k + 1]:
                    pc = out
                elif greedy:
                    stack.append((out, sp, len(undo)))
                    pc += 1
                else:
                    stack.append((pc + 1, sp, len(undo)))
                    pc = out
            elif op == _ITER:
                # an optional iteration starts here: remember where, so one that matches nothing
                # is the last (sre's zero-width guard); a required one leaves the mark alone
                k = 2 * ins[1]
                if loops[k] >= ins[2]:
                    undo.append((loops, k + 1, loops[k + 1]))
                    loops[k + 1] = sp
                pc += 1
            elif op == _INC:
                k = 2 * ins[1]
                undo.append((loops, k, loops[k]))
                loops[k] += 1
                pc += 1
            elif op == _COND:
                g = ins[1]
                if caps[2 * g] >= 0 and caps[2 * g + 1] >= 0:
                    pc += 1
                else:
                    pc = ins[2]
            elif op == _BACKREF:
                g = ins[1]
                a, b = caps[2 * g], caps[2 * g + 1]
                if a < 0 or b < 0:
                    ok = False
                else:
                    ln = b - a
                    if sp + ln > n:
                        ok = False
                    elif ins[2]:
                        ok = all(_lower1(text[a + i]) == _lower1(text[sp + i]) for i in range(ln))
                    else:
                        ok = text[a:b] == text[sp:sp + ln]
                    if ok:
                        sp += ln
                        pc += 1
            elif op == _LOOK:
                behind, positive, sub, width = ins[1], ins[2], ins[3], ins[4]
                start = sp - width if behind else sp
                c2, l2 = list(caps), list(loops)
                hit = start >= 0 and self.run(sub, start, c2, l2) >= 0
                if hit != positive:
                    ok = False
                else:
                    if positive:
                        self._adopt(caps, c2, undo)
                    pc += 1
            elif op == _ATOMIC:
                c2, l2 = list(caps), list(loops)
                end = self.run(ins[1], sp, c2, l2)
                if end < 0:
                    ok = False
                else:
                    self._adopt(caps, c2, undo)
                    self._adopt(loops, l2, undo)
                    sp = end
                    pc += 1
            if not ok:
                if not stack:
                    self._undo(undo, 0)
                    return -1
                pc, sp, ul = stack.pop()
                self._undo(undo, ul)

    @staticmethod
    def _adopt(dst: list, src: list, undo: list) -> None:
        for i, v in enumerate(src):
            if dst[i] != v:
                undo.append((dst, i, dst[i]))
                dst[i] = v

    @staticmethod
    def _undo(undo: list, length: int) -> None:
        while len(undo) > length:
            arr, i, old = undo.pop()
            arr[i] = old


class BudgetRegex:
    """``search(text)``: ``re.search(source, text, flags) is not None``, or
    :class:`BudgetExceeded` after ``budget`` steps."""

    engine = ENGINE_BACKTRACK

    def __init__(self, source: str, flags: str = "", budget: int | None = None,
                 reason: str | None = None):
        self.source = source
        self.flags = flags
        self.reason = reason
        self.budget = DEFAULT_BUDGET if budget is None else int(budget)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = _parser.parse(source, py_flags(flags))
        scan_count[0] = 0       # the scans this regex's sets need are bounded per regex
        self.ngroups = parsed.state.groups
        prog = _Prog()
        _compile(list(parsed), parsed.state.flags, prog)
        prog.emit(_MATCH)
        self.code = prog.code
        self.nloops = prog.nloops

    def search(self, text: str) -> bool:
        run = _Run(text, self.budget, self.nloops)
        for start in range(len(text) + 1):
            caps = [-1] * (2 * self.ngroups)
            loops = [0, -1] * self.nloops
            if run.run(self.code, start, caps, loops) >= 0:
                return True
        return False

    def __repr__(self) -> str:
        return f"BudgetRegex({self.source!r}, {self.flags!r}, budget={self.budget})"
