"""Run a validated recipe with mergekit: LoRA inputs first merged into their base, then `run_merge`."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, ToolError
from ..faults import MERGE, fault_point
from ..fsutil import atomic_dir, sha256_file, sha256_tree, write_text
from ..lineage import Artifact, ExportRecord, now, tool_versions, write_record
from ..progress import is_quiet, step
from .recipe import Recipe

DEFAULT_SHARD_SIZE = 1_000_000_000  # bytes; mergekit holds about one output shard in memory at a time
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class MergeSpec:
    """What `localserve merge` needs. `seed` fixes the random choices of DARE-style methods."""

    recipe: Recipe
    out: Path
    shard_size: int = DEFAULT_SHARD_SIZE
    seed: int = 0
    write_yaml: bool = True  # the recipe as YAML next to the output: OUT.yaml

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.shard_size <= 0:
            raise InputError(f"--shard-size must be positive, not {self.shard_size}")

    @property
    def yaml_path(self) -> Path:
        return self.out.with_name(self.out.name + ".yaml")


@dataclass
class MergeResult:
    out: Path
    method: str
    inputs: list[dict]  # [{"path", "sha256"}] for every model and adapter the recipe read
    yaml_path: Path | None

    def to_json(self) -> dict:
        return {"out": str(self.out), "method": self.method, "inputs": self.inputs,
                "yaml": str(self.yaml_path) if self.yaml_path else None}


def input_hashes(recipe: Recipe) -> list[dict]:
    """sha256 of every folder the merge reads: each model, each adapter and each adapter's base."""
    folders: dict[Path, None] = {}
    for item in recipe.inputs:
        if item.is_lora:
            folders[item.base] = None
        folders[item.path] = None
    return [{"path": str(p), "sha256": sha256_tree(p)} for p in folders]


def merge_models(spec: MergeSpec, hashes: list[dict] | None = None) -> MergeResult:
    """Write the merged model as a Hugging Face folder at `spec.out` (atomically)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe = spec.recipe
    hashes = hashes if hashes is not None else input_hashes(recipe)
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.out.name}.lora.", dir=spec.out.parent) as scratch:
        data = _with_loras_merged(recipe, Path(scratch))
        config = MergeConfiguration.model_validate(data)
        # What bounds memory here (scripts/bench_merge.py measures it): mergekit memory-maps each
        # input's safetensors shards and reads them tensor by tensor, keeping one shard per input
        # open; the writer holds one output shard until out_shard_size (bytes) is reached, and with
        # async_write off never more than that one. lazy_unpickle only concerns pickle weights,
        # which are refused before we get here; low_cpu_memory would keep results on a GPU.
        options = MergeOptions(out_shard_size=spec.shard_size, random_seed=spec.seed, lazy_unpickle=False,
                               low_cpu_memory=False, async_write=False, copy_tokenizer=True,
                               trust_remote_code=False, quiet=is_quiet(), write_model_card=True)
        n = len(recipe.inputs)
        step(f"merging {n} input{'s' * (n != 1)} with {recipe.method} (mergekit, shards of at most "
             f"{spec.shard_size / 1e9:g} GB)")
        with atomic_dir(spec.out) as tmp:
            try:
                run_merge(config, str(tmp), options, config_source=recipe.to_yaml())
            except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as e:
                first = " ".join(str(e).split())[:400]
                raise ToolError("mergekit", f"the {recipe.method} merge failed: {first}",
                                hint="check the recipe's parameters, and that every input is a fine-tune of one base") from e
            finally:
                _release_inputs()
            if not any((tmp / name).is_file() for name in TOKENIZER_MARKERS):
                raise ToolError("mergekit", f"the merged model has no tokenizer (donor: {recipe.donor.path})",
                                hint="set tokenizer_source in the recipe to a model with a tokenizer")
            fault_point(MERGE)
            write_record(tmp, _record(spec, hashes, tmp))
    yaml_path = write_text(spec.yaml_path, recipe.to_yaml()) if spec.write_yaml else None
    step(f"merged model written to {spec.out}")
    return MergeResult(spec.out, recipe.method, hashes, yaml_path)


def _record(spec: MergeSpec, hashes: list[dict], folder: Path) -> ExportRecord:
    """The merged folder's localserve.json: a later export (or the version store) can tell that this
    model is a merge, and of what."""
    recipe = spec.recipe
    versions = tool_versions(("localserve", "mergekit", "transformers", "peft", "torch", "safetensors"))
    return ExportRecord(
        kind="merge", name=spec.out.name, spec={"recipe": recipe.data, "source": recipe.source,
                                                "shard_size": spec.shard_size, "seed": spec.seed},
        localserve_version=versions.pop("localserve"), created_at=now(),
        merge={"method": recipe.method, "config": recipe.data, "inputs": hashes},
        artifacts=tuple(Artifact(p.name, size=p.stat().st_size, sha256=sha256_file(p))
                        for p in sorted(folder.glob("*.safetensors"))),
        tools=versions)


def _release_inputs() -> None:
    """Drop mergekit's process-wide loaders: they keep each input's last shard mapped after the
    merge (memory the export's next stages need) and would serve a stale index if a folder of
    the same path were merged again with other contents."""
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    cache.flush_all()
    cache.loaders.clear()


def _with_loras_merged(recipe: Recipe, scratch: Path) -> dict:
    """The recipe's data with each LoRA input replaced by its merged full model.

    We merge with localserve's streaming merge (models.merge.merge_to_folder: peft's arithmetic, tensor by
    tensor) rather than mergekit's `model+lora` form: it checks every LoRA module against the base first
    (one clear error instead of a peft traceback), merges in fp32 (a bf16 merge can round the low-rank
    update away), never holds a whole model in memory, and carries the adapter's own tokenizer and chat
    template, which mergekit's form drops.
    """
    from ..models.merge import merge_to_folder
    from ..models.resolve import BaseModel, load_adapter

    replacements: dict[str, str] = {}
    loras = [item for item in recipe.inputs if item.is_lora]
    for i, item in enumerate(loras):
        target = scratch / f"{i}-{item.path.name}"
        merge_to_folder([load_adapter(item.path)], BaseModel(item.base, "merge recipe", None), target)
        replacements[item.ref] = str(target)
    if not replacements:
        return recipe.data
    text = json.dumps(recipe.data)
    data = json.loads(text)

    def swap(node):
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return replacements.get(node, node) if isinstance(node, str) else node

    return swap(data)
