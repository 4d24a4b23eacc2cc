"""``MechanismSelector``: which attention mechanism to run for a workload (DESIGN.md, "Selection").

Rules are ``(condition, mechanism)`` pairs (or ``"condition -> mechanism"`` strings), tried in
order; the first whose condition holds wins. A condition is parsed once, when the selector is
built, by a small grammar (never ``eval``):

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" condition ")" | comparison | flag
    comparison := operand (">" | ">=" | "<" | "<=" | "==" | "!=") operand
    operand    := integer | "seq_len" | "batch_size" | "long_sequence_threshold"
    flag       := "hierarchical" | "graph" | "moe" | "default"   (default is always true)

Errors name the rule, the column and the token (with a caret under it).
"""
from __future__ import annotations

import difflib
import operator
import re
from typing import Callable, NamedTuple

from .validation import positive_int

NUMERIC = ("seq_len", "batch_size", "long_sequence_threshold")
FLAGS = ("hierarchical", "graph", "moe", "default")
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
            "==": operator.eq, "!=": operator.ne}
_TOKEN = re.compile(r"\s*(?:(?P<num>\d[\d_]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|"
                    r"(?P<op>>=|<=|==|!=|>|<)|(?P<paren>[()]))")

DEFAULT_RULES = (
    ("seq_len > 32768", "longformer-attention"),
    ("seq_len > long_sequence_threshold", "{fallback}"),
    ("hierarchical", "hierarchical-cross-attention"),
    ("graph", "star-attention"),
    ("moe", "moe-attention"),
    ("default", "{default}"),
)


class Selection(NamedTuple):
    """What ``select`` chose, the rule that chose it (index and text) and why."""
    mechanism: str
    rule: int
    condition: str
    reason: str


class RuleError(ValueError):
    """A rule that does not parse or names an unknown mechanism."""


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise RuleError(_pointer(where, text, start, f"unexpected character "
                                                         f"{text[start]!r}"))
        kind = match.lastgroup
        value = match.group(kind)
        out.append((kind, value, match.start(kind)))
        pos = match.end()
    return out


def _pointer(where: str, text: str, column: int, message: str) -> str:
    return f"{where}, column {column + 1}: {message}\n    {text}\n    {' ' * column}^"


class _Parser:
    """Recursive descent over the tokens of one condition → a predicate over the context."""

    def __init__(self, text: str, where: str):
        self.text, self.where = text, where
        self.tokens = _tokens(text, where)
        self.i = 0

    def fail(self, message: str, column: int | None = None):
        if column is None:
            column = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        raise RuleError(_pointer(self.where, self.text, column, message))

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None, len(self.text))

    def take(self):
        token = self.peek()
        self.i += 1
        return token

    def parse(self) -> Callable[[dict], bool]:
        if not self.tokens:
            self.fail("the condition is empty")
        pred = self.or_()
        if self.i < len(self.tokens):
            self.fail(f"unexpected {self.peek()[1]!r} after a complete condition (join "
                      "conditions with 'and' / 'or')")
        return pred

    def or_(self):
        left = self.and_()
        while self.peek()[1] == "or":
            self.take()
            right = self.and_()
            left = (lambda a, b: lambda c: a(c) or b(c))(left, right)
        return left

    def and_(self):
        left = self.not_()
        while self.peek()[1] == "and":
            self.take()
            right = self.not_()
            left = (lambda a, b: lambda c: a(c) and b(c))(left, right)
        return left

    def not_(self):
        kind, value, col = self.peek()
        if value == "not":
            self.take()
            inner = self.not_()
            return lambda c: not inner(c)
        if value == "(":
            self.take()
            inner = self.or_()
            if self.peek()[1] != ")":
                self.fail("expected ')' to close the '(' at column " + str(col + 1))
            self.take()
            return inner
        if kind == "name" and value in FLAGS:
            self.take()
            if self.peek()[0] == "op":
                self.fail(f"{value!r} is a flag (true or false), not a number")
            return (lambda c: True) if value == "default" else (lambda c, f=value: c[f])
        return self.comparison()

    def operand(self):
        kind, value, col = self.take()
        if kind == "num":
            number = int(value.replace("_", ""))
            return lambda c: number
        if kind == "name" and value in NUMERIC:
            return lambda c, f=value: c[f]
        if kind is None:
            self.fail("the condition ends where a number or " + " / ".join(NUMERIC)
                      + " was expected", col)
        if kind != "name":
            self.fail(f"expected a number or {' / '.join(NUMERIC)} but found {value!r}", col)
        hint = difflib.get_close_matches(value, [*NUMERIC, *FLAGS], n=1)
        self.fail(f"unknown name {value!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                  + f"; conditions use {', '.join(NUMERIC)}, the flags {', '.join(FLAGS)}, "
                    "integers, comparisons, and / or / not, parentheses", col)

    def comparison(self):
        left = self.operand()
        kind, value, col = self.take()
        if kind != "op":
            self.fail("expected a comparison (>, >=, <, <=, ==, !=)"
                      + (f" but found {value!r}" if value else ""), col)
        compare = _COMPARE[value]
        right = self.operand()
        return lambda c: compare(left(c), right(c))


def parse_condition(text: str, where: str = "condition") -> Callable[[dict], bool]:
    """A predicate over ``{"seq_len", "batch_size", "long_sequence_threshold", "hierarchical",
    "graph", "moe"}`` from a condition in the grammar above (``RuleError`` otherwise)."""
    if not isinstance(text, str):
        raise RuleError(f"{where}: a condition must be a string; got {type(text).__name__}")
    return _Parser(text, where).parse()


class MechanismSelector:
    """Pick a mechanism by ordered rules, first match wins. Default rules: ``seq_len > 32768`` →
    longformer-attention; ``seq_len > long_sequence_threshold`` → ``fallback_mechanism``;
    ``hierarchical`` → hierarchical-cross-attention; ``graph`` → star-attention; ``moe`` →
    moe-attention; ``default`` → ``default_mechanism``. Custom ``rules`` replace them (add a
    ``default`` rule, or ``default_mechanism`` answers when none matches)."""

    def __init__(self, rules=None, *, long_sequence_threshold: int = 8192,
                 fallback_mechanism: str = "linear-attention",
                 default_mechanism: str = "flash-attention-v2"):
        from .mechanisms import registry

        self.long_sequence_threshold = positive_int("long_sequence_threshold",
                                                    long_sequence_threshold)
        known = set(registry.names())
        for name, value in (("fallback_mechanism", fallback_mechanism),
                            ("default_mechanism", default_mechanism)):
            self._check_name(value, known, name)
        self.fallback_mechanism = fallback_mechanism
        self.default_mechanism = default_mechanism
        if rules is None:
            rules = [(cond, mech.format(fallback=fallback_mechanism, default=default_mechanism))
                     for cond, mech in DEFAULT_RULES]
        self.rules: list[tuple[str, str]] = []
        self._compiled = []
        for i, rule in enumerate(self._as_pairs(rules)):
            cond, mech = rule
            where = f"rule {i + 1} ({cond!r} -> {mech!r})"
            predicate = parse_condition(cond, where)
            self._check_name(mech, known, where)
            self.rules.append((cond, mech))
            self._compiled.append((predicate, mech))

    @staticmethod
    def _as_pairs(rules) -> list[tuple[str, str]]:
        if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
            raise RuleError("rules must be a list of (condition, mechanism) pairs or "
                            "'condition -> mechanism' strings")
        pairs = []
        for i, rule in enumerate(rules):
            if isinstance(rule, str):
                cond, arrow, mech = rule.partition("->")
                if not arrow:
                    raise RuleError(f"rule {i + 1} ({rule!r}): expected 'condition -> mechanism'")
                rule = (cond.strip(), mech.strip())
            if not (isinstance(rule, (tuple, list)) and len(rule) == 2
                    and all(isinstance(x, str) for x in rule)):
                raise RuleError(f"rule {i + 1} must be (condition, mechanism) strings or "
                                f"'condition -> mechanism'; got {rule!r}")
            pairs.append(tuple(rule))
        return pairs

    @staticmethod
    def _check_name(name, known, where) -> None:
        if not isinstance(name, str) or name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=3, cutoff=0.5)
            raise RuleError(f"{where}: unknown mechanism {name!r}"
                            + (f"; did you mean {', '.join(close)}?" if close else
                               " (see `rerank list`)"))

    def select(self, seq_len: int = 0, batch_size: int = 1, *, is_hierarchical: bool = False,
               has_graph_structure: bool = False, is_moe: bool = False) -> str:
        """The first matching rule's mechanism (``default_mechanism`` when none matches)."""
        context = {"seq_len": seq_len, "batch_size": batch_size,
                   "long_sequence_threshold": self.long_sequence_threshold,
                   "hierarchical": is_hierarchical, "graph": has_graph_structure, "moe": is_moe}
        for predicate, mechanism in self._compiled:
            if predicate(context):
                return mechanism
        return self.default_mechanism

    def explain(self, seq_len: int = 0, batch_size: int = 1, *, is_hierarchical: bool = False,
                has_graph_structure: bool = False, is_moe: bool = False) -> Selection:
        """``select`` with the rule that matched and a sentence saying why."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
            raise ValueError(f"seq_len must be a non-negative integer; got {seq_len!r}")
        batch_size = positive_int("batch_size", batch_size)
        context = {"seq_len": seq_len, "batch_size": batch_size,
                   "long_sequence_threshold": self.long_sequence_threshold,
                   "hierarchical": bool(is_hierarchical), "graph": bool(has_graph_structure),
                   "moe": bool(is_moe)}
        for i, (predicate, mechanism) in enumerate(self._compiled):
            if predicate(context):
                cond = self.rules[i][0]
                return Selection(mechanism, i, cond, f"rule {i + 1} matched: {cond} "
                                 f"(seq_len={seq_len}, batch_size={batch_size})")
        return Selection(self.default_mechanism, -1, "",
                         "no rule matched: the default mechanism")
