"""The seed page's criteria language, compiled to the rule IR.

Grammar (what the rule pages use)::

    criteria   := [LABEL ":"] expr ["select" field_ref ("," field_ref)*]
    expr       := term ("OR" term)*
    term       := factor ("AND" factor)*
    factor     := "NOT" factor | "(" expr ")" | comparison
    comparison := FIELD OP STRING
    OP         := = | != | endswith | notendswith | startswith | notstartswith
                  | contains | notcontains
    field_ref  := [LABEL "."] FIELD

Semantics:

* A STRING holding commas is a list: the comparison holds when any value does
  (``notX`` holds when *no* value does).  Backslashes are literal.
* Case-insensitive.  A positive comparison on a missing field is false; its
  negation (``!=``, ``notendswith``, ``notcontains``...) is true.
* ``actionname = "Process started"`` selects process-start events, which is
  every event this sensor sees, so it compiles to true; any other action is an
  error (the rule could never fire).
* ``AND`` binds tighter than ``OR``; keywords are case-insensitive.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import FIELD_MAP
from .ir import Predicate, RuleError

ACTION_FIELD = "ACTIONNAME"
ACTIONS = {"process started"}

_OPS = {
    "=": ("eq", False), "!=": ("eq", True),
    "endswith": ("endswith", False), "notendswith": ("endswith", True),
    "startswith": ("startswith", False), "notstartswith": ("startswith", True),
    "contains": ("contains", False), "notcontains": ("contains", True),
}

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"[^"]*")|(?P<op>!=|=)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<dot>\.)'
    r'|(?P<colon>:)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))'
)


@dataclass
class Criteria:
    """A compiled criteria expression."""

    label: str | None
    predicates: tuple
    condition: tuple
    select: tuple  # criteria field names, e.g. ("HOSTNAME", "MESSAGE", ...)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                break
            pos = m.end()
            kind = m.lastgroup
            if kind == "bad":
                raise self.error(f"unexpected character {m.group(kind)!r}", m.start(kind))
            self.toks.append((kind, m.group(kind), m.start(kind)))
        self.i = 0
        self.preds: list[Predicate] = []
        self.index: dict[Predicate, int] = {}

    def error(self, msg: str, pos: int | None = None) -> RuleError:
        if pos is None:
            pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        return RuleError(f"criteria column {pos + 1}: {msg}")

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "", len(self.text))

    def is_word(self, word: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t[0] == "word" and t[1].lower() == word

    def take(self, kind: str, what: str):
        t = self.peek()
        if t[0] != kind:
            raise self.error(f"expected {what}, found {t[1] or 'end of text'!r}")
        self.i += 1
        return t

    def parse(self) -> Criteria:
        label = None
        if self.peek()[0] == "word" and self.peek(1)[0] == "colon":
            label = self.peek()[1]
            self.i += 2
        cond = self.expr()
        select: list[str] = []
        if self.is_word("select"):
            self.i += 1
            while True:
                w = self.take("word", "a field name after select")[1]
                if self.peek()[0] == "dot":
                    if label is not None and w != label:
                        raise self.error(f"select refers to {w!r}, the criteria is {label!r}")
                    self.i += 1
                    w = self.take("word", "a field name")[1]
                if w.upper() not in FIELD_MAP:
                    raise self.error(f"unknown field {w!r} in select")
                select.append(w.upper())
                if self.peek()[0] != "comma":
                    break
                self.i += 1
        if self.peek()[0] != "eof":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return Criteria(label, tuple(self.preds), cond, tuple(select))

    def expr(self) -> tuple:
        items = [self.term()]
        while self.is_word("or"):
            self.i += 1
            items.append(self.term())
        return items[0] if len(items) == 1 else ("or",) + tuple(items)

    def term(self) -> tuple:
        items = [self.factor()]
        while self.is_word("and"):
            self.i += 1
            items.append(self.factor())
        return items[0] if len(items) == 1 else ("and",) + tuple(items)

    def factor(self) -> tuple:
        if self.is_word("not"):
            self.i += 1
            return ("not", self.factor())
        if self.peek()[0] == "lp":
            self.i += 1
            e = self.expr()
            self.take("rp", "')'")
            return e
        return self.comparison()

    def comparison(self) -> tuple:
        kind, name, pos = self.take("word", "a field name")
        t = self.peek()
        if t[0] == "op":
            op = t[1]
        elif t[0] == "word" and t[1].lower() in _OPS:
            op = t[1].lower()
        else:
            raise self.error(f"expected an operator after {name!r}, found {t[1] or 'end of text'!r}")
        self.i += 1
        raw = self.take("str", "a quoted value")[1][1:-1]
        ir_op, negated = _OPS[op]
        fld = name.upper()
        if fld == ACTION_FIELD:
            if ir_op != "eq":
                raise self.error("actionname takes = or !=", pos)
            holds = raw.strip().lower() in ACTIONS
            if not holds:
                raise self.error(f"action {raw!r} never occurs: this sensor sees process starts "
                                 f"(actionname = \"Process started\")", pos)
            return ("const", not negated)
        if fld not in FIELD_MAP:
            raise self.error(f"unknown field {name!r}", pos)
        values = tuple(raw.split(","))
        pred = Predicate(FIELD_MAP[fld], ir_op, values)
        if pred not in self.index:
            self.index[pred] = len(self.preds)
            self.preds.append(pred)
        node = ("pred", self.index[pred])
        return ("not", node) if negated else node


def parse_criteria(text: str) -> Criteria:
    """Compile one criteria expression (the text after ``Criteria`` on a rule page)."""
    return _Parser(text.strip()).parse()
