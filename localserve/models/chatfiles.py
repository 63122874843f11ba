"""A model folder's chat template, set the way both readers of it will see it.

transformers takes `chat_template.jinja` over a `chat_template` entry of tokenizer_config.json;
llama.cpp's converter (gguf-py's SpecialVocab) takes the entry over the file. A folder whose
template comes from somewhere else than its tokenizer_config.json (an adapter's own file, a chat
family chosen for a base that has none) must therefore hold the template in one place only, or the
GGUF gets another template than the one the parity check proved.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE_FILE = "chat_template.jinja"
_OTHER_TEMPLATE_FILES = ("chat_template.json",)
TOKENIZER_CONFIG = "tokenizer_config.json"


def drop_config_template(folder: Path) -> None:
    """Remove the `chat_template` entry of folder/tokenizer_config.json, if it has one (a link to
    another folder's file is replaced by a file of its own)."""
    config = Path(folder) / TOKENIZER_CONFIG
    if not config.is_file():
        return
    data = json.loads(config.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "chat_template" not in data:
        return
    del data["chat_template"]
    config.unlink()  # never write through a link into the folder it points to
    config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def set_chat_template(folder: Path, template: str) -> None:
    """Make `template` the chat template of `folder` for transformers and llama.cpp's converter alike."""
    folder = Path(folder)
    for name in (TEMPLATE_FILE, *_OTHER_TEMPLATE_FILES):
        (folder / name).unlink(missing_ok=True)
    drop_config_template(folder)
    (folder / TEMPLATE_FILE).write_bytes(template.encode("utf-8"))


def linked_view(source: Path, dest: Path, template: str) -> Path:
    """`dest`: a folder of links to every file of `source`, whose chat template is `template` (the
    model's weights are not copied). `dest`'s name is what the converter derives general.name from."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(source).iterdir()):
        target = dest / src.name
        if src.is_file() and not target.exists():
            target.symlink_to(src.resolve())
    set_chat_template(dest, template)
    return dest


def ships_chat_files(adapter_dir: Path) -> bool:
    """Whether an adapter folder holds tokenizer, chat template or generation config files of its own."""
    from .lora import tokenizer_files

    return bool(tokenizer_files(adapter_dir).files) or (Path(adapter_dir) / "generation_config.json").is_file()


def chat_folder(adapter_dir: Path, base_dir: Path, dest: Path) -> Path:
    """The folder holding the tokenizer, chat template, generation config and config.json a model
    made from adapter + base gets: `base_dir` itself, or, when the adapter ships any of those files,
    `dest` with the adapter's files and the base's for the rest (so an adapter that ships only its
    template is tokenized with the base's tokenizer and stops on the base's EOS)."""
    import shutil

    from ..fsutil import atomic_dir
    from .merge import copy_chat_files  # merge.py imports this module

    if not ships_chat_files(adapter_dir):
        return Path(base_dir)
    with atomic_dir(dest) as tmp:
        copy_chat_files(Path(adapter_dir), Path(base_dir), tmp)
        shutil.copyfile(Path(base_dir) / "config.json", tmp / "config.json")  # the context length
    return Path(dest)
