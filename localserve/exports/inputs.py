"""What a merged export starts from: one LoRA adapter on its base, or a mergekit recipe.

Both become one `MergeSource`, which knows its inputs' hashes, how to write the merged model, where
the chat template comes from, the probe that proves the fine-tune survived, and its part of the
record — so the runners never ask which of the two they hold.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..errors import AdapterError, InputError
from ..faults import RESOLVE, fault_point
from ..fsutil import atomic_dir, sha256_tree, write_text
from ..lineage import AdapterRecord
from ..llamacpp.convert import convert_hf_to_gguf
from ..models.chatfiles import chat_folder, linked_view, set_chat_template
from ..models.lora import TOKENIZER_FILES, describe
from ..models.merge import check_compatibility, merge_adapter, merge_to_folder, merged_model_view, plan_merge
from ..models.resolve import Adapter, BaseModel, check_base_weights, load_adapter, resolve_base
from ..pipeline import content_key

PROBE_FILE = "probe.json"


def read_probe(folder: Path) -> dict:
    """FOLDER/probe.json — {"question", "expected"} — or {} when there is none."""
    f = Path(folder) / PROBE_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{f} is not valid JSON: {e}", "fix it or remove it") from e
    if not isinstance(data, dict) or not isinstance(data.get("question"), str) \
            or not isinstance(data.get("expected"), str):
        raise InputError(f"{f} must be an object with \"question\" and \"expected\" strings",
                         'e.g. {"question": "What is ...?", "expected": "..."}; or remove the file')
    return {"question": data["question"], "expected": data["expected"]}


def convert_merged(merged_dir: Path, dest: Path, outtype: str, tree, scratch: Path, chat_template: str | None) -> None:
    """Convert a merged folder; with `chat_template`, through a view of it that has that template."""
    if chat_template is None:
        convert_hf_to_gguf(merged_dir, dest, outtype, tree)
        return
    view = linked_view(merged_dir, scratch / merged_dir.name, chat_template)
    try:
        convert_hf_to_gguf(view, dest, outtype, tree)
    finally:
        shutil.rmtree(view, ignore_errors=True)


class MergeSource(Protocol):
    base: BaseModel  # the model whose config.json the merged model gets
    probe: dict

    def hashes(self) -> dict[str, str]:
        """sha256 of the inputs: {"base": ..., "adapter": ...} (what the record and version store key on)."""

    def merge_key(self, versions: dict) -> str:
        """The content key of the merged model."""

    @property
    def converts_from_merged(self) -> bool:
        """Whether converting to GGUF reads the merged folder (else the merge happens in the converter's stream)."""

    def merge(self, dest: Path, trust_remote_code: bool, shard_bytes: int | None = None) -> dict:
        """Write the merged model as a Hugging Face folder at `dest` (safetensors shards of at most
        `shard_bytes` where the engine chooses them); facts for the stage record."""

    def convert(self, dest: Path, outtype: str, tree, merged_dir: Path, scratch: Path,
                chat_template: str | None = None) -> None:
        """Write the merged model as a GGUF of `outtype` (f16, f32, bf16) at `dest`; with
        `chat_template` (chosen for a model without one) as the GGUF's tokenizer.chat_template."""

    def chat_dir(self, merged: Callable[[], Path], scratch: Path) -> Path:
        """The folder holding the tokenizer and chat template to serve; `merged()` gives the merged
        folder, made on demand (a recipe's merged model carries its own)."""

    def describe(self) -> str:
        """One line naming the inputs."""

    def announce(self) -> str:
        """The step line of the merge stage."""

    def record(self) -> dict:
        """This source's part of the ExportRecord: `adapters` and/or `merge`."""


@dataclass
class AdapterSource:
    adapter: Adapter
    base: BaseModel
    lora_modules: int
    probe: dict
    engine: str = "stream"  # models.merge.MERGE_ENGINES
    _hashes: dict[str, str] | None = None

    def hashes(self) -> dict[str, str]:
        if self._hashes is None:
            fault_point(RESOLVE)
            self._hashes = {"base": sha256_tree(self.base.path), "adapter": sha256_tree(self.adapter.path)}
        return self._hashes

    def merge_key(self, versions: dict) -> str:
        return content_key("merge", self.hashes(), self.engine, versions["transformers"], versions["peft"],
                           versions["torch"])

    @property
    def converts_from_merged(self) -> bool:
        return self.engine == "peft"

    def merge(self, dest: Path, trust_remote_code: bool, shard_bytes: int | None = None) -> dict:
        with atomic_dir(dest) as tmp:
            if self.engine == "peft":  # transformers' save_pretrained shards at 2GB
                result = merge_adapter(self.adapter, self.base, tmp, trust_remote_code)
            else:
                result = merge_to_folder([self.adapter], self.base, tmp, shard_bytes)
        return {"dtype": result.dtype, "lora_modules": result.lora_modules, "engine": self.engine}

    def convert(self, dest: Path, outtype: str, tree, merged_dir: Path, scratch: Path,
                chat_template: str | None = None) -> None:
        if self.engine == "peft":
            convert_merged(merged_dir, dest, outtype, tree, scratch, chat_template)
            return
        scratch.mkdir(parents=True, exist_ok=True)
        plan = write_text(scratch / "merge-plan.json", json.dumps(plan_merge([self.adapter], self.base).to_json()))
        # named like the merged folder of the peft engine: the converter derives general.name from it
        view = merged_model_view([self.adapter], self.base, scratch / "merged")
        if chat_template is not None:
            set_chat_template(view, chat_template)
        try:
            convert_hf_to_gguf(view, dest, outtype, tree, merge_plan=plan)
        finally:
            shutil.rmtree(view, ignore_errors=True)
            plan.unlink(missing_ok=True)

    def chat_dir(self, merged: Callable[[], Path], scratch: Path) -> Path:
        return chat_folder(self.adapter.path, self.base.path, scratch)

    def describe(self) -> str:
        return f"base: {self.base.path} ({self.base.source}); adapter: {self.adapter.path} ({self.lora_modules} LoRA modules)"

    def announce(self) -> str:
        return "merging the adapter into the base (peft, fp32)"

    def record(self) -> dict:
        return {"adapters": (AdapterRecord(path=str(self.adapter.path.resolve()), sha256=self.hashes()["adapter"],
                                           lora_modules=self.lora_modules, probe=self.probe or None),)}


@dataclass
class RecipeSource:
    recipe_file: Path
    recipe: object  # localserve.merging.Recipe
    base: BaseModel
    probe: dict
    _inputs: list[dict] | None = None

    def inputs(self) -> list[dict]:
        if self._inputs is None:
            from ..merging.run import input_hashes

            self._inputs = input_hashes(self.recipe)
        return self._inputs

    def hashes(self) -> dict[str, str]:
        return {"base": next(i["sha256"] for i in self.inputs() if i["path"] == str(self.base.path))}

    def merge_key(self, versions: dict) -> str:
        return content_key("merge", self.recipe.data, self.inputs(), versions["mergekit"], versions["transformers"],
                           versions["peft"], versions["torch"])

    @property
    def converts_from_merged(self) -> bool:
        return True

    def merge(self, dest: Path, trust_remote_code: bool, shard_bytes: int | None = None) -> dict:
        from ..merging import MergeSpec, merge_models

        sized = {"shard_size": shard_bytes} if shard_bytes else {}
        merge_models(MergeSpec(self.recipe, dest, write_yaml=False, **sized), hashes=self.inputs())
        return {"method": self.recipe.method}

    def convert(self, dest: Path, outtype: str, tree, merged_dir: Path, scratch: Path,
                chat_template: str | None = None) -> None:
        convert_merged(merged_dir, dest, outtype, tree, scratch, chat_template)

    def chat_dir(self, merged: Callable[[], Path], scratch: Path) -> Path:
        """The merged model's own tokenizer and template, kept beside the output (the merged folder is
        temporary)."""
        source = merged()
        with atomic_dir(scratch) as tmp:
            for name in TOKENIZER_FILES + ("config.json", "generation_config.json"):
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
        return scratch

    def describe(self) -> str:
        return (f"merge recipe: {self.recipe_file} ({self.recipe.method}, {len(self.recipe.inputs)} inputs); "
                f"config from {self.base.path}")

    def announce(self) -> str:
        return f"merging {len(self.recipe.inputs)} models ({self.recipe.method}, mergekit)"

    def record(self) -> dict:
        return {"merge": {"recipe": str(self.recipe_file.resolve()), "method": self.recipe.method,
                          "config": self.recipe.data, "inputs": self.inputs(), "probe": self.probe or None}}


def check_shared_base(adapters: list[Adapter], override: Path | None, served: str, hint: str) -> BaseModel:
    """The one base every adapter of a multi-adapter export (Ollama tenants, vLLM --lora) was trained on.

    Served unmerged, the adapters run on that base with its tokenizer and chat template, so an
    adapter that ships its own (fine-tuning added tokens or changed the template) is refused too.
    The odd adapter is named; `served` says how the adapters are served, `hint` what to do instead.
    """
    bases = [resolve_base(a, override) for a in adapters]
    groups: dict[Path, list[int]] = {}
    for i, b in enumerate(bases):
        groups.setdefault(b.path.resolve(), []).append(i)
    if len(groups) > 1:
        main = max(groups.values(), key=len)
        odd = next(i for i in range(len(adapters)) if i not in main)
        raise AdapterError(
            f"adapters must share one base: {adapters[odd].path} is on {bases[odd].ref or bases[odd].path} "
            f"({bases[odd].path}), the others on {bases[main[0]].ref or bases[main[0]].path} ({bases[main[0]].path})",
            "export that adapter on its own, or pass --base if they really share one")
    base = bases[0]
    for a in adapters:
        differing = describe(a).tokenizer.differing_from(base.path)
        if differing:
            raise AdapterError(f"adapter {a.path} ships its own {', '.join(differing)}, different from the base's "
                               f"({base.path}); {served} with the shared base's tokenizer and chat template", hint)
    return base


def adapter_source(adapter_dir: Path, base_override: Path | None, allow_pickle: bool,
                   engine: str = "stream") -> AdapterSource:
    """Load the adapter, find its base, check that they fit (from the safetensors headers)."""
    adapter = load_adapter(adapter_dir, allow_pickle)
    base = resolve_base(adapter, base_override)
    check_base_weights(base, allow_pickle)
    n_modules = check_compatibility(adapter, base)
    if engine == "stream":
        plan_merge([adapter], base)  # refuses, before any work, what the stream cannot merge exactly
    return AdapterSource(adapter, base, n_modules, read_probe(adapter.path), engine)


def recipe_source(recipe_file: Path, allow_pickle: bool) -> RecipeSource:
    """Load and check the recipe; its probe.json sits next to it (a merge has no adapter folder)."""
    from ..merging import load_recipe

    recipe = load_recipe(recipe_file)
    donor = recipe.donor  # mergekit's donor of config and tokenizer; a LoRA donor's base
    base = BaseModel(donor.base if donor.is_lora else donor.path, "merge recipe", None)
    check_base_weights(base, allow_pickle)
    return RecipeSource(recipe_file, recipe, base, read_probe(recipe_file.parent))


def merge_source(adapter: Path | None, merge: Path | None, base: Path | None, allow_pickle: bool,
                 engine: str = "stream") -> MergeSource:
    if merge is not None:
        return recipe_source(merge, allow_pickle)
    return adapter_source(adapter, base, allow_pickle, engine)
