"""Choose the chat family for a model by what its own template renders, and resolve its Ollama setup.

Each family's signature is matched against the model's template rendering a probe conversation;
families that share markers (Llama 3.1 and 3.2) are told apart by the parity proof.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError, TemplateMismatch
from .families import Family, families, get_family
from .hf import NO_TEMPLATE, HFChat, load_hf_chat
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
    user's own (prove it with `check_parity`). A model without a chat template of its own (a
    pretrained base) gets the chat template of the family chosen by `family`, or else of the family
    whose turns `template_file` renders; its tokenizer must have that family's special tokens.
    """
    hf = load_hf_chat(Path(model_dir), require_template=False)
    fam = get_family(family) if family else None
    template = _read_template_file(Path(template_file)) if template_file is not None else None
    notes: list[str] = []
    source = "model"
    if hf.template is None:
        if fam is None and template is not None:
            fam = _family_rendered_by(hf, template, Path(template_file))
        _check_family_fits(hf, fam)
        hf = hf.with_template(fam.jinja)
        source = "family" if family else "file"
        notes.append(f"{hf.model_dir} has no chat template: the {fam.name} family's chat template is proven and "
                     "goes into the GGUF")
    if template is not None:
        if fam is None:
            try:
                fam = detect_family(hf)
            except (InputError, TemplateMismatch):
                fam = None
        name = f"custom ({fam.name})" if fam else "custom"
        notes.append(f"TEMPLATE from {template_file}")
        supports_tools = ".Tools" in template
    else:
        fam = fam or detect_family(hf)
        template, name, supports_tools = fam.template, fam.name, fam.supports_tools
    if fam and fam.notes:
        notes.append(fam.notes)
    return build_setup(hf, fam, template, name, supports_tools, tuple(notes), source)


def _read_template_file(path: Path) -> str:
    """The Go TEMPLATE in `path`, parsed by Go's text/template as Ollama will parse it."""
    from .gotemplate import GoTemplateError, check_parses

    if not path.is_file():
        raise InputError(f"template file {path} does not exist", "pass a file holding an Ollama Go TEMPLATE")
    # as for a family's template.gotmpl: the file's final newline is the file's (editors add one)
    template = path.read_text(encoding="utf-8").removesuffix("\n")
    try:
        check_parses(template)
    except GoTemplateError as e:
        raise InputError(f"{path} is not a valid Ollama Go TEMPLATE: {e.message}",
                         "Ollama would refuse it with `template error`; fix the template") from e
    return template


def fitting_families(hf: HFChat) -> list[Family]:
    """The families that can give `hf` (a model without a chat template) theirs: its tokenizer has the
    family's special tokens (when it has a tokenizer to say), and the family's TEMPLATE reproduces
    the family's chat template with this tokenizer's BOS and EOS (Llama 2's and Zephyr's TEMPLATEs
    write </s>, which their chat templates take from the tokenizer)."""
    fitting = []
    for fam in families().values():
        if fam.jinja is None or hf.missing_tokens(fam.tokens):
            continue
        setup = build_setup(hf.with_template(fam.jinja), fam, fam.template, fam.name, fam.supports_tools, (), "family")
        if check_parity(hf.model_dir, setup, BASE_CASES[:4]).ok:
            fitting.append(fam)
    return fitting


def _choose_hint(hf: HFChat, instead_of_file: bool = False) -> str:
    names = sorted(f.name for f in fitting_families(hf))
    if not names:
        return ("no chat family's turn tokens are all in its vocabulary; add the chat template the model was trained "
                "with, as chat_template.jinja")
    flag = f"--template-family {names[0]}" if len(names) == 1 else f"--template-family NAME ({', '.join(names)})"
    fits = f"its tokenizer has the turn tokens of {', '.join(names)}: "
    if instead_of_file:
        return fits + f"write the TEMPLATE in that format, or pass {flag} instead of --template-file"
    return fits + f"pass {flag} to give it that family's chat template, or --template-file FILE with your own Go " \
                  "TEMPLATE in that format"


def _check_family_fits(hf: HFChat, fam: Family | None) -> None:
    """`fam` can supply `hf`'s chat template: it has one, and the tokenizer has its special tokens."""
    if fam is None:
        raise InputError(f"{hf.model_dir} {NO_TEMPLATE}", _choose_hint(hf))
    if fam.jinja is None:
        raise InputError(f"{hf.model_dir} {NO_TEMPLATE}, and the family {fam.name} has none to give it "
                         f"(no {fam.name}/template.jinja)", _choose_hint(hf))
    missing = hf.missing_tokens(fam.tokens)
    if missing:
        raise InputError(f"the tokenizer of {hf.model_dir} has no token {missing[0]}, which the {fam.name} family's "
                         "turns are made of", _choose_hint(hf))


def _family_rendered_by(hf: HFChat, template: str, path: Path) -> Family:
    """The family whose turns the Go TEMPLATE renders for the probe, for a model without a chat
    template of its own: among several, the first whose chat template the TEMPLATE reproduces."""
    from .gotemplate import GoTemplateError, render

    try:
        rendered = render(template, [{"role": "user", "content": PROBE_USER}])
    except GoTemplateError:
        rendered = ""
    candidates = [f for f in fitting_families(hf) if f.matches(rendered, PROBE_USER)]
    tools = ".Tools" in template
    candidates = [f for f in candidates if f.supports_tools == tools] or candidates
    if not candidates:
        raise InputError(f"the TEMPLATE in {path} renders the turns of no chat family whose tokens "
                         f"{hf.model_dir}'s tokenizer has, and the model has no chat template to prove it against",
                         _choose_hint(hf, instead_of_file=True))
    for fam in candidates[:-1]:
        setup = build_setup(hf.with_template(fam.jinja), fam, template, fam.name, tools, (), "file")
        if check_parity(hf.model_dir, setup, BASE_CASES[:4]).ok:
            return fam
    return candidates[-1]
