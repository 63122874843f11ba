"""Immutable, validated specs: one per operation, written next to every artifact it produced."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class ExportSpec:
    """Everything `localserve export` needs; validated once in `__post_init__`.

    `quants` holds llama.cpp type names in their canonical spelling (see
    `localserve.llamacpp.quantize.QUANT_TYPES`); any case is accepted on the way in.
    """

    adapter: Path | None = None  # None with `merge`
    quants: tuple[str, ...] = ("Q4_K_M",)
    base: Path | None = None
    name: str | None = None
    out: Path | None = None
    keep_intermediate: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    smoke: bool = True
    register: bool = True
    ollama_host: str | None = None
    # chat template (see localserve.chat)
    template_family: str | None = None
    template_file: Path | None = None
    force: bool = False
    modelfile: Path | None = None
    ollama_template: str = "go"
    system: str | None = None
    bundle: Path | None = None  # also write an air-gapped bundle (see localserve.ollama.bundle)
    # quality gate (see localserve.quality)
    imatrix_data: Path | None = None
    max_kl: float | None = None
    max_size: int | None = None
    quality_data: Path | None = None  # the gate's text: chat .jsonl or plain text (default: the corpus)
    # a mergekit recipe (YAML) exported instead of an adapter (see localserve.merging)
    merge: Path | None = None

    def __post_init__(self) -> None:
        from .llamacpp.quantize import canonical_quants

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if (self.adapter is None) == (self.merge is None):
            raise InputError("export needs either an ADAPTER folder or --merge RECIPE.yaml, not both or neither",
                             "localserve export ADAPTER ...  |  localserve export --merge RECIPE.yaml ...")
        if self.merge is not None and self.base is not None:
            raise InputError("--base does not apply to --merge", "name the base as base_model in the merge recipe")
        if self.adapter is not None:
            set_("adapter", Path(self.adapter))
        for key in ("base", "out", "template_file", "modelfile", "imatrix_data", "quality_data", "bundle", "merge"):
            value = getattr(self, key)
            if value is not None:
                set_(key, Path(value))
        if isinstance(self.quants, str):
            set_("quants", tuple(q for q in self.quants.split(",")))
        set_("quants", canonical_quants(self.quants, have_imatrix=self.imatrix_data is not None))
        name = self.name or _default_name(self.adapter if self.adapter is not None else self.merge.with_suffix(""))
        if not _NAME_RE.match(name):
            raise InputError(f"invalid model name {name!r}",
                             "use letters, digits, '_', '.', '-' (1-80 characters, not starting with '.' or '-')")
        set_("name", name)
        if self.ollama_template not in ("go", "native"):
            raise InputError(f"--ollama-template must be 'go' or 'native', not {self.ollama_template!r}")
        if self.max_kl is not None and self.max_kl <= 0:
            raise InputError(f"--max-kl must be positive, not {self.max_kl}")
        if self.max_size is not None and self.max_size <= 0:
            raise InputError(f"--max-size must be positive, not {self.max_size}")
        if "auto" in self.quants:
            if len(self.quants) > 1:
                raise InputError("--quant auto cannot be combined with other quant types",
                                 "pass either auto or a list of types")
            if self.max_kl is None and self.max_size is None:
                raise InputError("--quant auto needs a bound to choose by", "pass --max-kl 0.05 and/or --max-size 4GB")
        if self.quality_data is not None and not self.quality_gate:
            raise InputError("--quality-data is the text the quality gate measures on, and no bound was given",
                             "add --max-kl and/or --max-size (with --quant auto or a list of types)")
        if self.quality_data is not None and not self.quality_data.is_file():
            raise InputError(f"no such file: {self.quality_data}",
                             "pass the fine-tune's chat .jsonl (or a plain text file) to --quality-data")

    @property
    def auto_quant(self) -> bool:
        return self.quants == ("auto",)

    @property
    def quality_gate(self) -> bool:
        return self.max_kl is not None or self.max_size is not None

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("exports") / str(self.name)

    def to_json(self) -> dict[str, Any]:
        return spec_to_json(self)


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A spec dataclass as JSON for localserve.json: paths absolute, tuples as lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v.resolve())
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)}


def _default_name(adapter: Path) -> str:
    raw = Path(adapter).resolve().name or "model"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip(".-") or "model"
    return cleaned[:80]


def parse_size(text: str) -> int:
    """'4GB', '500MB', '1.5G', '123' -> bytes (SI units, as disk sizes are quoted)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read size {text!r}", "write it like 4GB, 750MB or 1.5G")
    number, prefix, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(number * base ** " KMGT".index(prefix or " "))

