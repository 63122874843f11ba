"""`check-template` as a library call: resolve the chat family of a model or adapter and prove it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .parity import ParityReport, check_parity
from .detect import resolve_chat
from .setup import ChatSetup

TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")


def chat_source(path: Path, base: Path | None = None) -> Path:
    """The folder whose chat template a model or adapter folder uses.

    An adapter saved with its tokenizer carries its own template; otherwise its base model's
    template applies (found the way `export` finds the base).
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        return path
    if any((path / name).is_file() for name in TEMPLATE_FILES):
        return path
    from ..models.resolve import load_adapter, resolve_base

    return resolve_base(load_adapter(path, allow_pickle=True), base).path


@dataclass(frozen=True)
class TemplateCheck:
    source: Path
    setup: ChatSetup
    report: ParityReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict:
        return {"source": str(self.source), "setup": self.setup.to_json(), "parity": self.report.to_json()}


def check_template(model_dir: Path, family: str | None = None, template_file: Path | None = None,
                   base: Path | None = None) -> TemplateCheck:
    """Detect (or take) the family of a model/adapter folder and run the parity suite on it."""
    source = chat_source(Path(model_dir), base)
    setup = resolve_chat(source, family=family, template_file=template_file)
    return TemplateCheck(source, setup, check_parity(source, setup))
