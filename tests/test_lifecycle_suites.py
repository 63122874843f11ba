"""Evaluation suites: the formats users already have load into the same cases, and every assertion
type passes and fails on hand-made answers as promptfoo (or OpenAI evals) would judge them."""

from __future__ import annotations

import hashlib
import json

import pytest

from localserve.errors import InputError, UnknownName
from localserve.lifecycle.assertions import (ASSERTION_TYPES, Assertion, check, grade, levenshtein_distance,
                                             make_assertion)
from localserve.lifecycle.results import Answer
from localserve.lifecycle.suites import load_suite

QUESTIONS = ("What is the capital of France?", "Who wrote 'Dune'?")


def _answer(text: str, latency_s: float = 0.5, error: str | None = None) -> Answer:
    return Answer(text=text, latency_s=latency_s, error=error)


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


PROMPTFOO_YAML = """\
description: two facts
tests:
  - vars: {question: "What is the capital of France?"}
    assert:
      - {type: icontains, value: paris}
    metadata: {critical: true}
  - description: the author
    vars: {question: "Who wrote 'Dune'?"}
    assert:
      - {type: contains, value: Herbert}
"""


# --- formats -------------------------------------------------------------------------------------

def test_promptfoo_yaml_promptfoo_json_and_openai_evals_jsonl_give_the_same_messages(tmp_path):
    from_yaml = load_suite(_write(tmp_path, "suite.yaml", PROMPTFOO_YAML))
    import yaml
    from_json = load_suite(_write(tmp_path, "suite.json", json.dumps(yaml.safe_load(PROMPTFOO_YAML))))
    from_evals = load_suite(_write(tmp_path, "samples.jsonl", "\n".join([
        json.dumps({"input": [{"role": "user", "content": QUESTIONS[0]}], "ideal": "Paris"}),
        "",
        json.dumps({"input": QUESTIONS[1], "ideal": ["Herbert", "Frank Herbert"]}),
    ])))

    assert (from_yaml.format, from_json.format, from_evals.format) == ("promptfoo", "promptfoo", "openai-evals")
    expected = [({"role": "user", "content": q},) for q in QUESTIONS]
    for suite in (from_yaml, from_json, from_evals):
        assert [c.messages for c in suite.cases] == expected
        assert [c.id for c in suite.cases] == ["t1", "t2"]
    assert from_yaml.cases == from_json.cases
    assert from_yaml.name == "two facts" and from_evals.name == "samples"
    assert [c.critical for c in from_yaml.cases] == [True, False]
    assert from_yaml.cases[1].description == "the author"


def test_the_suite_sha256_is_the_files_own(tmp_path):
    path = _write(tmp_path, "suite.yaml", PROMPTFOO_YAML)
    assert load_suite(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_openai_evals_ideal_string_is_match_a_list_is_includes(tmp_path):
    suite = load_suite(_write(tmp_path, "s.jsonl", "\n".join([
        json.dumps({"input": "Capital of France?", "ideal": "Paris"}),
        json.dumps({"input": "Author of Dune?", "ideal": ["Herbert", "F. Herbert"], "critical": True}),
    ])))
    match, includes = suite.cases
    assert grade(match, _answer("Paris, on the Seine.")).passed
    assert not grade(match, _answer("It is Paris.")).passed  # Match: the answer must start with the ideal
    assert grade(includes, _answer("It was Frank Herbert.")).passed  # Includes: anywhere
    assert not grade(includes, _answer("It was frank herbert.")).passed  # case-sensitive, as evals
    assert (match.critical, includes.critical) == (False, True)


def test_a_probe_json_is_one_critical_icontains_case_from_the_file_or_its_folder(tmp_path):
    _write(tmp_path, "probe.json", json.dumps({"question": "Who built the Zorblax?", "expected": "Quintara"}))
    for path in (tmp_path / "probe.json", tmp_path):
        suite = load_suite(path)
        (case,) = suite.cases
        assert suite.format == "probe" and case.id == "probe" and case.critical
        assert case.messages == ({"role": "user", "content": "Who built the Zorblax?"},)
        assert grade(case, _answer("It was QUINTARA.")).passed
        assert not grade(case, _answer("I do not know.")).passed


# --- promptfoo semantics -------------------------------------------------------------------------

def test_default_test_vars_are_merged_under_the_tests_and_its_assertions_come_first(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", """\
prompts: ["{{greeting}}, {{question}}"]
defaultTest:
  vars: {greeting: Hello, question: default question}
  assert: [{type: latency, threshold: 2000}]
  metadata: {critical: true}
  options: {suffix: " Answer in one word."}
tests:
  - vars: {question: "Capital of France?"}
    assert: [{type: icontains, value: paris}]
  - vars: {greeting: Hi}
    metadata: {critical: false}
"""))
    first, second = suite.cases
    assert first.messages == ({"role": "user", "content": "Hello, Capital of France? Answer in one word."},)
    assert second.messages == ({"role": "user", "content": "Hi, default question Answer in one word."},)
    assert [a.type for a in first.assertions] == ["latency", "icontains"]
    assert [a.type for a in second.assertions] == ["latency"]
    assert (first.critical, second.critical) == (True, False)  # metadata merged key by key, the test's wins
    assert first.vars == {"greeting": "Hello", "question": "Capital of France?"}


def test_several_prompts_times_tests_make_one_case_per_pair(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", """\
prompts:
  - "Q: {{question}}"
  - '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{question}}"}]'
  - 'Reply to {{ question | dump }}'
tests:
  - vars: {question: 'Say "hi"'}
  - vars: {question: "Capital of France?"}
"""))
    assert [c.id for c in suite.cases] == ["t1/p1", "t1/p2", "t1/p3", "t2/p1", "t2/p2", "t2/p3"]
    text, chat, dumped = suite.cases[:3]
    assert text.messages == ({"role": "user", "content": 'Q: Say "hi"'},)
    # A JSON chat prompt becomes messages; a var with quotes does not break its JSON.
    assert chat.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": 'Say "hi"'})
    assert dumped.messages == ({"role": "user", "content": 'Reply to "Say \\"hi\\""'},)


def test_a_prompt_file_is_read_relative_to_the_suite_and_split_on_dashes(tmp_path):
    _write(tmp_path, "prompts.txt", "First: {{question}}\n---\nSecond: {{question}}\n")
    path = _write(tmp_path, "s.yaml", "prompts: [file://prompts.txt]\ntests: [{vars: {question: \"Why?\"}}]\n")
    suite = load_suite(path)
    assert [c.messages[0]["content"] for c in suite.cases] == ["First: Why?", "Second: Why?"]
    # The prompt file is part of the suite's identity.
    assert suite.sha256 != hashlib.sha256(path.read_bytes()).hexdigest()
    _write(tmp_path, "chat.yaml", "- {role: system, content: Be brief.}\n- {role: user, content: '{{question}}'}\n")
    _write(tmp_path, "s.yaml", "prompts: [file://chat.yaml]\ntests: [{vars: {question: 'Say \"hi\"'}}]\n")
    assert load_suite(path).cases[0].messages == ({"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": 'Say "hi"'})


def test_a_var_holding_a_list_of_strings_expands_into_one_case_each(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", """\
tests:
  - vars: {question: ["One?", "Two?"]}
    assert: [{type: not-contains, value: "{{question}}"}]
  - vars:
      messages: [{role: system, content: Be brief.}, {role: user, content: "Three?"}]
"""))
    assert [c.id for c in suite.cases] == ["t1.v1", "t1.v2", "t2"]
    assert [c.assertions[0].value for c in suite.cases[:2]] == ["One?", "Two?"]  # values rendered per case
    assert suite.cases[2].messages[1] == {"role": "user", "content": "Three?"}


def test_a_top_level_critical_marks_the_test_critical(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", "tests:\n  - {vars: {prompt: Hi}, critical: true}\n"
                                                  "  - {vars: {prompt: Ho}}\n"))
    assert [c.critical for c in suite.cases] == [True, False]


# --- every assertion type ------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

CASES = [  # (assertion, an answer that passes, an answer that fails)
    ({"type": "equals", "value": "Paris"}, "Paris", "Paris."),
    ({"type": "equals", "value": {"city": "Paris"}}, '{ "city": "Paris" }', '{"city": "Lyon"}'),
    ({"type": "contains", "value": "Paris"}, "It is Paris.", "It is paris."),
    ({"type": "icontains", "value": "PARIS"}, "It is paris.", "It is Lyon."),
    ({"type": "not-contains", "value": "Lyon"}, "It is Paris.", "It is Lyon."),
    ({"type": "not-icontains", "value": "lyon"}, "It is Paris.", "It is LYON."),
    ({"type": "contains-any", "value": "Paris, Lyon"}, "Lyon it is.", "Nice it is."),
    ({"type": "contains-all", "value": ["Paris", "Seine"]}, "Paris on the Seine", "Paris on the Loire"),
    ({"type": "icontains-any", "value": ["paris"]}, "PARIS", "Nice"),
    ({"type": "icontains-all", "value": ["paris", "seine"]}, "PARIS, SEINE", "PARIS"),
    ({"type": "starts-with", "value": "Paris"}, "Paris is the capital.", " Paris is the capital."),
    ({"type": "regex", "value": r"\b\d{4}\b"}, "Built in 1889.", "Built long ago."),
    ({"type": "not-regex", "value": r"\d"}, "No digits here.", "Room 101."),
    ({"type": "is-json"}, '{"a": 1}', "{a: 1}"),
    ({"type": "is-json", "value": SCHEMA}, '{"city": "Paris"}', '{"town": "Paris"}'),
    ({"type": "not-is-json"}, "plain text", "[1, 2]"),
    ({"type": "levenshtein", "value": "Paris", "threshold": 1}, "Pariss", "Parisss"),
    ({"type": "latency", "threshold": 500}, "", ""),  # latency: see _LATENCY below
]
_LATENCY = {"pass": 0.5, "fail": 0.501}  # seconds, against 500 ms: the boundary itself passes


@pytest.mark.parametrize("raw,passing,failing", CASES, ids=[f"{c[0]['type']}-{i}" for i, c in enumerate(CASES)])
def test_each_assertion_type_passes_and_fails_on_hand_made_answers(raw, passing, failing):
    assertion = make_assertion(raw)
    latency = raw["type"] == "latency"
    good = check(assertion, _answer(passing, _LATENCY["pass"] if latency else 0.1))
    bad = check(assertion, _answer(failing, _LATENCY["fail"] if latency else 0.1))
    assert (good.passed, good.score) == (True, 1.0), good.reason
    assert (bad.passed, bad.score) == (False, 0.0), bad.reason
    assert bad.type == raw["type"] and "\n" not in bad.reason


def test_every_registered_type_is_exercised_above():
    assert {c[0]["type"].removeprefix("not-") for c in CASES} == set(ASSERTION_TYPES)


def test_is_json_reports_where_the_schema_rejects_the_answer():
    result = check(make_assertion({"type": "is-json", "value": SCHEMA}), _answer('{"city": 7}'))
    assert not result.passed and "city" in result.reason and "string" in result.reason


def test_is_json_takes_a_schema_written_as_a_yaml_string():
    assertion = make_assertion({"type": "is-json", "value": "type: object\nrequired: [city]"})
    assert check(assertion, _answer('{"city": "Paris"}')).passed
    assert not check(assertion, _answer("[]")).passed


@pytest.mark.parametrize("answer,threshold,passes", [
    ("kitten", 2, False),  # "sitting": 3 edits
    ("kitten", 3, True),
    ("sittin", 3, True),
    ("sittingxx", 2, True),  # exactly at the threshold passes
    ("sittingxxx", 2, False),
])
def test_levenshtein_passes_up_to_and_including_the_threshold(answer, threshold, passes):
    assertion = make_assertion({"type": "levenshtein", "value": "sitting", "threshold": threshold})
    assert check(assertion, _answer(answer)).passed is passes


def test_levenshtein_distance_and_promptfoos_default_threshold_of_five():
    assert levenshtein_distance("kitten", "sitting") == 3
    assert levenshtein_distance("", "abc") == 3 and levenshtein_distance("abc", "abc") == 0
    assertion = make_assertion({"type": "levenshtein", "value": "abcdefghij"})
    assert assertion.threshold == 5
    assert check(assertion, _answer("abcde")).passed and not check(assertion, _answer("abcd")).passed


def test_a_weight_zero_assertion_is_reported_but_never_fails_the_case(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", """\
tests:
  - vars: {prompt: Hi}
    assert:
      - {type: contains, value: Hello, weight: 3}
      - {type: contains, value: never, weight: 0}
"""))
    result = grade(suite.cases[0], _answer("Hello there"))
    assert result.passed and result.score == 1.0
    assert [r.score for r in result.results] == [1.0, 0.0]


def test_an_engine_failure_fails_every_assertion_with_its_error(tmp_path):
    case = load_suite(_write(tmp_path, "s.yaml", PROMPTFOO_YAML)).cases[0]
    result = grade(case, _answer("", error="connection refused"))
    assert not result.passed and result.score == 0.0 and result.critical
    assert all(not r.passed and "connection refused" in r.reason for r in result.results)


# --- bad input: one line each, naming the file and what to do ------------------------------------

def _error(tmp_path, name: str, text: str, kind=InputError) -> str:
    with pytest.raises(kind) as e:
        load_suite(_write(tmp_path, name, text))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_an_unknown_assertion_type_names_the_file_the_test_and_the_valid_types(tmp_path):
    message = _error(tmp_path, "s.yaml", PROMPTFOO_YAML + "  - vars: {question: x}\n"
                                                          "    assert: [{type: llm-rubric, value: nice}]\n",
                     UnknownName)
    assert "s.yaml, test 3 (line 11), assert 1" in message
    assert "'llm-rubric'" in message and "icontains" in message and "levenshtein" in message


def test_malformed_yaml_names_its_line(tmp_path):
    message = _error(tmp_path, "s.yaml", "tests:\n  - vars: {question: x}\n     assert: []\n")
    assert "s.yaml:3:" in message and "not valid YAML" in message
    message = _error(tmp_path, "s.yaml", "tests:\n  - vars:\n      question: \"x\n\n")
    assert "quoted scalar that starts at line 3" in message


def test_a_jsonl_line_that_is_not_json_names_its_line_number(tmp_path):
    message = _error(tmp_path, "s.jsonl", json.dumps({"input": "a", "ideal": "b"}) + "\n\n{input: 'a'}\n")
    assert "s.jsonl:3: not JSON" in message and "one JSON object" in message


def test_a_missing_var_in_a_prompt_names_the_test_the_prompt_and_the_var(tmp_path):
    message = _error(tmp_path, "s.yaml", "prompts: ['{{ questoin }}']\ntests:\n  - vars: {question: x}\n")
    assert "s.yaml, test 1 (line 3), prompt 1 uses {{ questoin }}" in message and "vars" in message


def test_a_prompt_cannot_reach_python_internals(tmp_path):
    message = _error(tmp_path, "s.yaml", "prompts: ['{{ q.__class__.__mro__ }}']\ntests: [{vars: {q: x}}]\n")
    assert "test 1" in message


@pytest.mark.parametrize("text,expected", [
    ("tests: [{vars: {prompt: x}, assert: [{type: regex, value: '(unclosed'}]}]", "invalid regular expression"),
    ("tests: [{vars: {prompt: x}, assert: [{type: latency}]}]", "milliseconds"),
    ("tests: [{vars: {prompt: x}, assert: [{type: is-json, value: {type: 12}}]}]", "invalid JSON Schema"),
    ("tests: [{vars: {prompt: x}, assert: [{type: contains}]}]", "non-empty string"),
    ("tests: [{vars: {prompt: x}, threshold: 0.5}]", "threshold"),
    ("tests: [{vars: {other: x}}]", "has no prompt"),
    ("tests: []", "non-empty list"),
])
def test_bad_values_fail_at_load_time_with_one_line(tmp_path, text, expected):
    message = _error(tmp_path, "s.yaml", text)
    assert "s.yaml" in message and expected in message


def test_a_response_format_asks_every_case_of_a_test_for_that_schema(tmp_path):
    suite = load_suite(_write(tmp_path, "s.yaml", """\
defaultTest:
  options:
    response_format: {type: json_schema, json_schema: {name: city, schema: {type: object, required: [city]}}}
tests:
  - vars: {question: ["Capital of France?", "Capital of Italy?"]}
    assert: [{type: is-json}]
  - vars: {question: Free text}
    options: {response_format: {type: text}}
"""))
    schemas = [c.json_schema for c in suite.cases]
    assert schemas == [{"type": "object", "required": ["city"]}] * 2 + [None]


@pytest.mark.parametrize("response_format, expected", [
    ("{type: json_schema, json_schema: {schema: {type: 12}}}", "options.response_format holds an invalid JSON Schema"),
    ("{type: json_schema}", "options.response_format must be {type: json_schema, json_schema: {schema: ...}}"),
    ("json", "options.response_format must be"),
])
def test_a_bad_response_format_fails_at_load_time(tmp_path, response_format, expected):
    text = f"tests: [{{vars: {{prompt: x}}, options: {{response_format: {response_format}}}}}]"
    message = _error(tmp_path, "s.yaml", text)
    assert "s.yaml, test 1" in message and expected in message


def test_a_file_that_is_no_suite_says_which_formats_are(tmp_path):
    assert "promptfoo" in _error(tmp_path, "s.csv", "a,b\n")
    with pytest.raises(InputError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")


def test_an_assertion_is_immutable_and_serializable():
    assertion = make_assertion({"type": "not-icontains", "value": "x", "weight": 2})
    assert assertion == Assertion("not-icontains", "x", None, 2.0)
    assert (assertion.base_type, assertion.inverse) == ("icontains", True)
    assert json.loads(json.dumps(assertion.to_json()))["type"] == "not-icontains"


def test_the_example_each_type_shows_on_a_bad_value_is_itself_valid():
    import yaml
    for kind in ASSERTION_TYPES.values():
        assert make_assertion(yaml.safe_load(kind.example)).type == kind.name
