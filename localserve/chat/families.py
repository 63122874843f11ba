"""The chat-family registry, backed by the presets in `modelfiles/<family>/`.

Each family folder holds `template.gotmpl` (the Ollama Go TEMPLATE), `template.jinja` (the family's
Hugging Face chat template, as its models publish it: what a model without a template of its own gets
when the family is chosen for it) and `preset.toml`:

    description     one line shown in listings and errors
    signature       substrings the model's own HF template must render for the probe
                    conversation [user: "{user}"] + generation prompt (all must appear);
                    {today} stands for today's date as "%d %b %Y"
    supports_tools  whether the HF template renders tool definitions (and the Go TEMPLATE `.Tools`)
    stop            the family's end-of-turn markers (added to the model's EOS tokens)
    tokens          the special tokens the family's turns are made of: a tokenizer that lacks one
                    (it would split it into pieces) cannot be given this family's template
    default_system  optional regex; group 1 extracts a default system prompt the HF template inserts
                    when a conversation has none (carried as the Modelfile SYSTEM)
    bos_from_tokenizer  the HF template writes BOS itself, while llama.cpp adds it when tokenizing;
                    the Go TEMPLATE must not write it, and parity compares without it
    trims_content   the HF template strips whitespace around message text; Go's text/template
                    cannot (documented difference, explained by the parity check)
    json_differs    tool schemas / call arguments are printed by Go's encoding/json (compact, Go
                    field order) where HF uses Python's json.dumps (documented difference)
    notes           free text shown by check-template

To add a family: add a folder with those three files; `localserve check-template --family NAME`
proves it against a model's own template.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, UnknownName
from ..paths import data_dir


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    template: str
    signature: tuple[str, ...]
    supports_tools: bool
    stop: tuple[str, ...]
    jinja: str | None = None  # template.jinja, byte for byte
    tokens: tuple[str, ...] = ()
    default_system: str | None = None
    bos_from_tokenizer: bool = False
    trims_content: bool = False
    json_differs: bool = False
    notes: str = ""

    def matches(self, rendered_probe: str, user_probe: str) -> bool:
        today = datetime.now().strftime("%d %b %Y")  # what a template's strftime_now("%d %b %Y") gives
        return all(s.replace("{user}", user_probe).replace("{today}", today) in rendered_probe
                   for s in self.signature)

    def extract_default_system(self, rendered_no_system: str) -> str | None:
        if not self.default_system:
            return None
        m = re.search(self.default_system, rendered_no_system, re.DOTALL)
        return m.group(1) if m else None


def modelfiles_dir() -> Path:
    return data_dir("modelfiles")


def _load(folder: Path) -> Family:
    preset_path, template_path = folder / "preset.toml", folder / "template.gotmpl"
    try:
        preset = tomllib.loads(preset_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"family preset {preset_path} is unreadable: {e}") from e
    # The file's final newline is the file's, not the template's (editors add one).
    template = template_path.read_text(encoding="utf-8").removesuffix("\n")
    jinja_path = folder / "template.jinja"
    # read as bytes: a chat template's own final newline is part of what it renders
    jinja = jinja_path.read_bytes().decode("utf-8") if jinja_path.is_file() else None
    return Family(
        name=folder.name,
        description=preset.get("description", ""),
        template=template,
        signature=tuple(preset.get("signature", ())),
        supports_tools=bool(preset.get("supports_tools", False)),
        stop=tuple(preset.get("stop", ())),
        jinja=jinja,
        tokens=tuple(preset.get("tokens", ())),
        default_system=preset.get("default_system"),
        bos_from_tokenizer=bool(preset.get("bos_from_tokenizer", False)),
        trims_content=bool(preset.get("trims_content", False)),
        json_differs=bool(preset.get("json_differs", False)),
        notes=preset.get("notes", ""),
    )


@functools.lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """Every family, keyed by the name users type (`--template-family NAME`), in detection order."""
    root = modelfiles_dir()
    found = sorted(p for p in root.iterdir() if (p / "preset.toml").is_file()) if root.is_dir() else []
    loaded = [_load(p) for p in found]
    # More specific signatures first, so a family that renders a superset wins over its parent.
    loaded.sort(key=lambda f: (-sum(len(s) for s in f.signature), f.name))
    return {f.name: f for f in loaded}


def get_family(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise UnknownName("chat template family", name, sorted(fams),
                          "pick one of them with --template-family, or pass --template-file FILE")
    return fams[name]
