# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled rule matcher (``sensor._matcher``).

Same API and answers as the reference matcher ``sensor._matcher_py``.  Conditions
are flattened into a postfix program evaluated over a per-event predicate cache.
"""
from sensor._matcher_py import _Test
from sensor.rules.ir import Rule

ENGINE = "compiled"

# postfix opcodes
cdef enum:
    OP_PRED = 0
    OP_AND = 1
    OP_OR = 2
    OP_NOT = 3
    OP_CONST = 4


cdef void _emit(list prog, tuple cond, list remap):
    kind = cond[0]
    if kind == "pred":
        prog.append((OP_PRED, remap[cond[1]]))
    elif kind == "and" or kind == "or":
        for c in cond[1:]:
            _emit(prog, c, remap)
        prog.append((OP_AND if kind == "and" else OP_OR, len(cond) - 1))
    elif kind == "not":
        _emit(prog, cond[1], remap)
        prog.append((OP_NOT, 0))
    else:
        prog.append((OP_CONST, 1 if cond[1] else 0))


cdef class Matcher:
    """Evaluate a rule set against events; ``match`` returns indices into ``rules``."""

    cdef public list rules
    cdef list _tests
    cdef list _progs
    engine = ENGINE

    def __init__(self, rules):
        self.rules = list(rules)
        cdef dict slots = {}
        self._tests = []
        self._progs = []
        for rule in self.rules:
            remap = []
            for p in rule.predicates:
                if p not in slots:
                    slots[p] = len(self._tests)
                    self._tests.append(_Test(p))
                remap.append(slots[p])
            prog = []
            _emit(prog, rule.condition, remap)
            self._progs.append(prog)

    cpdef list match(self, event):
        """Indices of the rules whose condition holds for ``event``, ascending."""
        cdef Py_ssize_t ntests = len(self._tests)
        cdef bytearray memo = bytearray(ntests)   # 0 unknown, 1 false, 2 true
        cdef list out = []
        cdef list stack = []
        cdef Py_ssize_t ri, k, n
        cdef int op, arg, i
        cdef bint r
        for ri in range(len(self._progs)):
            stack.clear()
            for op, arg in <list>self._progs[ri]:
                if op == OP_PRED:
                    if memo[arg] == 0:
                        memo[arg] = 2 if (<object>self._tests[arg]).evaluate(event) else 1
                    stack.append(memo[arg] == 2)
                elif op == OP_AND or op == OP_OR:
                    n = arg
                    k = len(stack) - n
                    if op == OP_AND:
                        r = all(stack[k:])
                    else:
                        r = any(stack[k:])
                    del stack[k:]
                    stack.append(r)
                elif op == OP_NOT:
                    stack[len(stack) - 1] = not stack[len(stack) - 1]
                else:
                    stack.append(arg == 1)
            if stack[len(stack) - 1]:
                out.append(ri)
        return out

    def match_rules(self, event):
        """The matching rules themselves."""
        return [self.rules[i] for i in self.match(event)]

    @property
    def stats(self):
        return {"engine": ENGINE, "rules": len(self.rules), "predicates": len(self._tests)}
