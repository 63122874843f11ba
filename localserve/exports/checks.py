"""Checks the Ollama exports share, made before any work: the chat template's parity, free disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import TemplateMismatch
from ..faults import TEMPLATE_CHECK, fault_point
from ..fsutil import require_free_space
from ..llamacpp.quant_types import gguf_file_bytes
from ..models.merge import saved_dtype
from ..progress import step

_BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "bfloat16": 2}


def check_chat(chat_dir: Path, family: str | None, template_file: Path | None, force: bool):
    """The chat setup for `chat_dir` and its parity with the model's own template; a mismatch is
    refused unless `force` (then recorded)."""
    from ..chat import resolve_chat
    from ..chat.parity import check_parity

    setup = resolve_chat(chat_dir, family=family, template_file=template_file)
    step(f"chat template family: {setup.family}; stops: {list(setup.stop)}")
    if setup.chat_template is not None:
        chosen = "--template-family" if setup.template_source == "family" else f"the TEMPLATE of {template_file}"
        step(f"{chat_dir} has no chat template: the GGUF gets the {setup.chat_template_from} family's "
             f"(chosen by {chosen})")
    fault_point(TEMPLATE_CHECK)
    parity = check_parity(chat_dir, setup)
    if not parity.ok:
        if not force:
            raise TemplateMismatch(
                f"the Ollama TEMPLATE for family {setup.family} does not reproduce {chat_dir}'s chat template:\n"
                + parity.summary(),
                "choose another --template-family or pass --template-file; --force exports anyway")
        step("template parity FAILED; exporting anyway because of --force (recorded in localserve.json)")
    return setup, parity


def chat_template_record(setup) -> dict:
    """What localserve.json says of the chat template: read from the model ("model"), or, for a model
    without one, chosen ("family": --template-family, "file": the family --template-file renders)."""
    record: dict = {"template_source": setup.template_source}
    if setup.chat_template is not None:
        record["chat_template"] = {"family": setup.chat_template_from,
                                   "sha256": hashlib.sha256(setup.chat_template.encode("utf-8")).hexdigest()}
    return record


def check_out(out: Path, inputs: list[Path]) -> None:
    """The output folder must be a folder (or not exist yet) and lie outside every input folder."""
    from ..errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder", "pass a folder path (it is created if missing)")
    resolved = out.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents:
            raise InputError(f"--out {out} is inside the input {source}: writing there would change what is read",
                             "pass an --out outside the adapter and base folders")


def require_export_space(out: Path, base_dir: Path, config: dict, quants: tuple[str, ...], merged: bool,
                         what: str) -> None:
    """Free disk for the run's peak: the merged folder (when there is one), the F16 GGUF and every quant."""
    weights = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    dtype = saved_dtype(config)
    n_params = weights / _BYTES_PER_WEIGHT.get(dtype, 4)
    total = (n_params * _BYTES_PER_WEIGHT[dtype] if merged else 0) + gguf_file_bytes(n_params, "F16")
    total += sum(gguf_file_bytes(n_params, q) for q in quants)
    require_free_space(out, int(total * 1.05), what)
