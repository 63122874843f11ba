"""`check-template` as a library call: resolve the chat family of a model or adapter and prove it."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .jinja_parity import JinjaParityReport
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
    jinja: JinjaParityReport | None = None  # the Jinja path, through llama-server (check_template(gguf=...))

    @property
    def ok(self) -> bool:
        return self.report.ok and (self.jinja is None or self.jinja.ok)

    def to_json(self) -> dict:
        return {"source": str(self.source), "setup": self.setup.to_json(), "parity": self.report.to_json(),
                "jinja_parity": self.jinja.to_json() if self.jinja else None}


def check_template(model_dir: Path, family: str | None = None, template_file: Path | None = None,
                   base: Path | None = None, gguf: Path | None = None) -> TemplateCheck:
    """Detect (or take) the family of a model/adapter folder and run the parity suite on it; with `gguf`
    (the model converted), also through llama-server running it (chat.jinja_parity)."""
    jinja = None
    if gguf is not None:
        from .jinja_parity import require_gguf

        require_gguf(gguf)  # before the suite runs
    with tempfile.TemporaryDirectory(prefix="localserve-chat-") as scratch:
        source = chat_source(Path(model_dir), base, Path(scratch) / "chat")
        setup = resolve_chat(source, family=family, template_file=template_file)
        report = check_parity(source, setup)
        if gguf is not None:
            from .hf import load_hf_chat
            from .jinja_parity import check_gguf

            hf = load_hf_chat(source, require_template=setup.chat_template is None)
            jinja = check_gguf(hf.with_template(setup.chat_template) if setup.chat_template else hf, gguf)
    if source.parent == Path(scratch):  # assembled for the check: name what it was assembled from
        source = Path(model_dir)
        report = dataclasses.replace(report, model_dir=f"{model_dir} (with its base's tokenizer files)")
    return TemplateCheck(source, setup, report, jinja)
