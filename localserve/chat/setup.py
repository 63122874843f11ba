"""What Ollama needs to chat with a model the way it was trained (`ChatSetup`), built from a chat
family and the model's own template; the probes that show what that template renders.

Choosing the family is detect.py's; proving a setup, parity.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .families import Family
from .hf import HFChat

log = logging.getLogger("localserve.chat")

# Context length written as PARAMETER num_ctx: the model's own, capped because Ollama allocates the
# whole KV cache up front and a 128k context does not fit consumer RAM. Users raise it in a Modelfile.
NUM_CTX_CAP = 8192

PROBE_USER = "localserve probe: what is 2 + 2?"
PROBE_SYSTEM = "localserve probe system text."
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "localserve_probe_tool",
        "description": "Probe whether the template renders tools.",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "x"}},
                       "required": ["x"]},
    },
}


@dataclass(frozen=True)
class ChatSetup:
    """What Ollama needs to chat with a model the way it was trained.

    `template` is the Ollama Go TEMPLATE; `system` a default system prompt the model's own template
    inserts when a conversation has none (write it as the Modelfile SYSTEM); `parameters` holds
    num_ctx (the stops are in `stop`, always a list in the Modelfile).

    `template_source` says where the chat template the TEMPLATE is proven against comes from:
    "model" (the model's own files), or, for a model that has none, "family" (chosen with
    --template-family) or "file" (the family whose turns --template-file's TEMPLATE renders); then
    `chat_template` is that family's Jinja template (`chat_template_from`), which the GGUF gets.
    """

    family: str
    template: str
    stop: tuple[str, ...]
    parameters: dict = field(default_factory=dict)
    supports_tools: bool = False
    system: str | None = None
    bos_from_tokenizer: bool = False
    trims_content: bool = False
    json_differs: bool = False
    notes: tuple[str, ...] = ()
    template_source: str = "model"
    chat_template: str | None = None
    chat_template_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "template": self.template, "stop": list(self.stop),
                "parameters": dict(self.parameters), "supports_tools": self.supports_tools,
                "system": self.system, "notes": list(self.notes), "template_source": self.template_source,
                "chat_template_from": self.chat_template_from}


def render_probe(hf: HFChat, messages: list[dict], tools: list[dict] | None = None) -> str | None:
    """The model's own template applied to a probe conversation; None when it fails on it."""
    import jinja2

    try:
        return hf.render(messages, tools)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
        log.debug("probe render failed: %s", e)
        return None


def renders_tools(hf: HFChat) -> bool:
    out = render_probe(hf, [{"role": "user", "content": PROBE_USER}], [PROBE_TOOL])
    return out is not None and "localserve_probe_tool" in out


def _default_system(hf: HFChat, family: Family) -> str | None:
    """A system prompt the template inserts by itself, if its output proves it is one."""
    if not family.default_system:
        return None
    bare = render_probe(hf, [{"role": "user", "content": PROBE_USER}])
    if bare is None:
        return None
    text = family.extract_default_system(bare)
    if not text:
        return None
    explicit = render_probe(hf, [{"role": "system", "content": text}, {"role": "user", "content": PROBE_USER}])
    return text if explicit == bare else None


def template_capabilities(jinja_template: str) -> set[str]:
    """What Ollama ≥ 0.30 reads from a GGUF's Jinja template by substring (docs/ollama.md#template-selection)."""
    caps = set()
    if "tools" in jinja_template or "tool_call" in jinja_template:
        caps.add("tools")
    if "<think>" in jinja_template and "</think>" in jinja_template:
        caps.add("thinking")
    return caps


def go_template_capabilities(go_template: str) -> set[str]:
    caps = {"tools"} if ".Tools" in go_template else set()
    if "<think>" in go_template and "</think>" in go_template:
        caps.add("thinking")
    return caps


def bypassed_on_new_ollama(hf: HFChat, setup: "ChatSetup") -> set[str]:
    """Capabilities the model's Jinja template advertises and the TEMPLATE lacks: for these, Ollama
    ≥ 0.30 renders with the GGUF's Jinja template instead (unless OLLAMA_GO_TEMPLATE=1)."""
    return template_capabilities(hf.template) - go_template_capabilities(setup.template)


def stop_tokens(hf: HFChat, family_stops: tuple[str, ...] = ()) -> tuple[str, ...]:
    """EOS text + every generation_config eos id (decoded) + the family's end-of-turn markers."""
    stops: list[str] = []
    if hf.eos_token:
        stops.append(hf.eos_token)
    for token_id in hf.generation_eos_ids:
        text = hf.decode_id(token_id)
        if text:
            stops.append(text)
        else:
            log.warning("generation_config eos id %s of %s has no known text; not used as a stop",
                        token_id, hf.model_dir)
    stops.extend(family_stops)
    return tuple(dict.fromkeys(s for s in stops if s))


def num_ctx(hf: HFChat) -> int | None:
    return min(hf.max_position_embeddings, NUM_CTX_CAP) if hf.max_position_embeddings else None


def build_setup(hf: HFChat, fam: Family | None, template: str, name: str, supports_tools: bool,
                notes: tuple[str, ...], template_source: str = "model") -> ChatSetup:
    """The setup that serves `hf` with `template`: stops, num_ctx and default system prompt from the
    model's own files, the rest from its family `fam` (None: a custom template of no known family).
    With a `template_source` other than "model", `hf` renders `fam`'s own chat template."""
    params: dict[str, Any] = {}
    if (ctx := num_ctx(hf)) is not None:
        params["num_ctx"] = ctx
    return ChatSetup(
        family=name,
        template=template,
        stop=stop_tokens(hf, fam.stop if fam else ()),
        parameters=params,
        supports_tools=supports_tools,
        system=_default_system(hf, fam) if fam else None,
        bos_from_tokenizer=fam.bos_from_tokenizer if fam else "bos_token" in hf.template,
        trims_content=fam.trims_content if fam else False,
        json_differs=fam.json_differs if fam else True,
        notes=notes,
        template_source=template_source,
        chat_template=hf.template if template_source != "model" else None,
        chat_template_from=fam.name if fam and template_source != "model" else None,
    )

