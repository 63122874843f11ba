"""Modelfiles: render them from `templates/Modelfile.j2`, parse them with Ollama's grammar
(docs/ollama.md#modelfile-grammar).

    spec = ModelfileSpec(from_="./demo-Q4_K_M.gguf", template=setup.template, system=None,
                         parameters={"stop": ["<|im_end|>"], "num_ctx": 8192})
    text = render_modelfile(spec)          # LF only; values quoted so Ollama reads them back exactly
    assert parse_modelfile(text) == spec   # the round trip the tests prove
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InputError
from ..paths import data_dir
from .grammar import (DEPRECATED_PARAMS, LIST_PARAMS, PARAM_TYPES, ROLES, ModelfileSyntaxError, check_requires,
                      parse_param_value, tokenize)

log = logging.getLogger("localserve.modelfile")

ParamValue = int | float | bool | str | list

__all__ = ["ModelfileSpec", "ModelfileSyntaxError", "parse_modelfile", "render_modelfile", "quote_value",
           "check_parameters", "PARAM_TYPES", "with_ollama_template", "OLLAMA_TEMPLATE_MODES"]


@dataclass(frozen=True)
class ModelfileSpec:
    """What a Modelfile says. `parameters[stop]` is always a list; other values are typed as
    docs/ollama.md#parameters says."""

    from_: str
    template: str | None = None
    system: str | None = None
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()
    license: tuple[str, ...] = ()
    adapter: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    draft: str | None = None


def check_parameters(parameters: Mapping[str, Any]) -> dict[str, ParamValue]:
    """Names and types against Ollama's table: unknown or deprecated names and wrong types are errors."""
    out: dict[str, ParamValue] = {}
    for name, value in parameters.items():
        if name in DEPRECATED_PARAMS:
            raise InputError(f"parameter {name!r} is deprecated; Ollama ≥ 0.7 drops it", "remove it")
        kind = PARAM_TYPES.get(name)
        if kind is None:
            raise InputError(f"unknown Ollama parameter {name!r}", "valid: " + ", ".join(sorted(PARAM_TYPES)))
        if kind is list:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                    or not all(isinstance(v, str) for v in value):
                raise InputError(f"parameter {name!r} must be a list of strings, got {value!r}",
                                 "Ollama stores stop as a JSON array even for one value")
            out[name] = list(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"parameter {name!r} must be true or false, got {value!r}")
            out[name] = value
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"parameter {name!r} must be an integer, got {value!r}")
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"parameter {name!r} must be a number, got {value!r}")
            out[name] = float(value)
    return out


def parse_modelfile(text: str, source: str | None = None, require_from: bool = True) -> ModelfileSpec:
    """Parse a Modelfile exactly as Ollama's CLI does; grammar errors name the line (InputError).

    `source` (e.g. the file's path) replaces "Modelfile" in error messages. `require_from=False`
    reads a partial Modelfile whose commands are merged into another (`export --modelfile`);
    its `from_` is then "" when it has no FROM line.
    """
    try:
        return _parse(text, require_from)
    except ModelfileSyntaxError as e:
        if source is None:
            raise
        raise ModelfileSyntaxError(e.message.replace("Modelfile", str(source), 1), e.hint) from None


def _parse(text: str, require_from: bool) -> ModelfileSpec:
    commands = tokenize(text)
    from_: str | None = None
    fields: dict[str, Any] = {}
    params: dict[str, ParamValue] = {}
    stops: list[str] = []
    messages: list[tuple[str, str]] = []
    licenses: list[str] = []
    for c in commands:
        if c.name == "from":
            from_ = c.value
        elif c.name == "parameter":
            if c.args in DEPRECATED_PARAMS:
                log.warning("Modelfile line %d: parameter %s is deprecated and dropped by Ollama", c.line, c.args)
                continue
            value = parse_param_value(c.args, c.value, c.line)
            if c.args in LIST_PARAMS:
                stops.append(value)  # type: ignore[arg-type]
            elif c.args not in params:
                # A repeated scalar PARAMETER: Ollama's FormatParams reads the first value.
                params[c.args] = value
        elif c.name == "message":
            messages.append((c.args, c.value))
        elif c.name == "license":
            licenses.append(c.value)
        elif c.name == "requires":
            fields["requires"] = check_requires(c.value, c.line)
        else:  # template, system, adapter, renderer, parser, draft: the last one wins
            fields[c.name] = c.value
    if from_ is None:
        if require_from:
            raise ModelfileSyntaxError("Modelfile has no FROM line", "add `FROM ./model.gguf` (or a model name)")
        from_ = ""
    if stops:
        params["stop"] = stops
    return ModelfileSpec(from_=from_, template=fields.get("template"), system=fields.get("system"),
                         parameters=params, messages=tuple(messages), license=tuple(licenses),
                         adapter=fields.get("adapter"), renderer=fields.get("renderer"),
                         parser=fields.get("parser"), requires=fields.get("requires"), draft=fields.get("draft"))


# ---- rendering -----------------------------------------------------------------------------

def _reads_back(keyword: str, written: str, value: str) -> bool:
    try:
        cmds = tokenize(f"{keyword} {written}\n")
    except InputError:
        return False
    return len(cmds) == 1 and cmds[0].value == value


def quote_value(value: str, what: str, keyword: str = "SYSTEM") -> str:
    """`value` written so Ollama's parser reads it back unchanged: bare, "…" or \"\"\"…\"\"\".

    There are no escapes in the grammar, so some texts cannot be written at all (a line ending in
    \"\"\" inside a multi-line value, say); those, CR characters and characters Ollama's parser drops
    are refused with an error saying what to do instead.
    """
    if "\r" in value:
        raise InputError(f"{what} contains a carriage return (CR); a Modelfile must be LF-only",
                         "normalize the text to \\n line ends")
    dropped = sorted({c for c in value if c not in " \t\n" and not c.isprintable()})
    if dropped:
        shown = ", ".join(f"U+{ord(c):04X}" for c in dropped)
        raise InputError(f"{what} contains {shown}, which Ollama's Modelfile parser silently drops",
                         "remove those characters, or send this text through the HTTP API (localserve.json "
                         "keeps it exactly)")
    candidates = [value] if value and "\n" not in value else []
    quoted = [f'"{value}"', f'"""{value}"""']
    candidates += quoted[::-1] if '"' in value else quoted  # Ollama's own writer prefers """ around quotes
    for written in candidates:
        if _reads_back(keyword, written, value):
            return written
    raise InputError(f"{what} cannot be written in a Modelfile: the grammar has no escapes and this text "
                     'closes every quoting form early (e.g. a line ending in """)',
                     "register through the HTTP API (`localserve register`), which sends the text as JSON")


def _param_text(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


@functools.lru_cache(maxsize=1)
def _jinja_template():
    import jinja2

    folder = data_dir("templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=False,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("Modelfile.j2")


def render_modelfile(spec: ModelfileSpec, header: str | None = None) -> str:
    """The Modelfile text for `spec` (LF only), checked to parse back to `spec`."""
    params = check_parameters(spec.parameters)
    if not spec.from_ or "\n" in spec.from_:
        raise InputError(f"FROM must be one line, got {spec.from_!r}")
    lines_params: list[tuple[str, str]] = []
    for name, value in params.items():
        for v in (value if isinstance(value, list) else [value]):
            lines_params.append((name, quote_value(_param_text(v), f"PARAMETER {name}", f"PARAMETER {name}")))
    for role, _ in spec.messages:
        if role not in ROLES:
            raise InputError(f"MESSAGE role {role!r} is not one of {', '.join(ROLES)}")
    context = {
        "header": [ln for ln in (header or "").splitlines()],
        "from_": quote_value(spec.from_, "FROM", "FROM"),
        "adapter": quote_value(spec.adapter, "ADAPTER", "ADAPTER") if spec.adapter else None,
        "template": quote_value(spec.template, "TEMPLATE", "TEMPLATE") if spec.template is not None else None,
        "system": quote_value(spec.system, "SYSTEM", "SYSTEM") if spec.system is not None else None,
        "parameters": lines_params,
        "messages": [(r, quote_value(t, f"MESSAGE {r}", f"MESSAGE {r}")) for r, t in spec.messages],
        "licenses": [quote_value(t, "LICENSE", "LICENSE") for t in spec.license],
        "renderer": spec.renderer, "parser": spec.parser, "requires": spec.requires,
        "draft": quote_value(spec.draft, "DRAFT", "DRAFT") if spec.draft else None,
    }
    text = _jinja_template().render(**context)
    back = parse_modelfile(text)
    expected = ModelfileSpec(**{**spec.__dict__, "parameters": params})
    if back != expected:  # a guard on the quoting logic, not on user input
        raise AssertionError(f"rendered Modelfile does not parse back to its spec:\n{text}")
    return text


# ---- --ollama-template go|native -------------------------------------------------------------

OLLAMA_TEMPLATE_MODES = {
    "go": "write the verified Go TEMPLATE (works on every Ollama version)",
    "native": "omit TEMPLATE and rely on the GGUF's own Jinja chat template (Ollama ≥ 0.30 only; older "
              "servers would send prompts unformatted)",
}


def with_ollama_template(spec: ModelfileSpec, template: str, mode: str) -> ModelfileSpec:
    """`spec` with the TEMPLATE that `--ollama-template MODE` asks for."""
    if mode not in OLLAMA_TEMPLATE_MODES:
        from ..errors import UnknownName

        raise UnknownName("--ollama-template mode", mode, list(OLLAMA_TEMPLATE_MODES))
    return ModelfileSpec(**{**spec.__dict__, "template": template if mode == "go" else None})

