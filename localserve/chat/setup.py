"""Choose the chat family for a model by what its own template renders, and build its Ollama setup."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, TemplateMismatch
from .families import Family, families, get_family
from .hf import HFChat, load_hf_chat

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

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "template": self.template, "stop": list(self.stop),
                "parameters": dict(self.parameters), "supports_tools": self.supports_tools,
                "system": self.system, "notes": list(self.notes)}


def _render_probe(hf: HFChat, messages: list[dict], tools: list[dict] | None = None) -> str | None:
    import jinja2

    try:
        return hf.render(messages, tools)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
        log.debug("probe render failed: %s", e)
        return None


def renders_tools(hf: HFChat) -> bool:
    out = _render_probe(hf, [{"role": "user", "content": PROBE_USER}], [PROBE_TOOL])
    return out is not None and "localserve_probe_tool" in out


def detect_family(hf: HFChat) -> Family:
    """The family whose signature the model's template renders (tool support breaks ties)."""
    rendered = _render_probe(hf, [{"role": "user", "content": PROBE_USER}])
    names = ", ".join(families())
    if rendered is None:
        raise InputError(f"the chat template of {hf.model_dir} fails to render a one-message conversation",
                         f"pass --template-family NAME ({names}) or --template-file FILE")
    candidates = [f for f in families().values() if f.matches(rendered, PROBE_USER)]
    if not candidates:
        shown = rendered if len(rendered) < 300 else rendered[:300] + "…"
        raise TemplateMismatch(
            f"the chat template of {hf.model_dir} matches no known family; for [user: {PROBE_USER!r}] it "
            f"renders {shown!r}; known families: {names}",
            "pass --template-family NAME to force one, or --template-file FILE with your own Go TEMPLATE "
            "(check it with `localserve check-template`)")
    tools = renders_tools(hf)
    candidates = [f for f in candidates if f.supports_tools == tools] or candidates
    chosen = candidates[0] if len(candidates) == 1 else _first_that_renders_alike(hf, candidates)
    log.info("chat family %s (candidates: %s; template renders tools: %s)", chosen.name,
             [f.name for f in candidates], tools)
    return chosen


def _first_that_renders_alike(hf: HFChat, candidates: list[Family]) -> Family:
    """Among families with the same markers (e.g. Llama 3.1 vs 3.2 dates), the first whose TEMPLATE
    renders the basic conversations exactly as the model's template does."""
    from .parity import BASE_CASES, check_parity

    for fam in candidates:
        setup = _setup_for(hf, fam, fam.template, fam.name, fam.supports_tools, ())
        if check_parity(hf.model_dir, setup, BASE_CASES[:4]).ok:
            return fam
    return candidates[0]


def _default_system(hf: HFChat, family: Family) -> str | None:
    """A system prompt the template inserts by itself, if its output proves it is one."""
    if not family.default_system:
        return None
    bare = _render_probe(hf, [{"role": "user", "content": PROBE_USER}])
    if bare is None:
        return None
    text = family.extract_default_system(bare)
    if not text:
        return None
    explicit = _render_probe(hf, [{"role": "system", "content": text}, {"role": "user", "content": PROBE_USER}])
    return text if explicit == bare else None


def template_capabilities(jinja_template: str) -> set[str]:
    """What Ollama ≥ 0.30 reads from a GGUF's Jinja template by substring (spec §4.4)."""
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


def resolve_chat(model_dir: Path, family: str | None = None, template_file: Path | None = None) -> ChatSetup:
    """Detect (or take) the chat family of `model_dir` and build its Ollama TEMPLATE, stops and num_ctx.

    `family` forces a family by name; `template_file` replaces the family's Go TEMPLATE with the
    user's own (prove it with `check_parity`).
    """
    from .gotemplate import GoTemplateError, check_parses

    hf = load_hf_chat(Path(model_dir))
    fam = get_family(family) if family else None
    notes: list[str] = []
    if template_file is not None:
        path = Path(template_file)
        if not path.is_file():
            raise InputError(f"template file {path} does not exist", "pass a file holding an Ollama Go TEMPLATE")
        template = path.read_text(encoding="utf-8")
        try:
            check_parses(template)
        except GoTemplateError as e:
            raise InputError(f"{path} is not a valid Ollama Go TEMPLATE: {e.message}",
                             "Ollama would refuse it with `template error`; fix the template") from e
        if fam is None:
            try:
                fam = detect_family(hf)
            except (InputError, TemplateMismatch):
                fam = None
        name = f"custom ({fam.name})" if fam else "custom"
        notes.append(f"TEMPLATE from {path}")
        supports_tools = ".Tools" in template
    else:
        fam = fam or detect_family(hf)
        template, name, supports_tools = fam.template, fam.name, fam.supports_tools
    if fam and fam.notes:
        notes.append(fam.notes)
    return _setup_for(hf, fam, template, name, supports_tools, tuple(notes))


def _setup_for(hf: HFChat, fam: Family | None, template: str, name: str, supports_tools: bool,
               notes: tuple[str, ...]) -> ChatSetup:
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
    )
