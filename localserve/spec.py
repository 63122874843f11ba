"""What every spec shares: its JSON form for the record, model names, sizes as users type them.

Each operation has one immutable spec validated once (exports: `localserve.exports.spec`; merges:
`localserve.merging`; quality, plan, bench…), written next to what it produced.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from .errors import InputError

# The names Ollama and vLLM both accept for a model, a tenant or a served adapter.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
MODEL_NAME_RULE = "use letters, digits, '_', '.', '-' (1-80 characters, not starting with '.' or '-')"


def check_model_name(name: str, what: str = "model name", hint: str = MODEL_NAME_RULE) -> str:
    if not MODEL_NAME_RE.match(name):
        raise InputError(f"invalid {what} {name!r}", hint)
    return name


def name_from_path(path: str | Path) -> str:
    """A model name from a folder or file name: what the name rule refuses becomes '-'."""
    raw = Path(path).resolve().name or "model"
    return (re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip(".-") or "model")[:80]


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A spec dataclass as JSON for localserve.json: paths absolute, tuples as lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v.resolve())
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)}


def parse_size(text: str) -> int:
    """'4GB', '500MB', '1.5G', '123' -> bytes (SI units, as disk sizes are quoted)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read size {text!r}", "write it like 4GB, 750MB or 1.5G")
    number, prefix, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(number * base ** " KMGT".index(prefix or " "))
