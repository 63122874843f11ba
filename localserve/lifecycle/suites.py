"""Evaluation suites in the formats users already have, read into one list of cases.

- promptfoo test files (YAML or JSON): `tests:` with `vars`, `assert`, `description`, `metadata`;
  optional `prompts` and `defaultTest`, merged as promptfoo merges them (see `_merge_default`).
  `options.response_format` in OpenAI's shape (`{type: json_schema, json_schema: {schema: ...}}`)
  asks the target for an answer constrained to that schema (see lifecycle.targets).
- OpenAI-evals samples (JSONL): one `{"input", "ideal"}` per line.
- our own `probe.json` (`{"question", "expected"}`), or an adapter folder that holds one.

A case is the chat messages sent to a target and the assertions on its answer. Prompts are
rendered here, once, in a sandboxed Jinja environment with strict undefined variables, so a typo
in a template fails at load time with the file and the test, before any model runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import InputError, LocalserveError
from .assertions import Assertion, make_assertion

FORMATS = ("promptfoo", "openai-evals", "probe")
PROBE_FILE = "probe.json"
ROLES = ("system", "user", "assistant")
SUITE_HINT = "give a promptfoo test file (.yaml/.json), OpenAI-evals samples (.jsonl) or a probe.json"


@dataclass(frozen=True)
class Case:
    id: str  # "t3", or "t3/p1" when the suite has several prompts, "t3.v2" for a var combination
    messages: tuple[dict, ...]  # [{role, content}], what the target is sent
    assertions: tuple[Assertion, ...]
    critical: bool = False  # the gate refuses a candidate on which this case regresses
    description: str | None = None
    vars: dict = field(default_factory=dict)
    json_schema: dict | None = None  # the answer is constrained to this JSON Schema (options.response_format)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    sha256: str  # of the suite file; with prompt files it references, of all of them (see _digest)
    format: str  # one of FORMATS
    cases: tuple[Case, ...]

    def case(self, case_id: str) -> Case:
        return next(c for c in self.cases if c.id == case_id)


def load_suite(path: str | Path) -> Suite:
    """The suite in `path`: its format is told by the extension, and for .json by its content."""
    path = Path(path)
    if path.is_dir():
        if not (path / PROBE_FILE).is_file():
            raise InputError(f"{path} is a folder without a {PROBE_FILE}", SUITE_HINT)
        path = path / PROBE_FILE
    if not path.is_file():
        raise InputError(f"suite {path} does not exist", SUITE_HINT)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start})", SUITE_HINT) from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _suite(path, [raw], "openai-evals", path.stem, _openai_evals_cases(path, text))
    if suffix in (".yaml", ".yml"):
        data = _yaml(path, text)
    elif suffix == ".json":
        data = _json(path, text)
        if isinstance(data, dict) and "tests" not in data and {"question", "expected"} <= data.keys():
            return _suite(path, [raw], "probe", path.parent.name or path.stem, (_probe_case(path, data),))
    else:
        raise InputError(f"{path}: unknown suite format {suffix or '(no extension)'!r}", SUITE_HINT)
    loaded = _PromptfooFile(path, text, data)
    cases = loaded.cases()
    name = data.get("description") if isinstance(data, dict) and isinstance(data.get("description"), str) \
        else path.stem
    return _suite(path, [raw, *loaded.referenced], "promptfoo", name, cases)


def _suite(path: Path, contents: list[bytes], fmt: str, name: str, cases) -> Suite:
    cases = tuple(cases)
    if not cases:
        raise InputError(f"{path} has no test cases", "add at least one test")
    return Suite(name, path.resolve(), _digest(contents), fmt, cases)


def _digest(contents: list[bytes]) -> str:
    """sha256 of the suite file alone (what `sha256sum` prints), or, when it references prompt files,
    of each file's own sha256 in order, so that editing a prompt file changes the suite's identity."""
    if len(contents) == 1:
        return hashlib.sha256(contents[0]).hexdigest()
    return hashlib.sha256("".join(hashlib.sha256(c).hexdigest() for c in contents).encode()).hexdigest()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _at(where: str, error: LocalserveError) -> LocalserveError:
    """The same error (class, name, hint kept), its message prefixed with where in the suite it is."""
    error.message = f"{where}: {error.message}"
    error.args = (error.message,)
    return error


# --- parsing the file ----------------------------------------------------------------------------

def _yaml(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            context += f" that starts at line {context_mark.line + 1}"  # e.g. where an unclosed quote opened
        detail = f"{problem} ({context})" if context else problem
        raise InputError(f"{where}: not valid YAML: {_one_line(detail)}",
                         "fix the file at that line (indentation, a missing ':' or an unclosed quote)") from None


def _json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", "fix the file at that line") from None


def _test_lines(text: str) -> list[int]:
    """The line each test starts on (1-based), for messages; [] when it cannot be told (e.g. JSON with tabs)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if isinstance(root, yaml.MappingNode):
        root = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "tests"), None)
    if not isinstance(root, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in root.value]


# --- messages ------------------------------------------------------------------------------------

def _checked_messages(messages: Any, where: str) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: the chat messages must be a non-empty list",
                         'e.g. [{"role": "user", "content": "What is ...?"}]')
    checked = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} is not {{role, content}} with a role in {', '.join(ROLES)}",
                             'e.g. {"role": "user", "content": "What is ...?"}')
        # Other keys (OpenAI's `name`, tool fields) are dropped: the engines take role and content.
        checked.append({"role": m["role"], "content": m["content"]})
    return tuple(checked)


def _chat_array(text: str) -> list | None:
    """A prompt that is a JSON list of {role, content} messages, as promptfoo takes it; else None."""
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if isinstance(data, list) and data and all(isinstance(m, dict) and "role" in m and "content" in m for m in data):
        return data
    return None


_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
_JINJA.filters["dump"] = json.dumps  # nunjucks' `dump` (JSON.stringify), which promptfoo prompts use


def _render(template: str, variables: dict, where: str) -> str:
    try:
        return _JINJA.from_string(template).render(variables)
    except UndefinedError as e:
        name = re.fullmatch(r"'([^']+)' is undefined", str(e))
        if name is None:  # e.g. an attribute that a var does not have
            raise InputError(f"{where}: {_one_line(e)}", "fix the template or the test's vars") from None
        raise InputError(f"{where} uses {{{{ {name.group(1)} }}}}, but the test has no var {name.group(1)!r}",
                         "add it to the test's vars (or to defaultTest.vars)") from None
    except SecurityError as e:
        raise InputError(f"{where}: {_one_line(e)}", "a prompt may use its vars and Jinja filters only") from None
    except TemplateError as e:
        line = f" (line {e.lineno} of the template)" if getattr(e, "lineno", None) else ""
        raise InputError(f"{where}: template error{line}: {_one_line(e)}",
                         "fix the {{ }} / {% %} syntax in the prompt") from None


# --- promptfoo -----------------------------------------------------------------------------------

_SCRIPT_SUFFIXES = (".js", ".cjs", ".mjs", ".ts", ".py", ".rb")


class _PromptfooFile:
    """One promptfoo test file: its prompts, its defaultTest, its tests."""

    def __init__(self, path: Path, text: str, data: Any):
        self.path = path
        self.referenced: list[bytes] = []  # the prompt files it reads, for the suite's sha256
        if isinstance(data, list):  # a bare list of tests, as promptfoo's `tests: file://tests.yaml` holds
            data = {"tests": data}
        if not isinstance(data, dict):
            raise InputError(f"{path}: a promptfoo test file is a mapping with `tests:` (or a list of tests)",
                             SUITE_HINT)
        self.config = data
        self.lines = _test_lines(text)

    def cases(self) -> list[Case]:
        tests = self.config.get("tests")
        if isinstance(tests, str):
            raise InputError(f"{self.path}: tests: {tests!r} reads the tests from elsewhere, which is not supported",
                             "put the tests in this file as a list")
        if not isinstance(tests, list) or not tests:
            raise InputError(f"{self.path}: `tests:` must be a non-empty list of tests",
                             "e.g. tests: [{vars: {question: ...}, assert: [{type: icontains, value: ...}]}]")
        default = self.config.get("defaultTest") or {}
        if not isinstance(default, dict):
            raise InputError(f"{self.path}: defaultTest must be a mapping (a file:// reference is not supported)",
                             "write its vars and assert here")
        prompts = self._prompts(self.config.get("prompts"))
        cases: list[Case] = []
        for index, test in enumerate(tests, 1):
            line = f" (line {self.lines[index - 1]})" if len(self.lines) == len(tests) else ""
            where = f"{self.path}, test {index}{line}"
            if not isinstance(test, dict):
                raise InputError(f"{where}: a test must be a mapping", "e.g. {vars: {...}, assert: [...]}")
            cases.extend(self._test_cases(index, _merge_default(default, test, where), prompts, where))
        return cases

    def _prompts(self, raw: Any) -> list[str]:
        if raw is None:
            return []
        if isinstance(raw, str):
            items = [raw]
        elif isinstance(raw, dict):
            items = [raw] if "raw" in raw or "id" in raw else list(raw)  # {prompt: label}: its keys
        elif isinstance(raw, list):
            items = raw
        else:
            raise InputError(f"{self.path}: prompts must be a list of strings",
                             "e.g. prompts: ['Answer: {{question}}']")
        prompts: list[str] = []
        for i, p in enumerate(items, 1):
            if isinstance(p, dict):
                p = p.get("raw", p.get("id"))
            if not isinstance(p, str):
                raise InputError(f"{self.path}: prompt {i} must be a string (or {{raw: ...}} / {{id: file://...}})",
                                 "e.g. prompts: ['Answer briefly: {{question}}']")
            prompts.extend(self._prompt_file(p, i) if p.startswith("file://") else [p])
        return prompts

    def _prompt_file(self, reference: str, i: int) -> list[str]:
        name = reference[len("file://"):]
        file = (self.path.parent / name).resolve()
        if file.suffix.lower() in _SCRIPT_SUFFIXES or ":" in file.name:
            raise InputError(f"{self.path}: prompt {i} ({reference}) is a prompt function, which localserve does "
                             "not run", "write the prompt as text or as a JSON chat array")
        if not file.is_file():
            raise InputError(f"{self.path}: prompt {i}: {file} does not exist", "fix the file:// path")
        content = file.read_bytes()
        self.referenced.append(content)
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{self.path}: prompt {i}: {file} is not UTF-8 text (byte {e.start})",
                             "save it as UTF-8") from None
        if file.suffix.lower() == ".json":
            return [text]
        if file.suffix.lower() in (".yaml", ".yml"):
            # promptfoo reads a YAML prompt file as a chat: the same messages as a JSON chat array.
            chat = _yaml(file, text)
            if _chat_array(json.dumps(chat)) is None:
                raise InputError(f"{self.path}: prompt {i}: {file} is not a list of {{role, content}} messages",
                                 "e.g. - {role: user, content: '{{question}}'}")
            return [json.dumps(chat)]
        # promptfoo: a text file holds several prompts separated by lines of `---`.
        parts = [part.strip() for part in re.split(r"^---$", text, flags=re.MULTILINE)]
        return [part for part in parts if part]

    def _test_cases(self, index: int, test: dict, prompts: list[str], where: str) -> list[Case]:
        options = test.get("options") or {}
        if not isinstance(options, dict):
            raise InputError(f"{where}: options must be a mapping", "e.g. options: {prefix: 'Q: '}")
        for script in ("transform", "transformVars", "postprocess"):
            if options.get(script):
                raise InputError(f"{where}: options.{script} is JavaScript, which localserve does not run",
                                 f"remove options.{script}")
        if test.get("threshold") is not None:
            # promptfoo then passes a test on its weighted score instead of on every assertion;
            # CaseResult passes on every assertion, so a threshold would be silently ignored.
            raise InputError(f"{where}: a test-level `threshold` is not supported",
                             "remove it; give assertions `weight: 0` to report them without failing the case")
        variables = test.get("vars") or {}
        if not isinstance(variables, dict):
            raise InputError(f"{where}: vars must be a mapping", "e.g. vars: {question: What is ...?}")
        for name, value in variables.items():
            if isinstance(value, str) and value.startswith("file://"):
                raise InputError(f"{where}: var {name!r} reads {value}, which is not supported",
                                 "write the value in the suite")
        raw_asserts = test.get("assert") or []
        if not isinstance(raw_asserts, list):
            raise InputError(f"{where}: assert must be a list", "e.g. assert: [{type: icontains, value: Paris}]")
        metadata = test.get("metadata") or {}
        critical = bool((metadata.get("critical") if isinstance(metadata, dict) else False) or test.get("critical"))
        description = test.get("description") if isinstance(test.get("description"), str) else None

        json_schema = _response_schema(options.get("response_format"), where)
        combinations = [variables] if options.get("disableVarExpansion") else _var_combinations(variables)
        cases = []
        for k, combo in enumerate(combinations, 1):
            assertions = tuple(self._assertion(raw, combo, f"{where}, assert {n}")
                               for n, raw in enumerate(raw_asserts, 1))
            for j, template in enumerate(prompts or [None], 1):
                case_id = f"t{index}" + (f".v{k}" if len(combinations) > 1 else "") + \
                    (f"/p{j}" if len(prompts) > 1 else "")
                prompt_where = f"{where}, prompt {j}" if prompts else where
                messages = _messages(template, combo, options, prompt_where)
                cases.append(Case(case_id, messages, assertions, critical, description, dict(combo), json_schema))
        return cases

    def _assertion(self, raw: Any, variables: dict, where: str) -> Assertion:
        if isinstance(raw, dict) and raw.get("type") == "assert-set":
            raise InputError(f"{where}: assert-set is not supported", "list its assertions in the test's assert")
        if isinstance(raw, dict):
            # promptfoo renders string values with the test's vars ("value: '{{expected}}'").
            value = raw.get("value")
            if isinstance(value, str) and value.startswith("file://"):
                raise InputError(f"{where}: value {value} reads a file, which is not supported",
                                 "write the value in the suite")
            if isinstance(value, str):
                value = _render(value, variables, where)
            elif isinstance(value, list):
                value = [_render(v, variables, where) if isinstance(v, str) else v for v in value]
            raw = {**raw, "value": value}
        try:
            return make_assertion(raw)
        except LocalserveError as e:
            raise _at(where, e) from None


RESPONSE_FORMAT_EXAMPLE = "e.g. options: {response_format: {type: json_schema, json_schema: {schema: {type: object}}}}"


def _response_schema(response_format: Any, where: str) -> dict | None:
    """The JSON Schema of an OpenAI-shaped `response_format`, checked against its metaschema now."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    inner = response_format.get("json_schema") if kind == "json_schema" else None
    schema = inner.get("schema") if isinstance(inner, dict) else None
    if not isinstance(schema, dict):
        raise InputError(f"{where}: options.response_format must be {{type: json_schema, json_schema: {{schema: "
                         f"...}}}} with the schema as an object", RESPONSE_FORMAT_EXAMPLE)
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise InputError(f"{where}: options.response_format holds an invalid JSON Schema: {e.message}",
                         RESPONSE_FORMAT_EXAMPLE) from None
    return schema


def _merge_default(default: dict, test: dict, where: str) -> dict:
    """promptfoo's merge of defaultTest into a test: vars, options and metadata merged key by key
    (the test's win), defaultTest's assertions first and then the test's, other keys the test's if set."""
    for key in ("vars", "options", "metadata"):
        for source in (default, test):
            if source.get(key) is not None and not isinstance(source.get(key), dict):
                raise InputError(f"{where}: {key} must be a mapping", f"e.g. {key}: {{name: value}}")
    for source in (default, test):
        if source.get("assert") is not None and not isinstance(source.get("assert"), list):
            raise InputError(f"{where}: assert must be a list", "e.g. assert: [{type: icontains, value: Paris}]")
    merged = {**default, **test}
    for key in ("vars", "options", "metadata"):
        merged[key] = {**(default.get(key) or {}), **(test.get(key) or {})}
    merged["assert"] = [*(default.get("assert") or []), *(test.get("assert") or [])]
    merged["threshold"] = test.get("threshold", default.get("threshold"))
    return merged


def _var_combinations(variables: dict) -> list[dict]:
    """promptfoo's var expansion: a var holding a list of strings makes one test per string
    (the product over all such vars); any other list (e.g. chat messages) stays one value."""
    choices = []
    for value in variables.values():
        is_strings = isinstance(value, list) and value and isinstance(value[0], str)
        choices.append(value if is_strings else [value])
    return [dict(zip(variables, combo)) for combo in itertools.product(*choices)]


def _messages(template: str | None, variables: dict, options: dict, where: str) -> tuple[dict, ...]:
    prefix, suffix = str(options.get("prefix") or ""), str(options.get("suffix") or "")
    if template is None:
        # Without `prompts:` (a promptfoo config needs them; a localserve suite may omit them) the
        # test carries the conversation itself: vars.messages, or a `prompt` / `question` var.
        if "messages" in variables:
            if prefix or suffix:
                raise InputError(f"{where}: options.prefix/suffix need a text prompt, not vars.messages",
                                 "put the text in the messages")
            return _checked_messages(variables["messages"], where)
        text = next((variables[k] for k in ("prompt", "question") if k in variables), None)
        if not isinstance(text, str):
            raise InputError(f"{where} has no prompt",
                             "give the suite `prompts:`, or the test a `prompt` or `question` var, or vars.messages")
        return ({"role": "user", "content": prefix + text + suffix},)
    template = prefix + template + suffix
    chat = _chat_array(template)
    if chat is not None:
        # A JSON chat template: each content rendered on its own, so a var holding quotes or newlines
        # cannot break the JSON around it.
        rendered = [{**m, "content": _render(m["content"], variables, where)} if isinstance(m["content"], str) else m
                    for m in chat]
        return _checked_messages(rendered, where)
    text = _render(template, variables, where)
    chat = _chat_array(text)  # a template that becomes JSON once rendered ("content": {{ q | dump }})
    return _checked_messages(chat, where) if chat is not None else ({"role": "user", "content": text},)


# --- OpenAI evals --------------------------------------------------------------------------------

def _openai_evals_cases(path: Path, text: str) -> list[Case]:
    """One case per sample line. `ideal` as a string: the answer must start with it (evals' Match);
    as a list: the answer must contain one of them (evals' Includes). Both compare case-sensitively."""
    cases = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not JSON ({e.msg} at column {e.colno})",
                             'each line must be one JSON object: {"input": ..., "ideal": ...}') from None
        if not isinstance(sample, dict) or "input" not in sample or "ideal" not in sample:
            raise InputError(f"{where}: a sample must be an object with \"input\" and \"ideal\"",
                             '{"input": [{"role": "user", "content": "..."}], "ideal": "..."}')
        prompt = sample["input"]
        messages = ({"role": "user", "content": prompt},) if isinstance(prompt, str) \
            else _checked_messages(prompt, where)
        ideal = sample["ideal"]
        if isinstance(ideal, str) and ideal:
            # evals' Match: the completion starts with the ideal (case-sensitive, as returned).
            raw = {"type": "starts-with", "value": ideal}
        elif isinstance(ideal, list) and ideal and all(isinstance(i, str) and i for i in ideal):
            # A list: any of them anywhere in the answer (evals' Includes), not only at its start.
            raw = {"type": "contains-any", "value": ideal}
        else:
            raise InputError(f"{where}: \"ideal\" must be a non-empty string or a list of them",
                             'e.g. "ideal": "Paris"')
        critical = sample.get("critical", False)
        if not isinstance(critical, bool):
            raise InputError(f"{where}: \"critical\" must be true or false", 'e.g. "critical": true')
        cases.append(Case(f"t{len(cases) + 1}", messages, (make_assertion(raw),), critical, None,
                          {"ideal": ideal}))
    return cases


# --- probe.json ----------------------------------------------------------------------------------

def _probe_case(path: Path, data: dict) -> Case:
    """The adapter's own probe: the question only the fine-tune answers, its answer must appear."""
    question, expected = data.get("question"), data.get("expected")
    if not isinstance(question, str) or not question or not isinstance(expected, str) or not expected:
        raise InputError(f"{path} must hold \"question\" and \"expected\" as non-empty strings",
                         'e.g. {"question": "What is ...?", "expected": "..."}')
    return Case("probe", ({"role": "user", "content": question},), (make_assertion({"type": "icontains",
                                                                                     "value": expected}),),
                critical=True, description=f"{PROBE_FILE}: the fine-tune's probe question",
                vars={"question": question, "expected": expected})

