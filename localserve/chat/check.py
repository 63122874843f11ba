"""`check-template` as a library call: resolve the chat family of a model or adapter and prove it."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .parity import ParityReport, check_parity
from .detect import resolve_chat
from .setup import ChatSetup

def chat_source(path: Path, base: Path | None, scratch: Path) -> Path:
    """The folder whose chat template and tokenizer a model or adapter folder uses.

    An adapter is served with the files it ships (its template, its tokenizer) and its base model's
    for the rest (found the way `export` finds the base), assembled in `scratch`; with none of its
    own, its base's folder.
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        return path
    from ..models.chatfiles import chat_folder
    from ..models.resolve import load_adapter, resolve_base

    return chat_folder(path, resolve_base(load_adapter(path, allow_pickle=True), base).path, scratch)


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
    with tempfile.TemporaryDirectory(prefix="localserve-chat-") as scratch:
        source = chat_source(Path(model_dir), base, Path(scratch) / "chat")
        setup = resolve_chat(source, family=family, template_file=template_file)
        report = check_parity(source, setup)
    if source.parent == Path(scratch):  # assembled for the check: name what it was assembled from
        source = Path(model_dir)
        report = dataclasses.replace(report, model_dir=f"{model_dir} (with its base's tokenizer files)")
    return TemplateCheck(source, setup, report)
