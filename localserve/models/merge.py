"""Merging LoRA adapters into their base, after checking that they fit.

Two engines, one arithmetic:
- the stream (`MergePlan`, the default): every base tensor an adapter changes is merged on its own,
  in fp32, exactly as peft does it (W + scale·(B·A), DoRA's magnitude, saved modules, lora biases),
  cast to the base's published dtype, and handed to whoever writes it — llama.cpp's converter
  (llamacpp/merged_convert.py) or a safetensors writer (`write_merged`). No full model is ever in
  memory; peak memory follows the largest tensor.
- peft itself (`merge_adapter`, `--merge-engine peft`): loads the whole base in fp32 and calls
  `merge_and_unload`. The reference the stream is tested against, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError
from ..progress import is_quiet, step
from .chatfiles import drop_config_template
from .checkpoint import model_parameters
from .lora import AdapterFacts, describe, open_safetensors, tokenizer_files, tokenizer_sources
from .resolve import Adapter, BaseModel, read_json

MERGE_ENGINES = ("stream", "peft")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    lora_modules: int


def base_tensor_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers only (no weights read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        with open_safetensors(f) as st:
            for name in st.keys():
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def check_compatibility(adapter: Adapter, base: BaseModel) -> int:
    """Every LoRA pair targets a module the base has, with matching in/out widths.

    Returns the number of adapted modules. Done on headers before loading anything, so a
    mismatched adapter fails in a second with the module named, not deep inside peft.
    """
    base_shapes = base_tensor_shapes(base.path)
    if not base_shapes:
        return 0  # pickle-only base (allowed by --allow-pickle): peft checks on load
    facts = describe(adapter, base_shapes, model_parameters(read_json(base.path / "config.json"), base_shapes))
    check_fits(facts, base_shapes, base.path)
    return len(facts.modules)


def check_fits(facts: AdapterFacts, base_shapes: dict[str, tuple[int, ...]], base_dir: Path) -> None:
    """AdapterError naming the first module of `facts` (described with `base_shapes`) the base cannot take."""
    if not facts.modules:
        raise AdapterError(f"{facts.weights} holds no LoRA tensors", "is this a PEFT LoRA adapter?")
    for m in facts.modules:
        if m.parameter is not None:
            continue  # a LoRA on a parameter is placed by the shapes it fits (lora.describe)
        if m.base_weight is None:
            raise AdapterError(
                f"the adapter targets {m.path}, which the base model in {base_dir} does not have",
                "pass --base with the model this adapter was trained on")
        stored = base_shapes[m.base_weight]
        a, b = m.a_shape, m.b_shape
        if not a or not b:
            continue
        if m.kind == "embedding":
            if a[-1] != stored[0] or b[0] != stored[-1]:
                raise AdapterError(f"the adapter's embedding LoRA on {m.path} does not match the base's vocabulary "
                                   f"{stored}", "the adapter was trained with a resized vocabulary; pass its base")
            continue
        if m.kind == "conv":  # (out, in/groups, *kernel)
            out_features, in_features = stored[0], stored[1]
        elif m.fan_in_fan_out:  # stored (in, out)
            out_features, in_features = stored[-1], stored[0]
        else:
            out_features, in_features = stored[0], stored[-1]
        if a[1] != in_features or b[0] != out_features:
            raise AdapterError(
                f"the adapter's {m.path} is {a[1]}->{b[0]} but the base's {m.base_weight} is "
                f"{in_features}->{out_features}", "this adapter was trained on a different base; pass --base")


def saved_dtype(config: dict) -> str:
    """The dtype the base was published in; the merge itself always runs in fp32."""
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def merge_adapter(adapter: Adapter, base: BaseModel, out_dir: Path, trust_remote_code: bool = False) -> MergeResult:
    """Write base + adapter, merged, as a Hugging Face folder at `out_dir` (which must be empty/new)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    n_modules = check_compatibility(adapter, base)
    config = json.loads((base.path / "config.json").read_text())
    dtype = saved_dtype(config)
    step(f"merging {n_modules} LoRA modules into {base.path.name} in float32 (saving as {dtype})")
    # fp32 on CPU: bf16 matmuls are slow on most CPUs, and the low-rank update B·A·scale is
    # often below bf16's resolution for a weight, so merging in bf16 can silently drop the adapter.
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code, low_cpu_mem_usage=True)
    peft_model = PeftModel.from_pretrained(model, adapter.path, is_trainable=False)
    merged = peft_model.merge_and_unload(progressbar=not is_quiet(), safe_merge=True)
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size="2GB")
    copy_chat_files(adapter.path, base.path, out_dir)
    return MergeResult(out_dir, dtype, n_modules)


# --- the stream ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorStep:
    """One change to one base tensor, in the order peft makes them."""

    adapter: int  # index into MergePlan.weights
    kind: str  # "replace" (a saved module's tensor), "lora", "dora", "bias" (lora_B's bias)
    module: str
    key: str | None = None  # replace: the saved tensor; bias: lora_B's bias
    a_key: str | None = None
    b_key: str | None = None
    magnitude_key: str | None = None  # dora
    scale: float = 1.0
    transpose: bool = False  # the update is (B·A)ᵀ: an embedding, or a fan_in_fan_out linear
    # A LoRA on stacked experts (peft's ParamWrapper on a 3-D parameter):
    experts: int = 1  # how many the parameter stacks
    layout: str | None = None  # "out_in": the parameter is (experts, out, in); "in_out": (experts, in, out)
    expert: int | None = None  # the one expert this tensor holds; None: the tensor is the whole parameter
    rows: tuple[int, int] | None = None  # the rows of the expert's matrix this tensor holds; None: all


class MergeError(InputError):
    """A merged tensor that is not finite: the adapter (or the base) holds NaN or Inf."""


@dataclass(frozen=True)
class MergePlan:
    """What every adapter does to every base tensor, in order; plain data, so a child process
    (llama.cpp's converter) can carry it out. `dtype` is the base's published dtype: every floating
    tensor leaves the stream in it, as peft's merged model is saved."""

    weights: tuple[str, ...]  # the adapters' weight files, in the order they are applied
    dtype: str
    steps: dict[str, tuple[TensorStep, ...]]

    def to_json(self) -> dict:
        return {"weights": list(self.weights), "dtype": self.dtype,
                "steps": {name: [dataclasses.asdict(s) for s in steps] for name, steps in self.steps.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "MergePlan":
        return cls(tuple(data["weights"]), data["dtype"],
                   {name: tuple(TensorStep(**{**s, "rows": tuple(s["rows"]) if s.get("rows") else None})
                                for s in steps) for name, steps in data["steps"].items()})

    def apply(self, name: str, tensor, reader: "AdapterTensors"):
        """The merged `tensor` named `name` (a base tensor), in the plan's dtype."""
        import torch

        out = getattr(torch, self.dtype) if tensor.is_floating_point() else tensor.dtype
        steps = self.steps.get(name, ())
        if not steps:
            return tensor if tensor.dtype == out else tensor.to(out)
        # peft loads the base in fp32 (an exact upcast) and merges there: a low-rank update is often
        # below bf16's resolution, so merging in bf16 could round the adapter away. The updates are
        # applied in place (the same arithmetic as peft's out-of-place ops, bit for bit) so a tensor
        # costs two fp32 copies of itself at most.
        w = tensor.to(torch.float32, copy=True)
        for s in steps:
            if s.kind == "replace":
                w = reader.get(s.adapter, s.key).to(torch.float32, copy=True)
            elif s.kind == "bias":
                w.add_(reader.get(s.adapter, s.key).to(torch.float32) * s.scale)
            else:
                a = reader.get(s.adapter, s.a_key).to(torch.float32)
                b = reader.get(s.adapter, s.b_key).to(torch.float32)
                if s.experts > 1:
                    delta = _expert_update(a, b, s).mul_(s.scale)
                else:
                    delta = b @ a
                    delta = (delta.T if s.transpose else delta).mul_(s.scale)
                if s.kind == "dora":
                    # peft's DoRA merge: rescale every output row of W + ΔW to the trained magnitude,
                    # with the norm taken before this adapter's update is kept.
                    rows = (w.T if s.transpose else w) + 1 * (delta.T if s.transpose else delta)
                    factor = reader.get(s.adapter, s.magnitude_key).to(torch.float32) / torch.linalg.norm(rows, dim=1)
                    factor = factor.view(-1, 1)
                    w = (factor.T if s.transpose else factor) * (w + delta)
                else:
                    w.add_(delta)
                del delta
            if not torch.isfinite(w).all():
                raise MergeError(f"merging {self.weights[s.adapter]} into {name} gives NaN or Inf "
                                 f"({s.kind} of {s.module})",
                                 "the adapter holds non-finite values (a diverged training run?); retrain or "
                                 "export an earlier checkpoint")
        return w.to(out)


# peft's ParamWrapper.get_delta_weight, by the parameter's layout
_EXPERT_EINSUM = {"out_in": "o r e, e r i -> e o i", "in_out": "o r e, e r i -> e i o"}


def _expert_update(a, b, s: TensorStep):
    """B·A of a LoRA on stacked experts, for the part of the parameter one stored tensor holds. peft's A
    is (experts·r, in), expert-major; its B is (out, r·experts), expert-minor; each expert's update is one
    einsum term. Computing only the expert this tensor holds gives the same bits as peft's whole einsum
    (tests/test_stream_merge_architectures.py), and a tensor's worth of memory instead of a layer's."""
    import torch

    a = a.reshape(s.experts, -1, a.shape[-1])
    b = b.reshape(b.shape[0], -1, s.experts)
    if s.expert is not None:
        a, b = a[s.expert:s.expert + 1], b[:, :, s.expert:s.expert + 1]
    delta = torch.einsum(_EXPERT_EINSUM[s.layout], b, a)
    if s.expert is not None:
        delta = delta[0]
    if s.rows is not None:
        delta = delta.narrow(0 if s.expert is not None else 1, s.rows[0], s.rows[1] - s.rows[0])
    return delta


class AdapterTensors:
    """The adapters' tensors, read on demand (they are small: a LoRA is a few MB per billion weights)."""

    def __init__(self, weights: tuple[str, ...]):
        self.weights = weights
        self._open: dict[int, object] = {}

    def get(self, adapter: int, key: str):
        if adapter not in self._open:
            path = Path(self.weights[adapter])
            if path.suffix == ".safetensors":
                self._open[adapter] = open_safetensors(path).__enter__()
            else:  # adapter_model.bin, accepted with --allow-pickle: tensors only, never code
                import torch

                self._open[adapter] = torch.load(path, map_location="cpu", weights_only=True)
        source = self._open[adapter]
        return source.get_tensor(key) if hasattr(source, "get_tensor") else source[key]


def plan_merge(adapters: list[Adapter], base: BaseModel) -> MergePlan:
    """The plan for merging `adapters`, in order, into `base`. Anything the stream cannot merge exactly
    as peft would is refused here, before any work, naming the module."""
    base_shapes = base_tensor_shapes(base.path)
    if not base_shapes:
        raise AdapterError(f"the base model in {base.path} has no safetensors weights to stream",
                           "convert it to safetensors, or pass --merge-engine peft")
    config = read_json(base.path / "config.json")
    parameters = model_parameters(config, base_shapes)
    steps: dict[str, list[TensorStep]] = {}
    for i, adapter in enumerate(adapters):
        facts = describe(adapter, base_shapes, parameters)
        check_fits(facts, base_shapes, base.path)
        where = adapter.path / "adapter_config.json"
        other = [v for v in facts.variants if v != "use_dora"]
        if other:
            raise AdapterError(f"{where} uses {', '.join(other)}, which localserve cannot merge exactly",
                               "merge it with peft yourself and export the merged folder, or retrain as plain LoRA")
        for t in facts.saved + facts.biases:
            if t.base_tensor is None or base_shapes[t.base_tensor] != t.shape:
                raise AdapterError(f"{adapter.weights} saves {t.key} {list(t.shape)}, which replaces no tensor of "
                                   f"the base in {base.path}", "pass --base with the model this adapter was trained on")
            steps.setdefault(t.base_tensor, []).append(TensorStep(i, "replace", t.module, key=t.key))
        # A tied lm_head's update lands on the input embedding after the embedding's own: HF models
        # list lm_head last, and peft merges in module order.
        for m in sorted(facts.modules, key=lambda m: m.tied):
            if m.a_shape and m.a_shape[0] != m.rank * m.experts:
                raise AdapterError(f"{where} gives {m.path} rank {m.rank}, but its tensors have rank "
                                   f"{m.a_shape[0] // m.experts}",
                                   "the config does not belong to these weights; re-save the adapter with peft")
            if m.parameter is not None:
                for name, tensor_step in _parameter_steps(i, m, adapter):
                    steps.setdefault(name, []).append(tensor_step)
                continue
            if m.kind == "conv":
                raise AdapterError(f"{adapter.path} adapts the convolution {m.path}; localserve merges linear and "
                                   "embedding LoRA", "merge it with peft yourself and export the merged folder")
            if m.magnitude_key and m.kind != "linear":
                raise AdapterError(f"{adapter.path} puts DoRA on the {m.kind} {m.path}; localserve merges DoRA on "
                                   "linear layers", "merge it with peft yourself and export the merged folder")
            kind = "dora" if m.magnitude_key else "lora"
            steps.setdefault(m.base_weight, []).append(TensorStep(
                i, kind, m.path, a_key=m.a_key, b_key=m.b_key, magnitude_key=m.magnitude_key, scale=m.scale,
                transpose=m.kind == "embedding" or m.fan_in_fan_out))
            if m.bias_key:
                bias = m.base_weight.removesuffix(".weight") + ".bias"
                if bias not in base_shapes:
                    raise AdapterError(f"{where} trains a bias for {m.path} (lora_bias), but the base's layer has "
                                       "none", "pass --base with the model this adapter was trained on")
                steps.setdefault(bias, []).append(TensorStep(i, "bias", m.path, key=m.bias_key, scale=m.scale))
    plan = MergePlan(tuple(str(a.weights) for a in adapters), saved_dtype(config),
                     {name: tuple(s) for name, s in steps.items()})
    check_finite(plan)
    return plan


def _parameter_steps(i: int, m, adapter: Adapter) -> list[tuple[str, TensorStep]]:
    """(stored tensor, its step) for a LoRA on a parameter: the whole update on a parameter stored as
    it is, each expert's (and each of its row blocks') on the tensor transformers stacks it from."""
    if m.magnitude_key or m.bias_key:  # peft's ParamWrapper refuses both: no adapter of peft's holds them
        raise AdapterError(f"{adapter.path} puts DoRA or a LoRA bias on the parameter {m.path}; peft merges neither "
                           "on a parameter", "retrain it as plain LoRA")
    if m.parameter.unmapped:
        raise AdapterError(f"{adapter.path} puts a LoRA on {m.path}, which {m.parameter.unmapped}; localserve cannot "
                           "map its merge onto the stored tensors", "export with --merge-engine peft")
    if m.kind == "experts" and m.expert_layout is None:
        raise AdapterError(f"{adapter.path} puts a LoRA on {m.path}, whose experts are square "
                           f"{list(m.parameter.shape[1:])}: its shape does not show whether peft reads it as "
                           "(experts, out, in) or (experts, in, out)", "export with --merge-engine peft")
    return [(piece.tensor, TensorStep(i, "lora", m.path, a_key=m.a_key, b_key=m.b_key, scale=m.scale,
                                      experts=m.experts, layout=m.expert_layout, expert=piece.expert, rows=piece.rows))
            for piece in m.parameter.pieces]


def check_finite(plan: MergePlan) -> None:
    """Every adapter tensor the plan reads holds finite values (an adapter is small: this is cheap,
    and a diverged training run is then one line before any work, naming the tensor)."""
    import torch

    reader = AdapterTensors(plan.weights)
    for steps in plan.steps.values():
        for s in steps:
            for key in filter(None, (s.key, s.a_key, s.b_key, s.magnitude_key)):
                if not torch.isfinite(reader.get(s.adapter, key)).all():
                    raise MergeError(f"{plan.weights[s.adapter]} holds NaN or Inf in {key}",
                                     "the adapter comes from a diverged training run; retrain it or export an "
                                     "earlier checkpoint")


def merged_tensors(plan: MergePlan, base_dir: Path, reader: AdapterTensors | None = None) -> list:
    """Every tensor of the base as the merged model has it, each produced (read, merged, cast) only
    when a writer asks for it."""
    from .tensors import PlannedTensor, read_folder, read_tensor

    reader = reader or AdapterTensors(plan.weights)
    stored = read_folder(base_dir)
    missing = set(plan.steps) - {t.name for t in stored}
    if missing:
        raise AdapterError(f"the merge changes {sorted(missing)[0]}, which no safetensors file of {base_dir} holds",
                           "pass --base with the complete model folder")
    out = []
    for t in stored:
        floating = t.torch_dtype.is_floating_point
        out.append(PlannedTensor(t.name, plan.dtype if floating else str(t.torch_dtype).removeprefix("torch."),
                                 t.shape, lambda t=t: plan.apply(t.name, read_tensor(t), reader)))
    return out


def merge_to_folder(adapters: list[Adapter], base: BaseModel, out_dir: Path, shard_bytes: int | None = None) -> MergeResult:
    """The stream's counterpart of `merge_adapter`: `adapters` merged, in order, into `base`, written to
    the (new) folder `out_dir` as shards of at most `shard_bytes`, with the config, the tokenizer and
    chat template (the last adapter's own files win) and generation_config.json."""
    from .tensors import DEFAULT_SHARD_BYTES, write_shards

    plan = plan_merge(adapters, base)
    n_modules = len({(s.adapter, s.module) for steps in plan.steps.values() for s in steps if s.kind in ("lora", "dora")})
    step(f"merging {n_modules} LoRA updates into {base.path.name} tensor by tensor, in float32 "
         f"(saving as {plan.dtype})")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_shards(merged_tensors(plan, base.path), out_dir, shard_bytes or DEFAULT_SHARD_BYTES, f"merge {out_dir.name}")
    shutil.copyfile(base.path / "config.json", out_dir / "config.json")
    copy_chat_files(chat_adapter(adapters), base.path, out_dir)
    return MergeResult(out_dir, plan.dtype, n_modules)


def copy_chat_files(adapter_dir: Path | None, base_dir: Path, out_dir: Path) -> None:
    """The tokenizer, chat template and generation_config.json a merged model gets: the adapter's own
    files win, each falling back to the base's."""
    own = tokenizer_files(adapter_dir) if adapter_dir is not None else None
    sources = tokenizer_sources(own, base_dir)
    for name, src in sources.items():
        shutil.copyfile(src, out_dir / name)
    config = sources.get("tokenizer_config.json")
    if own is not None and own.template is not None and config is not None and config.parent != own.folder:
        drop_config_template(out_dir)  # the base's template would win in llama.cpp's converter
    generation = adapter_dir / "generation_config.json" if adapter_dir is not None else None
    if generation is None or not generation.is_file():
        generation = base_dir / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, out_dir / "generation_config.json")


def merged_model_view(adapters: list[Adapter], base: BaseModel, dest: Path) -> Path:
    """A folder that reads like the merged model to llama.cpp's converter, with the base's weights:
    links to the base's config and safetensors, and the tokenizer, chat template and generation
    config the merged model gets. The weights are merged as the converter streams them."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in [base.path / "config.json", *base.path.glob("*.safetensors"), base.path / "model.safetensors.index.json"]:
        if src.is_file() and not (dest / src.name).exists():
            (dest / src.name).symlink_to(src.resolve())
    copy_chat_files(chat_adapter(adapters), base.path, dest)
    return dest


def chat_adapter(adapters: list[Adapter]) -> Path | None:
    """The adapter whose tokenizer and chat template a merge of `adapters` gets: the last that ships any."""
    for adapter in reversed(adapters):
        if tokenizer_files(adapter.path).files or (adapter.path / "generation_config.json").is_file():
            return adapter.path
    return adapters[-1].path if adapters else None
