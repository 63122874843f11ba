"""The parity proof: Ollama's Go TEMPLATE must build the same prompt as the model's own HF template.

For each conversation of the suite, the model's template renders with
`apply_chat_template(..., add_generation_prompt=True)` and the Go TEMPLATE renders with the real Go
text/template engine the way Ollama's chat handler would (including the Modelfile SYSTEM that
Ollama inserts when a conversation has none). The two must be byte-identical, or differ only in a
way the family documents and the check verifies:

- BOS: HF templates write the BOS token; llama.cpp adds it when tokenizing Ollama's prompt, so a
  Go TEMPLATE must not. Compared without it.
- trimming: some HF templates strip whitespace around message text; Go templates have no trim
  function. Verified by re-rendering the Go side with trimmed text: only padded text differs.
- tool JSON: Ollama prints tool schemas and call arguments with Go's encoding/json (compact, Go
  field order); HF uses Python's json.dumps. Verified by comparing the texts with every JSON value
  parsed: same values, different spacing/order.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .gotemplate import Conversation, GoTemplateError, render_many
from .hf import HFChat, load_hf_chat
from .setup import ChatSetup, bypassed_on_new_ollama, renders_tools

SYSTEM = "You are a concise assistant. Answer in one sentence."
USER_1 = "What is the capital of France?"
ASSISTANT_1 = "The capital of France is Paris."
USER_2 = "And how many people live there?"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TOOL_CALL_ID = "call00001"  # Mistral templates demand 9 alphanumeric characters


def _msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


@dataclass(frozen=True)
class Case:
    name: str
    messages: tuple[dict, ...]
    tools: tuple[dict, ...] | None = None


BASE_CASES = (
    Case("system_user", (_msg("system", SYSTEM), _msg("user", USER_1))),
    Case("no_system", (_msg("user", USER_1),)),
    Case("multi_turn", (_msg("system", SYSTEM), _msg("user", USER_1), _msg("assistant", ASSISTANT_1),
                        _msg("user", USER_2))),
    Case("multi_turn_no_system", (_msg("user", USER_1), _msg("assistant", ASSISTANT_1), _msg("user", USER_2))),
    Case("unicode", (_msg("user", "Grüße aus Köln! 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, עברית, ∑∫√ — “curly”."),)),
    Case("template_characters", (_msg("user", 'Literal {{ .Prompt }} and {% if x %}{# c #}, <b>&amp;</b>, '
                                              "$HOME, \"double\" 'single' back\\slash."),)),
    Case("padded_text", (_msg("user", "  text with surrounding spaces\n"),)),
)

TOOL_CASES = (
    Case("tools_offered", (_msg("user", "What is the weather in Paris?"),), (WEATHER_TOOL,)),
    Case("tool_call_and_result", (
        _msg("user", "What is the weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": TOOL_CALL_ID, "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": '{"temperature": 21, "condition": "sunny"}', "tool_call_id": TOOL_CALL_ID,
         "name": "get_weather"},
    ), (WEATHER_TOOL,)),
)


@dataclass(frozen=True)
class CaseResult:
    name: str
    hf_text: str | None
    go_text: str | None
    equal: bool
    tokens_equal: bool | None
    explanation: str | None = None
    skipped: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Identical text that also tokenizes identically (when a tokenizer is there to say), or a
        difference the family documents and the check verified, or a case the model's template refuses."""
        if self.error is not None:
            return False
        if self.equal:
            return self.tokens_equal is not False
        return self.skipped is not None or self.explanation is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "equal": self.equal, "tokens_equal": self.tokens_equal,
                "explanation": self.explanation, "skipped": self.skipped, "error": self.error,
                "hf_text": self.hf_text, "go_text": self.go_text}


@dataclass(frozen=True)
class ParityReport:
    model_dir: str
    family: str
    cases: tuple[CaseResult, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    def summary(self) -> str:
        lines = [f"template parity for {self.model_dir} (family {self.family}): "
                 f"{'OK' if self.ok else 'MISMATCH'}"]
        for c in self.cases:
            if c.error:
                lines.append(f"  ✗ {c.name}: {c.error}")
            elif c.skipped:
                lines.append(f"  - {c.name}: skipped ({c.skipped})")
            elif c.equal and c.tokens_equal is False:
                lines.append(f"  ✗ {c.name}: byte-identical text, but it tokenizes differently (a special token "
                             "written as text, or a BOS added twice)")
            elif c.equal:
                tok = "" if c.tokens_equal is None else ", tokens identical"
                lines.append(f"  ✓ {c.name}: byte-identical{tok}")
            elif c.explanation:
                lines.append(f"  ~ {c.name}: differs as documented: {c.explanation}")
            else:
                lines.append(f"  ✗ {c.name}: differs")
                lines.extend("      " + d for d in _diff(c.hf_text or "", c.go_text or ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "family": self.family, "model_dir": self.model_dir, "notes": list(self.notes),
                "cases": [c.to_json() for c in self.cases]}


def _diff(hf_text: str, go_text: str) -> list[str]:
    a = [repr(x) for x in hf_text.splitlines(keepends=True)]
    b = [repr(x) for x in go_text.splitlines(keepends=True)]
    out = list(difflib.unified_diff(a, b, "HF apply_chat_template", "Ollama Go TEMPLATE", lineterm="", n=1))
    return out[:60] + (["… (diff cut)"] if len(out) > 60 else [])


# ---- explanations of documented differences ------------------------------------------------

def canonical_json_text(text: str) -> str:
    """`text` with every embedded JSON object/array re-serialized canonically (sorted, compact)."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch in "{[\"":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                value, end = None, -1
            if end > i:
                if ch == '"' and _looks_like_json(value):  # a JSON string holding JSON (quoted tool results)
                    value = json.loads(value)
                out.append("\x00" + json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
                i = end
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _looks_like_json(s: object) -> bool:
    if not isinstance(s, str):
        return False
    s = s.strip()
    if not s or s[0] not in "{[":
        return False
    try:
        json.loads(s)
        return True
    except json.JSONDecodeError:
        return False


def _ollama_view(setup: ChatSetup, messages: list[dict]) -> list[dict]:
    """The messages Ollama's chat handler hands the template: the Modelfile SYSTEM goes first when
    the conversation has no system message of its own."""
    if setup.system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": setup.system}] + messages
    return messages


def ollama_prompt(setup: ChatSetup, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The prompt Ollama builds for /api/chat with this setup (TEMPLATE + Modelfile SYSTEM)."""
    from .gotemplate import render

    return render(setup.template, _ollama_view(setup, [dict(m) for m in messages]), tools)


def _trimmed(messages: list[dict]) -> list[dict]:
    out = copy.deepcopy(messages)
    for m in out:
        if isinstance(m.get("content"), str):
            m["content"] = m["content"].strip()
    return out


def _tokens_equal(hf: HFChat, setup: ChatSetup, hf_text: str, go_text: str) -> bool | None:
    tok = hf.tokenizer()
    if tok is None:
        return None
    hf_ids = tok(hf_text, add_special_tokens=False)["input_ids"]
    go_ids = tok(go_text, add_special_tokens=setup.bos_from_tokenizer)["input_ids"]
    return hf_ids == go_ids


def check_parity(model_dir: Path, setup: ChatSetup, cases: tuple[Case, ...] | None = None) -> ParityReport:
    """Render the suite both ways and compare; see the module docstring for what counts as equal.
    The model's side is its own chat template, or `setup.chat_template` when it has none."""
    import jinja2

    hf = load_hf_chat(Path(model_dir), require_template=setup.chat_template is None)
    if setup.chat_template is not None:  # the model has none: the chosen family's is what it will serve
        hf = hf.with_template(setup.chat_template)
    notes: list[str] = list(setup.notes)
    if cases is None:
        hf_tools = renders_tools(hf)
        cases = BASE_CASES + (TOOL_CASES if (setup.supports_tools or hf_tools) else ())
        if hf_tools and not setup.supports_tools:
            notes.append("the model's template renders tools but this TEMPLATE has no .Tools: tool calling is "
                         "lost on Ollama < 0.30, and Ollama ≥ 0.30 prefers the GGUF's own template")
    if missing := bypassed_on_new_ollama(hf, setup):
        notes.append(f"the model's own template advertises {', '.join(sorted(missing))} and this TEMPLATE does not: "
                     "Ollama ≥ 0.30 renders such a model with the GGUF's own Jinja template instead (unless the "
                     "server sets OLLAMA_GO_TEMPLATE=1); older servers use this TEMPLATE")
    if hf.tokenizer() is None:
        notes.append("no tokenizer files in the folder: compared text only (no token check)")
    if setup.system:
        notes.append(f"default system prompt carried as Modelfile SYSTEM: {setup.system!r}")

    hf_texts: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    jobs: list[tuple[str, Conversation]] = []
    job_keys: list[tuple[str, str]] = []
    for case in cases:
        msgs = [dict(m) for m in case.messages]
        try:
            hf_texts[case.name] = hf.render(msgs, list(case.tools) if case.tools else None)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            hf_texts[case.name] = None
            skipped[case.name] = f"the model's own template refuses it: {e}"
            continue
        view = _ollama_view(setup, msgs)
        tools = case.tools if case.tools and setup.supports_tools else None
        jobs.append((setup.template, Conversation(tuple(view), tools)))
        job_keys.append((case.name, "plain"))
        if setup.trims_content:
            jobs.append((setup.template, Conversation(tuple(_trimmed(view)), tools)))
            job_keys.append((case.name, "trimmed"))
    rendered = dict(zip(job_keys, render_many(jobs)))

    results: list[CaseResult] = []
    bos = hf.bos_token if setup.bos_from_tokenizer else None
    for case in cases:
        hf_text = hf_texts[case.name]
        if case.name in skipped:
            results.append(CaseResult(case.name, None, None, False, None, skipped=skipped[case.name]))
            continue
        go = rendered[(case.name, "plain")]
        if isinstance(go, GoTemplateError):
            results.append(CaseResult(case.name, hf_text, None, False, None, error=go.message))
            continue
        assert hf_text is not None
        hf_cmp = hf_text[len(bos):] if bos and hf_text.startswith(bos) and not go.startswith(bos) else hf_text
        equal = hf_cmp == go
        explanation = None
        if not equal:
            explanation = _explain(setup, hf_cmp, go, rendered.get((case.name, "trimmed")))
        tokens = _tokens_equal(hf, setup, hf_text, go)
        results.append(CaseResult(case.name, hf_text, go, equal, tokens, explanation=explanation))
    if bos and any(r.hf_text and r.hf_text.startswith(bos) for r in results):
        notes.append(f"BOS {bos!r} is written by the HF template and added by llama.cpp when tokenizing; "
                     "compared without it")
    return ParityReport(str(model_dir), setup.family, tuple(results), tuple(notes))


def _explain(setup: ChatSetup, hf_text: str, go_text: str, trimmed_go: Any) -> str | None:
    checks: list[tuple[str, Callable[[], bool]]] = []
    trimmed = trimmed_go if isinstance(trimmed_go, str) else None
    why_trim = ("the model's template strips whitespace around message text; Go templates cannot "
                "(verified: identical once the text is trimmed)")
    why_json = ("tool schemas/arguments are printed by Go encoding/json (compact, Go field order) where HF uses "
                "Python json.dumps (verified: same JSON values)")
    if trimmed is not None:
        checks.append((why_trim, lambda: trimmed == hf_text))
    if setup.json_differs:
        checks.append((why_json, lambda: canonical_json_text(hf_text) == canonical_json_text(go_text)))
        if trimmed is not None:
            checks.append((why_trim + "; " + why_json,
                           lambda: canonical_json_text(hf_text) == canonical_json_text(trimmed)))
    for why, ok in checks:
        if ok():
            return why
    return None
