"""Choose the chat family for a model by what its own template renders, and resolve its Ollama setup.

Each family's signature is matched against the model's template rendering a probe conversation;
families that share markers (Llama 3.1 and 3.2) are told apart by the parity proof.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError, TemplateMismatch
from .families import Family, families, get_family
from .hf import HFChat, load_hf_chat
from .parity import BASE_CASES, check_parity
from .setup import PROBE_USER, ChatSetup, build_setup, render_probe, renders_tools

log = logging.getLogger("localserve.chat")


def detect_family(hf: HFChat) -> Family:
    """The family whose signature the model's template renders (tool support breaks ties)."""
    rendered = render_probe(hf, [{"role": "user", "content": PROBE_USER}])
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
    for fam in candidates:
        setup = build_setup(hf, fam, fam.template, fam.name, fam.supports_tools, ())
        if check_parity(hf.model_dir, setup, BASE_CASES[:4]).ok:
            return fam
    return candidates[0]


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
    return build_setup(hf, fam, template, name, supports_tools, tuple(notes))
