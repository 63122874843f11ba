"""`harvest --where`: which captured requests count as failures, in the condition language of `ab decide`.

    where = parse_where("feedback < 0 or finish_reason = length or error")
    where({"feedback": -1.0, "finish_reason": "stop", "error": None, ...})     # True

`ab decide` compares an arm's metrics (`METRIC OP EXPRESSION`, clauses joined by `and`); here the same
clauses are about one request's fields, and join with `and`, `or`, `not` and parentheses:

    FIELD OP EXPRESSION     a number field against numbers, + - * / and other number fields
    FIELD = WORD            a text field against a word or a 'quoted text' (also == and !=)
    FIELD                   the field is set: `error` (the request failed), `correction`, `feedback`

A comparison with a field that has no value (no feedback yet) is false; a text field without a value
is the empty text. Parsed here with the arithmetic of router.decide — never handed to eval(); an error
names the column where the text stops making sense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..router.decide import COMPARISONS, ConditionError, Token, _Parser, _tokens, value_of

NUMBER, TEXT = "number", "text"
FIELDS = {
    "feedback": (NUMBER, "the feedback score (unset: no feedback)"),
    "latency": (NUMBER, "seconds from the request to its last byte"),
    "ttft": (NUMBER, "seconds to the first content (streamed requests)"),
    "status": (NUMBER, "the HTTP status the client got"),
    "prompt_tokens": (NUMBER, "tokens of the prompt"),
    "completion_tokens": (NUMBER, "tokens of the answer"),
    "response_chars": (NUMBER, "characters of the answer"),
    "finish_reason": (TEXT, "stop, length, ... (done_reason / finish_reason)"),
    "error": (TEXT, "why the request failed (unset: it did not)"),
    "arm": (TEXT, "the version that answered, NAME:vN"),
    "route": (TEXT, "/api/chat, /api/generate, /v1/chat/completions, /v1/completions"),
    "correction": (TEXT, "the answer it should have been (posted as feedback)"),
    "label": (TEXT, "the label posted as feedback"),
}
KEYWORDS = ("and", "or", "not")
TEXT_COMPARISONS = ("=", "==", "!=")
FORM = ("FIELD OP VALUE joined by and / or / not, e.g. \"feedback < 0 or finish_reason = length or error\"; "
        f"fields: {', '.join(FIELDS)}")
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<text>'[^']*'|\"[^\"]*\")"
                    r"|(?P<op><=|>=|==|!=|=|<|>|[-+*/()])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))")


class _WhereParser(_Parser):
    def __init__(self, text: str, tokens: list[Token]):
        super().__init__(tokens, metric="")
        self.text = text

    def error(self, message: str, token: Token | None = None) -> ConditionError:
        pos = token.pos if token is not None else (self.peek().pos if self.peek() is not None else len(self.text))
        return where_error(self.text, message, pos)

    def name(self, value: str) -> tuple:  # a name inside a number expression
        token = self.tokens[self.i - 1]
        if value in KEYWORDS:
            raise self.error(f"a value is missing before {value!r}", token)
        if value not in FIELDS:
            raise self.error(f"unknown field {value!r}", token)
        if FIELDS[value][0] != NUMBER:
            raise self.error(f"{value} is text, not a number", token)
        return ("field", value)

    # --- the conditions around the clauses -------------------------------------------------------------------
    def keyword(self, word: str) -> bool:
        if self.peek() == ("name", word):
            self.take()
            return True
        return False

    def any_of(self) -> tuple:
        node = self.all_of()
        while self.keyword("or"):
            node = ("or", node, self.all_of())
        return node

    def all_of(self) -> tuple:
        node = self.negation()
        while self.keyword("and"):
            node = ("and", node, self.negation())
        return node

    def negation(self) -> tuple:
        return ("not", self.negation()) if self.keyword("not") else self.clause()

    def clause(self) -> tuple:
        token = self.take()
        kind, value = token
        if token == ("op", "("):
            node = self.any_of()
            if self.peek() != ("op", ")"):
                raise self.error("a '(' is not closed", token)
            self.take()
            return node
        if kind != "name" or value in KEYWORDS:
            raise self.error(f"expected a field, found {value!r}", token)
        if value not in FIELDS:
            raise self.error(f"unknown field {value!r}", token)
        following = self.peek()
        if following is None or following[0] != "op" or following[1] not in COMPARISONS and following[1] != "=":
            return ("set", value)
        op = self.take()[1]
        if FIELDS[value][0] == TEXT:
            if op not in TEXT_COMPARISONS:
                raise self.error(f"{value} is text: compare it with = or !=, not {op}", following)
            word = self.take()
            if word[0] not in ("name", "text", "num"):
                raise self.error(f"expected a word or a 'quoted text' after {value} {op}", word)
            return ("text", value, "!=" if op == "!=" else "==", word[1][1:-1] if word[0] == "text" else word[1])
        if self.peek() is not None and self.peek()[0] == "text":
            raise self.error(f"{value} is a number, not text", self.peek())
        return ("compare", value, "==" if op == "=" else op, self.expression())


def where_error(text: str, message: str, pos: int) -> ConditionError:
    shown = f"{text[pos:pos + 20]!r}" if text[pos:].strip() else "the end"
    return ConditionError(f"--where {text!r}, column {pos + 1} ({shown}): {message}", f"write {FORM}")


@dataclass(frozen=True)
class Where:
    """A parsed --where: call it with a request's fields (a mapping from FIELDS' names)."""

    text: str
    tree: tuple

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return _holds(self.tree, row)


def _holds(node: tuple, row: Mapping[str, Any]) -> bool:
    kind = node[0]
    if kind == "or":
        return _holds(node[1], row) or _holds(node[2], row)
    if kind == "and":
        return _holds(node[1], row) and _holds(node[2], row)
    if kind == "not":
        return not _holds(node[1], row)
    if kind == "set":
        return row.get(node[1]) not in (None, "")
    if kind == "text":
        same = str(row.get(node[1]) or "") == node[3]
        return same if node[2] == "==" else not same
    left = row.get(node[1])
    right = value_of(node[3], lambda leaf: row.get(leaf[1]))
    return left is not None and right is not None and bool(COMPARISONS[node[2]](left, right))


def parse_where(text: str) -> Where:
    if not text or not text.strip():
        raise ConditionError("--where is empty", f"write {FORM}")
    tokens = _tokens(text, _TOKEN, unreadable=lambda pos: where_error(text, "cannot read this", pos))
    parser = _WhereParser(text, tokens)
    tree = parser.any_of()
    if parser.peek() is not None:
        raise parser.error(f"unexpected {parser.peek()[1]!r}")
    return Where(text, tree)
