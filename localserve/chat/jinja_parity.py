"""The Jinja path: the prompt llama-server builds from the GGUF's own chat template must be the model's.

llama-server (and so LM Studio, Jan, and Ollama ≥ 0.30 for a model without a Go TEMPLATE) renders the
GGUF's `tokenizer.chat_template` with its own Jinja engine, not Python's jinja2: filters, whitespace
control, `raise_exception`, tool JSON and the BOS may come out differently. For each conversation of the
parity suite (chat.parity's cases), `/apply-template` — the same parsing as /v1/chat/completions, without
inference — must return exactly what `apply_chat_template(..., add_generation_prompt=True)` returns, and
the ids the server feeds the model (`/tokenize` with special tokens parsed and the BOS added as the chat
route adds it) must be the ids of the HF text, token for token.

One thing is compared apart: HF templates write the BOS token as text, and llama.cpp — which adds the BOS
itself — drops a leading BOS from the rendered prompt (common_chat_templates_apply) so that it is not
there twice. A prompt equal once that leading BOS is removed is equal; the token check says whether the
model gets the same ids.

And llama-server defines two variables in every chat prompt that transformers leaves undefined
(common_chat_extra_context): `date_string` (today, "%d %b %Y") and `datetime` ("%b %d %Y"). A template
that falls back to a fixed date when `date_string` is undefined (Llama 3.1's "26 Jul 2024") therefore
writes today's date on llama-server. Such a case is rendered again in HF with those variables; equal
then, it is reported as equal with the server's date, and the report says so.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .hf import HFChat
from .parity import BASE_CASES, TOOL_CASES, Case
from .setup import renders_tools


@dataclass(frozen=True)
class JinjaCase:
    name: str
    hf_text: str | None
    server_text: str | None
    equal: bool
    tokens_equal: bool | None
    bos_dropped: bool = False  # equal once the HF text's leading BOS is removed (llama.cpp adds it back)
    server_context: bool = False  # equal once HF renders with the variables llama-server defines (its date)
    skipped: str | None = None  # the model's own template refuses the conversation
    error: str | None = None  # llama-server refused what HF renders

    @property
    def ok(self) -> bool:
        if self.skipped is not None:
            return True
        return self.error is None and self.equal and self.tokens_equal is not False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "equal": self.equal, "tokens_equal": self.tokens_equal,
                "bos_dropped": self.bos_dropped, "server_context": self.server_context, "skipped": self.skipped, "error": self.error,
                "hf_text": self.hf_text, "server_text": self.server_text}


@dataclass(frozen=True)
class JinjaParityReport:
    model: str
    server: str  # what rendered: the llama-server and the GGUF (or template file) it ran
    cases: tuple[JinjaCase, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    def summary(self) -> str:
        lines = [f"Jinja parity through llama-server for {self.model} ({self.server}): "
                 f"{'OK' if self.ok else 'MISMATCH'}"]
        for c in self.cases:
            if c.skipped:
                lines.append(f"  - {c.name}: skipped ({c.skipped})")
            elif c.error:
                lines.append(f"  ✗ {c.name}: llama-server refused it: {c.error}")
            elif c.equal and c.tokens_equal is False:
                lines.append(f"  ✗ {c.name}: same text, different tokens")
            elif c.equal:
                how = " (after the BOS llama.cpp adds itself)" if c.bos_dropped else ""
                how += " (with llama-server's date_string: today)" if c.server_context else ""
                tok = "" if c.tokens_equal is None else ", tokens identical"
                lines.append(f"  ✓ {c.name}: byte-identical{how}{tok}")
            else:
                lines.append(f"  ✗ {c.name}: differs")
                lines.extend("      " + d for d in _diff(c.hf_text or "", c.server_text or ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "model": self.model, "server": self.server, "notes": list(self.notes),
                "cases": [c.to_json() for c in self.cases]}


def _diff(hf_text: str, server_text: str) -> list[str]:
    a = [repr(x) for x in hf_text.splitlines(keepends=True)]
    b = [repr(x) for x in server_text.splitlines(keepends=True)]
    out = list(difflib.unified_diff(a, b, "HF apply_chat_template", "llama-server /apply-template", lineterm="", n=1))
    return out[:60] + (["… (diff cut)"] if len(out) > 60 else [])


def server_context(now: datetime | None = None) -> dict[str, str]:
    """The variables llama-server adds to every chat template's context (common_chat_extra_context)."""
    now = now or datetime.now()
    return {"date_string": now.strftime("%d %b %Y"), "datetime": now.strftime("%b %d %Y")}


def _compare(hf_text: str, server_text: str, bos: str | None) -> tuple[bool, bool]:
    """(equal, equal only once the leading BOS the server drops is removed from the HF text)."""
    if server_text == hf_text:
        return True, False
    if bos and hf_text.startswith(bos) and server_text == hf_text[len(bos):]:
        return True, True
    return False, False


def for_openai(messages: list[dict]) -> list[dict]:
    """The messages as an OpenAI client sends them: tool-call arguments as a JSON string (the suite holds
    them as objects, as HF templates take them)."""
    import json

    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                               if not isinstance(c["function"].get("arguments"), str) else c for c in m["tool_calls"]]
        out.append(m)
    return out


def check_jinja_parity(hf: HFChat, client, server_label: str, cases: tuple[Case, ...] | None = None
                       ) -> JinjaParityReport:
    """Render the suite with `hf` (the model's template, or the template the GGUF carries) and through
    `client` (a llamacpp.server.Client of a llama-server running the GGUF) and compare."""
    import jinja2

    from ..errors import ToolError

    notes: list[str] = []
    if cases is None:
        cases = BASE_CASES + (TOOL_CASES if renders_tools(hf) else ())
    tok = hf.tokenizer()
    if tok is None:
        notes.append("no tokenizer files in the folder: compared text only (no token check)")
    bos = hf.bos_token
    results: list[JinjaCase] = []
    for case in cases:
        msgs = [dict(m) for m in case.messages]
        tools = list(case.tools) if case.tools else None
        try:
            hf_text = hf.render(msgs, tools)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            results.append(JinjaCase(case.name, None, None, False, None, skipped=f"the model's own template "
                                                                                 f"refuses it: {e}"))
            continue
        try:
            server_text = client.apply_template(for_openai(msgs), tools)
        except ToolError as e:
            results.append(JinjaCase(case.name, hf_text, None, False, None, error=e.message))
            continue
        equal, bos_dropped = _compare(hf_text, server_text, bos)
        with_server_context = False
        if not equal:
            dated = hf.render(msgs, tools, context=server_context())
            if dated != hf_text and _compare(dated, server_text, bos)[0]:
                hf_text, with_server_context = dated, True
                equal, bos_dropped = _compare(hf_text, server_text, bos)
        tokens_equal = None
        if tok is not None:
            tokens_equal = tok(hf_text, add_special_tokens=False)["input_ids"] == client.tokenize(server_text)
        results.append(JinjaCase(case.name, hf_text, server_text, equal, tokens_equal, bos_dropped,
                                 with_server_context))
    if any(c.server_context for c in results):
        notes.append("llama-server sets date_string to today's date where transformers leaves it undefined: this "
                     "template's own fallback date is never used there; compared with the server's date")
    return JinjaParityReport(str(hf.model_dir), server_label, tuple(results), tuple(notes))


def require_gguf(path: Path) -> None:
    """Refuse, before any server starts, a file that is not a GGUF (llama-server would fail on it with its log)."""
    from ..errors import InputError

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                         "pass --gguf the .gguf file of the export (localserve export writes NAME-QUANT.gguf)")


def check_gguf(hf: HFChat, gguf: Path, *, binary: Path | None = None, template_file: Path | None = None,
               threads: int | None = 1) -> JinjaParityReport:
    """Start llama-server on `gguf` (with `template_file` instead of the GGUF's template when given), run
    the suite through it, stop it."""
    from ..llamacpp.server import Client, ServerModel, running

    require_gguf(gguf)
    model = ServerModel("parity", Path(gguf), ctx=2048, chat_template_file=template_file)
    with running([model], binary=binary, threads=threads) as server, Client(server.url) as client:
        label = f"llama-server on {Path(gguf).name}" + (f" with {template_file}" if template_file else "")
        return check_jinja_parity(hf, client, label)
