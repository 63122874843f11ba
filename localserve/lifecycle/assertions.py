"""Checks on one answer, keyed by the names users type in promptfoo test files.

Each type follows promptfoo's semantics (its handlers compare the raw output string; every check is
pass/fail with score 1 or 0, levenshtein included). A type prefixed with `not-` is the inverse of
the same check, as in promptfoo. Where ours differs, the check says so in a comment.

Values and thresholds are checked when the suite loads (`make_assertion`), not when a model has
already answered: a typo in a regex or a JSON Schema fails before any engine starts.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from jsonschema import validators
from jsonschema.exceptions import SchemaError, best_match

from ..errors import InputError, UnknownName
from .results import Answer, AssertionResult, CaseResult

if TYPE_CHECKING:
    from .suites import Case

INVERSE_PREFIX = "not-"


@dataclass(frozen=True)
class Assertion:
    """One check as the suite wrote it, its value already validated (and rendered with the case's vars)."""

    type: str  # as typed: "contains", "not-icontains", ...
    value: Any = None
    threshold: float | None = None
    weight: float = 1.0

    @property
    def base_type(self) -> str:
        return self.type[len(INVERSE_PREFIX):] if self.inverse else self.type

    @property
    def inverse(self) -> bool:
        return self.type.startswith(INVERSE_PREFIX)

    def to_json(self) -> dict:
        return {"type": self.type, "value": self.value, "threshold": self.threshold, "weight": self.weight}


# A check answers (holds, fact): whether the property holds for the answer, and what was found, as
# one line that reads right whichever way the assertion goes ("'Paris' not in the answer").
Check = Callable[[Assertion, Answer], "tuple[bool, str]"]
# A preparation validates and normalizes (value, threshold) at load time; ValueError says what to write.
Prepare = Callable[[Any, "float | None"], "tuple[Any, float | None]"]


@dataclass(frozen=True)
class AssertionType:
    name: str  # what users type
    summary: str
    check: Check
    prepare: Prepare
    example: str  # what to write, shown when a value is wrong


def _short(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[:limit - 1] + "…")


# --- value preparation ---------------------------------------------------------------------------

def _text_value(value, threshold):
    # promptfoo accepts a non-empty string or a number (compared as its string form).
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        raise ValueError("needs a non-empty string `value`")
    return str(value), threshold


def _list_value(value, threshold):
    # promptfoo: a list, or one string of comma-separated values ("a, b, \"c, d\"").
    if isinstance(value, str):
        value = [v.strip() for v in next(csv.reader([value], skipinitialspace=True), [])]
    if not isinstance(value, list) or not value or any(isinstance(v, (dict, list)) or v in ("", None) for v in value):
        raise ValueError("needs a `value` that is a list of strings (or one comma-separated string)")
    return tuple(str(v) for v in value), threshold


def _equals_value(value, threshold):
    if value is None:
        raise ValueError("needs a `value`")
    # An object or list is compared with the answer parsed as JSON (promptfoo's deep equality).
    return (value if isinstance(value, (dict, list)) else str(value)), threshold


def _regex_value(value, threshold):
    value, _ = _text_value(value, threshold)
    try:
        # Python's `re`, searched anywhere in the answer like JavaScript's RegExp.test; the two
        # dialects agree on common patterns (JS-only syntax such as /pattern/flags is not accepted).
        re.compile(value)
    except re.error as e:
        raise ValueError(f"has an invalid regular expression {value!r}: {e}") from None
    return value, threshold


def _schema_value(value, threshold):
    """No value: any JSON. Else a JSON Schema: an object, or a string holding YAML/JSON (as promptfoo)."""
    if value is None or value == "":
        return None, threshold
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"has a JSON Schema `value` that is not YAML/JSON: {getattr(e, 'problem', e)}") from None
    if not isinstance(value, (dict, bool)):
        raise ValueError("needs a JSON Schema (an object) as `value`, or no value")
    try:
        validators.validator_for(value).check_schema(value)
    except SchemaError as e:
        raise ValueError(f"has an invalid JSON Schema: {e.message}") from None
    return value, threshold


def _number(threshold, name: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise ValueError(f"needs `threshold` ({name}) as a number >= 0")
    return threshold


def _levenshtein_value(value, threshold):
    if not isinstance(value, str):
        raise ValueError("needs the expected string as `value`")
    # promptfoo defaults the maximum distance to 5 (`threshold || 5`, so it also turns 0 into 5);
    # ours keeps an explicit 0, which then means an exact match.
    return value, 5 if threshold is None else _number(threshold, "the maximum edit distance")


def _latency_value(value, threshold):
    if threshold is None:
        raise ValueError("needs `threshold`: the maximum latency in milliseconds")
    return None, _number(threshold, "milliseconds")


def _no_value(value, threshold):
    return None, threshold


# --- checks --------------------------------------------------------------------------------------

def _equals(a: Assertion, answer: Answer):
    if isinstance(a.value, (dict, list)):
        try:
            parsed = json.loads(answer.text)
        except json.JSONDecodeError:
            return False, f"the answer {_short(answer.text)} is not JSON"
        return parsed == a.value, "the answer's JSON is equal" if parsed == a.value else \
            f"the answer's JSON {_short(json.dumps(parsed))} differs"
    same = answer.text == a.value
    return same, "the answer is exactly that" if same else f"the answer is {_short(answer.text)}"


def _found(holds: bool, what: str, answer: Answer) -> tuple[bool, str]:
    return holds, f"{what} in the answer" if holds else f"{what} not in the answer {_short(answer.text)}"


def _contains(a: Assertion, answer: Answer):
    return _found(a.value in answer.text, repr(a.value), answer)


def _icontains(a: Assertion, answer: Answer):
    return _found(a.value.lower() in answer.text.lower(), repr(a.value), answer)


def _any_all(fold: bool, need_all: bool) -> Check:
    def check(a: Assertion, answer: Answer):
        text = answer.text.lower() if fold else answer.text
        present = [v for v in a.value if (v.lower() if fold else v) in text]
        missing = [v for v in a.value if v not in present]
        if need_all:
            return not missing, "all in the answer" if not missing else \
                f"missing {', '.join(map(repr, missing))} in the answer {_short(answer.text)}"
        return bool(present), f"{present[0]!r} in the answer" if present else \
            f"none in the answer {_short(answer.text)}"
    return check


def _starts_with(a: Assertion, answer: Answer):
    # Like promptfoo, no whitespace is stripped: a leading space or newline makes it fail.
    holds = answer.text.startswith(a.value)
    return holds, "the answer starts with it" if holds else f"the answer starts {_short(answer.text[:40])}"


def _regex(a: Assertion, answer: Answer):
    m = re.search(a.value, answer.text)
    return (True, f"matched {_short(m.group(0))}") if m else (False, f"no match in the answer {_short(answer.text)}")


def _is_json(a: Assertion, answer: Answer):
    try:
        doc = json.loads(answer.text)
    except json.JSONDecodeError as e:
        return False, f"the answer is not JSON ({e.msg} at column {e.colno}): {_short(answer.text)}"
    if a.value is None:
        return True, "the answer is JSON"
    error = best_match(validators.validator_for(a.value)(a.value).iter_errors(doc))
    if error is None:
        return True, "the answer is JSON that the schema accepts"
    where = "/".join(map(str, error.absolute_path)) or "the top level"
    return False, f"the schema rejects the answer's JSON at {where}: {error.message}"


def levenshtein_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute one character) that turn `a` into `b`.

    A two-row dynamic programme: no Levenshtein package is among our dependencies, and answers are short.
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _levenshtein(a: Assertion, answer: Answer):
    distance = levenshtein_distance(answer.text, a.value)
    limit = a.threshold
    return distance <= limit, f"edit distance {distance} {'<=' if distance <= limit else '>'} {limit:g}"


def _latency(a: Assertion, answer: Answer):
    ms = answer.latency_s * 1000
    return ms <= a.threshold, f"latency {ms:.0f} ms {'<=' if ms <= a.threshold else '>'} {a.threshold:g} ms"


ASSERTION_TYPES: dict[str, AssertionType] = {t.name: t for t in (
    AssertionType("equals", "the answer is exactly the value (a JSON value: the answer's JSON equals it)",
                  _equals, _equals_value, "{type: equals, value: Paris}"),
    AssertionType("contains", "the answer contains the value", _contains, _text_value,
                  "{type: contains, value: Paris}"),
    AssertionType("icontains", "the answer contains the value, ignoring case", _icontains, _text_value,
                  "{type: icontains, value: paris}"),
    AssertionType("contains-any", "the answer contains one of the values", _any_all(False, False), _list_value,
                  "{type: contains-any, value: [Paris, Lyon]}"),
    AssertionType("contains-all", "the answer contains every value", _any_all(False, True), _list_value,
                  "{type: contains-all, value: [Paris, Seine]}"),
    AssertionType("icontains-any", "contains-any, ignoring case", _any_all(True, False), _list_value,
                  "{type: icontains-any, value: [paris, lyon]}"),
    AssertionType("icontains-all", "contains-all, ignoring case", _any_all(True, True), _list_value,
                  "{type: icontains-all, value: [paris, seine]}"),
    AssertionType("starts-with", "the answer starts with the value", _starts_with, _text_value,
                  "{type: starts-with, value: Paris}"),
    AssertionType("regex", "the regular expression matches somewhere in the answer", _regex, _regex_value,
                  "{type: regex, value: '\\b(18|19)\\d\\d\\b'}"),
    AssertionType("is-json", "the answer is JSON (and valid against the JSON Schema in value, if any)",
                  _is_json, _schema_value, "{type: is-json, value: {type: object, required: [city]}}"),
    AssertionType("levenshtein", "edit distance to the value <= threshold (default 5)",
                  _levenshtein, _levenshtein_value, "{type: levenshtein, value: Paris, threshold: 2}"),
    AssertionType("latency", "the answer took <= threshold milliseconds", _latency, _latency_value,
                  "{type: latency, threshold: 2000}"),
)}


def assertion_type(name: str) -> AssertionType:
    """The type registered under `name`, with or without the `not-` prefix; UnknownName lists them."""
    base = name[len(INVERSE_PREFIX):] if name.startswith(INVERSE_PREFIX) else name
    if base not in ASSERTION_TYPES:
        raise UnknownName("assertion type", name, list(ASSERTION_TYPES),
                          "each also as not-TYPE; model-graded and script assertions are not run by localserve")
    return ASSERTION_TYPES[base]


def make_assertion(raw: Mapping) -> Assertion:
    """An Assertion from a suite's `{type, value, threshold, weight}`; UnknownName or InputError if wrong."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        raise InputError("an assertion must be a mapping with a `type`", 'e.g. {type: icontains, value: "Paris"}')
    name = raw["type"]
    kind = assertion_type(name)
    if raw.get("transform") is not None:
        raise InputError(f"assertion {name!r} has a `transform`, which is JavaScript that localserve does not run",
                         "remove the transform and check the answer as it comes")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise InputError(f"assertion {name!r} has weight {weight!r}", "give a number >= 0 (0: reported, never fails)")
    try:
        value, threshold = kind.prepare(raw.get("value"), raw.get("threshold"))
    except ValueError as e:
        raise InputError(f"assertion {name!r} {e}", f"e.g. {kind.example}") from None
    return Assertion(name, value, threshold, float(weight))


def check(assertion: Assertion, answer: Answer) -> AssertionResult:
    """One assertion on one answer: passed, score 1 or 0, and a one-line reason."""
    kind = assertion_type(assertion.type)
    if answer.error is not None:
        return AssertionResult(assertion.type, False, 0.0, f"no answer: {answer.error}", assertion.weight)
    holds, fact = kind.check(assertion, answer)
    passed = holds != assertion.inverse
    subject = assertion.type if assertion.value is None else f"{assertion.type} {_describe(assertion)}"
    score = 1.0 if passed else 0.0
    # promptfoo: weight 0 makes an assertion a reported metric that cannot fail the case.
    if assertion.weight == 0:
        passed = True
    return AssertionResult(assertion.type, passed, score, f"{subject}: {fact}", assertion.weight)


def _describe(assertion: Assertion) -> str:
    value = assertion.value
    if isinstance(value, str):
        return _short(value, 60)
    if isinstance(value, tuple):
        return "[" + ", ".join(_short(v, 30) for v in value) + "]"
    return "with a schema" if assertion.base_type == "is-json" else _short(json.dumps(value), 60)


def grade(case: Case, answer: Answer) -> CaseResult:
    """Every assertion of `case` on `answer`."""
    return CaseResult(case.id, answer, tuple(check(a, answer) for a in case.assertions), critical=case.critical)
