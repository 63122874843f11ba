"""Merge recipes: a mergekit YAML read as is, or built from the shorthand; validated up front.

Validation happens on plain data and file headers only (config.json, safetensors headers), so a
bad recipe fails in a second with one line, before any weight is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError, UnknownName
from .methods import method_names, method_spec, needs_base

# Parameter ranges the user can get wrong in a way mergekit would only notice mid-merge (or never).
_RANGES = {
    "t": (0.0, 1.0, True, "t must be within [0, 1] (0 = the base or first model, 1 = the other one)"),
    "density": (0.0, 1.0, False, "density must be within (0, 1] (the fraction of each delta kept)"),
}
_TOKENIZER_KEYWORDS = ("union", "base")


class RecipeError(InputError):
    """A merge recipe that cannot be run as written."""


@dataclass(frozen=True)
class ModelInput:
    """One model the recipe references: a full model folder, or a LoRA adapter (with its base)."""

    ref: str  # as it appears in the resolved recipe ("path" or "base+adapter")
    path: Path  # the full model folder, or the adapter folder
    base: Path | None = None  # for a LoRA adapter: the model it is merged into

    @property
    def is_lora(self) -> bool:
        return self.base is not None


@dataclass(frozen=True)
class Recipe:
    """A validated mergekit configuration with every model reference made an absolute local path."""

    data: dict
    source: str  # the YAML file, or "the command line"
    inputs: tuple[ModelInput, ...] = field(default=())

    @property
    def method(self) -> str:
        return self.data["merge_method"]

    @property
    def donor(self) -> ModelInput:
        """The input whose config and tokenizer the merged model gets (mergekit's own rule)."""
        ref = self.data.get("base_model") or next(iter(_model_refs(self.data)))
        return next(i for i in self.inputs if i.ref == ref)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False)


def load_recipe(path: Path) -> Recipe:
    """Read a mergekit YAML file; relative model paths are taken from the YAML's folder if not from cwd."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"merge recipe {path} does not exist", "pass a mergekit YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise RecipeError(f"{path} is not valid YAML at {where}: {e.problem or e.context}",
                          "fix the YAML there") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path} is not valid YAML: {' '.join(str(e).split())}", "fix the YAML") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path} holds no mergekit configuration (expected a mapping with merge_method)",
                          "see mergekit's examples: merge_method, base_model, models")
    return validate(data, str(path), path.parent)


def shorthand_recipe(method: str, models: tuple[Path, ...] | list[Path], base: Path | None = None,
                     t: float | None = None, density: float | None = None,
                     weights: tuple[float, ...] | list[float] = (), dtype: str = "float32") -> Recipe:
    """The mergekit configuration for `--method M [--t|--density|--weight] [--base B] A B ...`.

    Two-model methods that need a base (slerp, nearswap, ...) use the first model as the base,
    as mergekit's own examples do: t = 0 is the first model, t = 1 the second.
    """
    spec = method_spec(method)
    params = {p.name: p for p in spec.parameters}
    models = [str(m) for m in models]
    if not models:
        raise RecipeError(f"--method {method} needs the models to merge", "list them: localserve merge ... A B -o OUT")
    if weights and len(weights) not in (1, len(models)):
        raise RecipeError(f"{len(weights)} --weight values for {len(models)} models", "give one per model, or one for all")
    given = {"t": t, "density": density, "weight": list(weights) or None}
    for name, value in given.items():
        if value is not None and name not in params:
            valid = ", ".join(params) or "none"
            raise RecipeError(f"--method {method} takes no --{name} (its parameters: {valid})",
                              f"drop --{name}")
    data: dict[str, Any] = {"merge_method": method}
    two_model = spec.contract.max_inputs == 2 and needs_base(method)
    if base is not None:
        data["base_model"] = str(base)
    elif two_model:
        data["base_model"] = models[0]
    if two_model and base is not None and str(base) not in models:
        models = [str(base)] + models
    entries = []
    for i, m in enumerate(models):
        entry: dict[str, Any] = {"model": m}
        p: dict[str, Any] = {}
        is_base = m == data.get("base_model")
        if "weight" in params and not (is_base and params["weight"].scope.value == "non_base"):
            if weights:
                p["weight"] = float(weights[i] if len(weights) > 1 else weights[0])
            elif params["weight"].required:
                p["weight"] = 1.0
        if density is not None and "density" in params and not is_base:
            p["density"] = float(density)
        if p:
            entry["parameters"] = p
        entries.append(entry)
    data["models"] = entries
    if t is not None:
        data["parameters"] = {"t": float(t)}
    data["dtype"] = dtype
    recipe = validate(data, "the command line", Path.cwd())
    # compute in `dtype`, but save in the dtype the models were published in (a bf16 model stays bf16)
    from ..models.merge import saved_dtype

    donor = recipe.donor
    config = json.loads(((donor.base if donor.is_lora else donor.path) / "config.json").read_text(encoding="utf-8"))
    if saved_dtype(config) != dtype:
        recipe = Recipe({**recipe.data, "out_dtype": saved_dtype(config)}, recipe.source, recipe.inputs)
    return recipe


def validate(data: dict, source: str, relative_to: Path) -> Recipe:
    """Check method, base, parameter ranges and inputs; make model paths absolute. One line per problem."""
    method = data.get("merge_method")
    if not method:
        raise RecipeError(f"{source} names no merge_method", f"add `merge_method:` ({', '.join(method_names())})")
    if not isinstance(method, str):
        raise RecipeError(f"{source}: merge_method must be a name, not {method!r}")
    spec = method_spec(method)  # UnknownName listing the valid methods
    try:  # structure first, on the text as written (model references are not looked up here)
        from mergekit.config import MergeConfiguration

        MergeConfiguration.model_validate(data)
    except Exception as e:  # pydantic ValidationError, or RuntimeError from mergekit's own validators
        raise RecipeError(f"{source} is not a valid mergekit configuration: {_first_error(e)}",
                          "see mergekit's README for the configuration format") from e
    data = _resolve_paths(data, source, relative_to)
    if needs_base(method) and not _has_base(data):
        raise RecipeError(f"merge method {method} needs a base model, and {source} names none",
                          "add `base_model: PATH` (shorthand: --base PATH)")
    for name, value, where in _parameters(data):
        if name in _RANGES:
            low, high, low_inclusive, text = _RANGES[name]
            for number in _numbers(value):
                if not ((low <= number if low_inclusive else low < number) and number <= high):
                    raise RecipeError(f"{source}: {name} = {number} in {where}: {text}")
    if spec.contract.max_inputs == 2 and data.get("models") and len(data["models"]) != 2:
        raise RecipeError(f"merge method {method} merges exactly 2 models; {source} lists {len(data['models'])}",
                          "list two models (the first is the base for slerp)")
    _check_required_parameters(spec, data, source)
    inputs = tuple(_describe_input(ref, source) for ref in dict.fromkeys(_all_refs(data)))
    _check_compatible(inputs, source)
    return Recipe(data, source, inputs)


# --- model references ---------------------------------------------------------------------------

def _model_refs(data: dict) -> Iterator[str]:
    """Every model reference in models/slices/modules (not the tokenizer source)."""
    def from_block(block: dict) -> Iterator[str]:
        for m in block.get("models") or ():
            yield m["model"] if isinstance(m, dict) else m
        for s in block.get("slices") or ():
            if s.get("base_model"):
                yield s["base_model"]
            for src in s.get("sources") or ():
                yield src["model"]

    yield from from_block(data)
    for module in (data.get("modules") or {}).values():
        yield from from_block(module)


def _all_refs(data: dict) -> Iterator[str]:
    if data.get("base_model"):
        yield data["base_model"]
    yield from _model_refs(data)
    ts = data.get("tokenizer_source")
    if ts and ts not in _TOKENIZER_KEYWORDS:
        yield ts


def _resolve_paths(data: dict, source: str, relative_to: Path) -> dict:
    """A copy of `data` whose model references are absolute local paths ("path" or "base+adapter")."""
    data = json.loads(json.dumps(data))  # deep copy of plain YAML data

    def resolve(ref: Any) -> str:
        if not isinstance(ref, str):
            raise RecipeError(f"{source}: model reference {ref!r} is not a path",
                              "write each model as a local folder path (or BASE+ADAPTER)")
        return "+".join(str(_local(part, source, relative_to)) for part in ref.split("+"))

    def fix_block(block: dict) -> None:
        for i, m in enumerate(block.get("models") or ()):
            if isinstance(m, dict) and "model" in m:
                m["model"] = resolve(m["model"])
            else:
                raise RecipeError(f"{source}: models[{i}] needs a `model:` path")
        for s in block.get("slices") or ():
            if s.get("base_model"):
                s["base_model"] = resolve(s["base_model"])
            for src in s.get("sources") or ():
                if "model" in src:
                    src["model"] = resolve(src["model"])

    if data.get("base_model"):
        data["base_model"] = resolve(data["base_model"])
    fix_block(data)
    for module in (data.get("modules") or {}).values():
        if isinstance(module, dict):
            fix_block(module)
    ts = data.get("tokenizer_source")
    if ts and ts not in _TOKENIZER_KEYWORDS:
        data["tokenizer_source"] = resolve(ts)
    return data


def _local(part: str, source: str, relative_to: Path) -> Path:
    from ..models.embedded import EMBEDDED, embedded_base

    p = Path(part).expanduser()
    for candidate in ((p,) if p.is_absolute() else (p, relative_to / p)):
        if candidate.is_dir():
            return candidate.resolve()
    if part in EMBEDDED:  # a hub id localserve ships a copy of, as for an adapter's base
        return embedded_base(part).resolve()
    raise RecipeError(f"{source}: model {part!r} is not a local folder",
                      "localserve never downloads models: point to a local copy")


def _describe_input(ref: str, source: str) -> ModelInput:
    from ..models.resolve import load_adapter, resolve_base

    parts = [Path(p) for p in ref.split("+")]
    if len(parts) == 2:  # mergekit's BASE+ADAPTER form
        load_adapter(parts[1])
        _require_model(parts[0], source)
        return ModelInput(ref, parts[1], parts[0])
    path = parts[0]
    if (path / "adapter_config.json").is_file():
        adapter = load_adapter(path)
        return ModelInput(ref, path, resolve_base(adapter).path)
    _require_model(path, source)
    return ModelInput(ref, path)


def _require_model(path: Path, source: str) -> None:
    if not (path / "config.json").is_file():
        raise RecipeError(f"{source}: {path} is neither a model folder (config.json) nor a LoRA adapter",
                          "point to a Hugging Face model folder or a PEFT adapter folder")
    if not any(path.glob("*.safetensors")):
        raise RecipeError(f"{source}: {path} has no *.safetensors weights (pickle .bin files are never loaded)",
                          "re-save the model with safe_serialization=True")


def _check_compatible(inputs: tuple[ModelInput, ...], source: str) -> None:
    """Same architecture, and the same shape for every tensor the models share."""
    from ..models.merge import base_tensor_shapes, check_compatibility
    from ..models.resolve import BaseModel, load_adapter

    first_arch = first_shapes = first_path = None
    for item in inputs:
        model_dir = item.base if item.is_lora else item.path
        if item.is_lora:
            check_compatibility(load_adapter(item.path), BaseModel(item.base, "merge recipe", None))
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
        shapes = base_tensor_shapes(model_dir)
        if first_arch is None:
            first_arch, first_shapes, first_path = arch, shapes, model_dir
            continue
        if arch != first_arch:
            raise RecipeError(f"{source}: {model_dir} is a {arch} but {first_path} is a {first_arch}; "
                              "models of different architectures cannot be merged",
                              "merge fine-tunes of one base model")
        for name in sorted(shapes.keys() & first_shapes.keys()):
            if shapes[name] != first_shapes[name]:
                raise RecipeError(f"{source}: tensor {name} is {list(shapes[name])} in {model_dir} but "
                                  f"{list(first_shapes[name])} in {first_path}; the models differ in shape",
                                  "merge fine-tunes of one base model")


# --- parameters ---------------------------------------------------------------------------------

def _has_base(data: dict) -> bool:
    if data.get("base_model"):
        return True
    slices = data.get("slices") or []
    return bool(slices) and all(s.get("base_model") for s in slices)


def _parameters(data: Any, where: str = "the recipe") -> Iterator[tuple[str, Any, str]]:
    """(name, value, where) for every parameter setting anywhere in the recipe."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "parameters" and isinstance(value, dict):
                for name, setting in value.items():
                    yield name, setting, where
            else:
                yield from _parameters(value, _where(where, data, key))
    elif isinstance(data, list):
        for item in data:
            yield from _parameters(item, where)


def _check_required_parameters(spec, data: dict, source: str) -> None:
    """A parameter without a default must be set globally or for every (non-base) model.

    Checked for the `models:` form; slices and modules are left to mergekit.
    """
    if not data.get("models"):
        return
    global_params = data.get("parameters") or {}
    base = data.get("base_model")
    for p in spec.parameters:
        if not p.required or p.name in global_params:
            continue
        entries = data["models"]
        if p.scope.value == "non_base":
            entries = [m for m in entries if m.get("model") != base]
        elif p.scope.value == "shared":
            entries = [None]
        missing = [m for m in entries if m is None or p.name not in (m.get("parameters") or {})]
        if missing:
            where = ("`parameters:`" if p.scope.value == "shared"
                     else f"each model's `parameters:` (missing for {Path(missing[0]['model']).name})")
            raise RecipeError(f"merge method {spec.name} needs parameter {p.name}, and {source} does not set it",
                              f"add `{p.name}: ...` to {where} (shorthand: --{p.name})")


def _where(where: str, parent: dict, key: str) -> str:
    if isinstance(parent.get("model"), str) and key != "model":
        return f"the parameters of {Path(parent['model'].split('+')[-1]).name}"
    return where


def _numbers(setting: Any) -> Iterator[float]:
    """Numbers in a setting: scalar, gradient list, or [{filter, value}] conditions."""
    if isinstance(setting, bool):
        return
    if isinstance(setting, (int, float)):
        yield float(setting)
    elif isinstance(setting, list):
        for item in setting:
            yield from _numbers(item)
    elif isinstance(setting, dict) and "value" in setting:
        yield from _numbers(setting["value"])


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
        except Exception:  # noqa: BLE001 - fall back to the exception's own text
            pass
    return " ".join(str(e).split())[:300]


__all__ = ["ModelInput", "Recipe", "RecipeError", "UnknownName", "load_recipe", "shorthand_recipe", "validate"]
