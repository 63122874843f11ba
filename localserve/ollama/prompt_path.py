"""Which template builds a model's prompt on Ollama (docs/ollama.md#template-selection): the Go
`TEMPLATE`, rendered by Ollama itself, or the GGUF's own Jinja `tokenizer.chat_template`, rendered by
llama-server. Before 0.30 only the first exists; from 0.30 the server chooses per model:

    expected_path(go_template, jinja, version)   what Ollama will choose, from the export's two templates
    path_in_use(shown, version)                  what a running server chose, from its /api/show answer

Two things the export cannot know ahead: the server's OLLAMA_GO_TEMPLATE (unset, the choice is the
capability rule below; set, it decides), and, for a model created without TEMPLATE, whether Ollama
recognises the GGUF's template at create and adds one of its own built-in Go templates instead
("using autodetected template chatml"). Registration and `verify` read the answer from the server.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

GO_TEMPLATE = "go_template"
GGUF_JINJA = "gguf_jinja"
RAW = "raw"
PATHS = {
    GO_TEMPLATE: "the Go TEMPLATE, rendered by Ollama (llama-server runs with --no-jinja)",
    GGUF_JINJA: "the GGUF's own Jinja chat template, rendered by llama-server",
    RAW: "no template: the prompt is sent unformatted ({{ .Prompt }})",
}
NATIVE_SINCE = (0, 30, 0)  # llama-server, and with it the GGUF's Jinja, from this version on
EMPTY_GO_TEMPLATE = "{{ .Prompt }}"  # what /api/show answers for a model without any template


@dataclass(frozen=True)
class PromptPath:
    path: str  # GO_TEMPLATE, GGUF_JINJA or RAW
    why: str

    @property
    def description(self) -> str:
        return PATHS[self.path]

    def to_json(self) -> dict:
        return {**asdict(self), "description": self.description}


# --- capabilities, as Ollama reads them (server/images.go at 0.33.0-rc2) --------------------------------
# Ollama compares the *number* of capabilities each template gives the model; both count `completion`.

def jinja_capabilities(jinja: str) -> set[str]:
    """What Ollama reads from a Jinja chat template, by substring."""
    caps = {"completion"}
    if "tools" in jinja or "tool_call" in jinja:
        caps.add("tools")
    if "<think>" in jinja and "</think>" in jinja:
        caps.add("thinking")
    return caps


def go_capabilities(template: str) -> set[str]:
    """What Ollama reads from a Go template: the fields it uses (`.Tools`, `.Suffix`) and thinking tags.
    Ollama walks the parsed template and infers the tags; the substring tests here agree on the templates
    localserve writes."""
    caps = {"completion"}
    if re.search(r"\.Tools\b", template):
        caps.add("tools")
    if re.search(r"\.Suffix\b", template):
        caps.add("insert")
    if "<think>" in template and "</think>" in template:
        caps.add("thinking")
    return caps


def jinja_tool_round_trip(jinja: str) -> bool:
    """The Jinja template renders tool calls and their results back (not only the tool list)."""
    if "tools" not in jinja and "tool_call" not in jinja:
        return False
    calls = "tool_calls" in jinja or "assistant_tool_call" in jinja
    results = ("tool_response", "tool_results", "role'] == 'tool'", "role'] == \"tool\"", "role\"] == 'tool'",
               "role\"] == \"tool\"", "message.role == 'tool'", "message.role == \"tool\"", "ipython")
    return calls and any(r in jinja for r in results)


def go_tool_round_trip(template: str) -> bool:
    if not (re.search(r"\.Tools\b", template) and re.search(r"\.ToolCalls\b", template)):
        return False
    return any(r in template for r in ('eq .Role "tool"', "tool_response", "TOOL_RESULTS"))


def prefers_jinja(go_template: str, jinja: str) -> bool:
    """Ollama's shouldPreferChatTemplate: the GGUF's template has more capabilities than the Go one (and
    the Go one does not already round-trip tools the Jinja one cannot), or as many, tools among them, and
    only the Jinja one round-trips tool calls."""
    go, chat = go_capabilities(go_template), jinja_capabilities(jinja)
    if len(chat) > len(go):
        return not go_tool_round_trip(go_template) or jinja_tool_round_trip(jinja)
    if chat != go or "tools" not in chat:
        return False
    return jinja_tool_round_trip(jinja) and not go_tool_round_trip(go_template)


def expected_path(go_template: str | None, jinja: str | None, version: tuple[int, int, int] = NATIVE_SINCE,
                  go_template_env: bool | None = None) -> PromptPath:
    """The template Ollama `version` builds the prompt with, for a model with these two templates.
    `go_template_env` is the server's OLLAMA_GO_TEMPLATE (None: unset, the default)."""
    if version < NATIVE_SINCE:
        if go_template:
            return PromptPath(GO_TEMPLATE, "before 0.30 Ollama renders every prompt with the Go TEMPLATE")
        return PromptPath(RAW, "before 0.30 a model without TEMPLATE gets {{ .Prompt }}")
    if not go_template:
        if jinja:
            return PromptPath(GGUF_JINJA, "no Go TEMPLATE: llama-server applies the GGUF's chat template, unless "
                                          "Ollama recognises it at create and adds a built-in Go template of its own")
        return PromptPath(RAW, "neither a Go TEMPLATE nor a chat template in the GGUF")
    if go_template_env is not None:
        chosen = GO_TEMPLATE if go_template_env or not jinja else GGUF_JINJA
        return PromptPath(chosen, f"the server sets OLLAMA_GO_TEMPLATE={int(go_template_env)}")
    if jinja and prefers_jinja(go_template, jinja):
        missing = sorted(jinja_capabilities(jinja) - go_capabilities(go_template))
        return PromptPath(GGUF_JINJA, "the GGUF's chat template advertises "
                          + (", ".join(missing) if missing else "a tool round trip") + " and the Go TEMPLATE does not")
    return PromptPath(GO_TEMPLATE, "the Go TEMPLATE advertises what the GGUF's chat template does")


def _modelfile_template(modelfile: str) -> str | None:
    """The TEMPLATE of the Modelfile /api/show wrote; None when the model has no template layer (Ollama then
    writes `TEMPLATE {{ .Prompt }}`)."""
    from ..modelfile import parse_modelfile

    template = parse_modelfile(modelfile, "the Modelfile /api/show returned").template
    return None if template == EMPTY_GO_TEMPLATE else template


def path_in_use(shown: dict, version: tuple[int, int, int]) -> PromptPath:
    """The template a server builds this model's prompts with, from its /api/show answer: `template` is
    what the server renders with, `modelfile` shows the model's own TEMPLATE layer. When they differ (or
    there is no TEMPLATE layer) on 0.30+, `template` holds the GGUF's Jinja template."""
    rendering = shown.get("template") or ""
    own = _modelfile_template(shown.get("modelfile") or "")
    if version < NATIVE_SINCE or rendering in ("", EMPTY_GO_TEMPLATE):
        if own:
            return PromptPath(GO_TEMPLATE, "the server renders the model's TEMPLATE")
        return PromptPath(RAW, "the model has no template")
    if own is not None and rendering == own:
        return PromptPath(GO_TEMPLATE, "/api/show's template is the model's TEMPLATE layer")
    if own is None:
        return PromptPath(GGUF_JINJA, "the model has no TEMPLATE layer and /api/show gives the GGUF's template")
    return PromptPath(GGUF_JINJA, "/api/show gives the GGUF's template, not the model's TEMPLATE layer")


def gguf_chat_template(path: Path) -> str | None:
    """The GGUF's tokenizer.chat_template: what Ollama >= 0.30 may hand llama-server."""
    import gguf

    field = gguf.GGUFReader(str(path), "r").fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    value = field.contents()
    return value if isinstance(value, str) and value else None
