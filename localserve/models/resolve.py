"""Find and check the inputs of an export: the adapter folder and the base it was trained on."""

from __future__ import annotations

import json

from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, BaseModelNotFound, InputError, UnsafeWeights
from .embedded import EMBEDDED, embedded_base

ADAPTER_WEIGHTS = ("adapter_model.safetensors",)
PICKLE_ADAPTER_WEIGHTS = ("adapter_model.bin",)


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: dict
    weights: Path
    pickled: bool

    @property
    def base_ref(self) -> str | None:
        return self.config.get("base_model_name_or_path")


@dataclass(frozen=True)
class BaseModel:
    path: Path
    source: str  # "--base", "path", "hf-cache", "embedded"
    ref: str | None  # what the adapter asked for


def load_adapter(path: Path, allow_pickle: bool = False) -> Adapter:
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"adapter folder {path} does not exist", "pass the folder that holds adapter_config.json")
    if not path.is_dir():
        raise AdapterError(f"{path} is a file, not an adapter folder", "pass the folder that holds adapter_config.json")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterError(f"{path} has no adapter_config.json",
                           "pass a PEFT adapter folder (saved with model.save_pretrained)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_file} is not valid JSON: {e}", "re-save the adapter with peft") from e
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{cfg_file} describes a {peft_type or 'non-PEFT'} adapter; only LoRA can be merged",
                           "train a LoRA adapter (peft LoraConfig)")
    for name in ADAPTER_WEIGHTS:
        if (path / name).is_file():
            return Adapter(path, config, path / name, pickled=False)
    for name in PICKLE_ADAPTER_WEIGHTS:
        if (path / name).is_file():
            if not allow_pickle:
                raise UnsafeWeights(f"{path / name} is a pickle file, which can run code when loaded",
                                    "re-save the adapter as safetensors, or pass --allow-pickle if you trust it")
            return Adapter(path, config, path / name, pickled=True)
    raise AdapterError(f"{path} has no adapter weights (adapter_model.safetensors)",
                       "copy the weights next to adapter_config.json")


def hf_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps downloads, in its own order of precedence."""
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE)]


def resolve_base(adapter: Adapter, override: Path | None = None) -> BaseModel:
    """The base model folder: --base, a local path, the local HF cache (offline), or an embedded model."""
    ref = adapter.base_ref
    if override is not None:
        override = Path(override)
        if not (override / "config.json").is_file():
            raise BaseModelNotFound(f"--base {override} is not a model folder (no config.json there)",
                                    "pass the folder of the Hugging Face base model")
        return BaseModel(override, "--base", ref)
    if not ref:
        raise BaseModelNotFound(f"{adapter.path}/adapter_config.json names no base_model_name_or_path",
                                "pass --base PATH")
    return find_base(ref, adapter.path, "from adapter_config.json")


def find_base(ref: str, relative_to: Path | None = None, named: str = "--base") -> BaseModel:
    """The base model a reference names: a local folder (also relative to `relative_to`), the local
    Hugging Face cache (offline), or an embedded model. `named` says where the reference came from."""
    looked: list[str] = []
    candidates = [Path(ref).expanduser()] + ([Path(relative_to) / ref] if relative_to is not None else [])
    for candidate in candidates:
        looked.append(f"path {candidate}")
        if (candidate / "config.json").is_file():
            return BaseModel(candidate.resolve(), "path", ref)
    if "/" in ref and not ref.startswith((".", "/", "~")) and ref.count("/") == 1:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        for cache in hf_cache_dirs():
            looked.append(f"Hugging Face cache {cache}")
            try:
                # local_files_only: never touches the network; finds the cached snapshot of `ref`.
                found = Path(snapshot_download(ref, local_files_only=True, cache_dir=cache))
            except (LocalEntryNotFoundError, OSError, ValueError):
                continue
            if (found / "config.json").is_file():
                return BaseModel(found, "hf-cache", ref)
        if ref in EMBEDDED:
            return BaseModel(embedded_base(ref), "embedded", ref)
        looked.append(f"embedded models ({', '.join(EMBEDDED)})")
    raise BaseModelNotFound(f"base model {ref!r} ({named}) not found; looked at: " + "; ".join(looked),
                            "pass --base PATH to a local copy of the base model")


def check_base_weights(base: BaseModel, allow_pickle: bool) -> None:
    files = {p.name for p in base.path.iterdir()}
    if any(f.endswith(".safetensors") for f in files):
        return
    if any(f.endswith(".bin") or f.endswith(".pt") for f in files):
        if allow_pickle:
            return
        raise UnsafeWeights(f"the base model in {base.path} has only pickle weights (.bin), which can run code",
                            "convert it to safetensors, or pass --allow-pickle if you trust it")
    raise InputError(f"the base model in {base.path} has no weights (*.safetensors)",
                     "point --base at a complete model folder")


def read_json(path: Path) -> dict:
    """A JSON object from a user's file; InputError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e})", "restore the file from the model's source") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a JSON {type(data).__name__}, not an object",
                         "restore the file from the model's source")
    return data

