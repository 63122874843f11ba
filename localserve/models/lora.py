"""What a LoRA adapter is, read once from adapter_config.json and the weights' header, as peft reads it.

    describe(adapter, base_shapes) -> AdapterFacts
        per adapted module (LoraModule): its path, kind, rank and alpha after rank_pattern/alpha_pattern,
            peft's scale, fan_in_fan_out, the A/B tensors, DoRA magnitude and lora bias keys, and the base
            tensor it updates (given the base's tensor shapes);
        adapter-wide: rsLoRA, DoRA, bias, layers_to_transform/layers_pattern, modules_to_save from the
            config and the whole tensors the weights hold, LoRA variants, and the tokenizer and chat
            template files the adapter ships (TokenizerFiles).

No weight is read: safetensors headers only, and a pickled adapter (accepted with --allow-pickle) is
opened on torch's meta device with weights_only. The tenant rules, the vLLM rules and the merge all
refuse or accept from these facts, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError
from .checkpoint import Parameter, Piece
from .resolve import Adapter

# Files that define tokenization and chat formatting. Fine-tuning often changes the chat template or
# adds tokens and saves these beside the adapter; the adapter's copies then win over the base's.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)
# Where transformers finds a chat template, in its order of preference; tokenizer_config.json is the
# last resort, and only when it has a "chat_template" entry.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

# peft's defaults for what an adapter_config.json leaves out (LoraConfig).
_DEFAULT_R = 8
_DEFAULT_ALPHA = 8

# LoraConfig fields that turn a LoRA into another computation (peft marks them is_lora_variant), and
# init_lora_weights values that do (its lora_variants).
_VARIANT_FIELDS = ("use_dora", "velora_config", "alora_invocation_tokens", "monteclora_config", "use_bdlora",
                   "arrow_config", "kasa_config")
_VARIANT_INITS = ("mica",)

# What the input embedding is called in transformers' model classes (Llama and most since; GPT-2;
# BLOOM/BERT; GPT-NeoX; some Llama ports): the tensor a tied lm_head shares.
_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")

_PEFT_PREFIX = "base_model.model."
# One LoRA tensor as peft saves it, the adapter name removed (older files may still hold it):
#   <module>.lora_A.weight, <module>.lora_B.weight, <module>.lora_B.bias (lora_bias),
#   <module>.lora_embedding_A, <module>.lora_embedding_B, <module>.lora_magnitude_vector (DoRA)
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                       r"lora_magnitude_vector)(?:\.(?P<adapter>[^.]+?))??(?:\.(?P<param>weight|bias))?$")
# The wrapper segments peft puts between a module and its own tensors: ModulesToSaveWrapper's copy
# (older files) and the base layer of a LoRA-wrapped module (saved embedding layers, trained biases).
_WRAPPER = re.compile(r"\.(?:modules_to_save\.[^.]+|original_module|base_layer)(?=\.[^.]+$)")


@dataclass(frozen=True)
class LoraKey:
    """One tensor name of an adapter's weights, parsed."""

    module: str  # the module path in the base model, e.g. model.layers.0.self_attn.q_proj
    part: str  # lora_A, lora_B, lora_embedding_A, lora_embedding_B, lora_magnitude_vector
    param: str | None  # weight, bias, or None for a bare parameter (embedding A/B, DoRA magnitude)


def parse_key(key: str) -> LoraKey | None:
    """The LoRA part a tensor name holds, or None for any other tensor (a whole saved module, a bias)."""
    m = _LORA_KEY.match(key.removeprefix(_PEFT_PREFIX))
    return LoraKey(m.group("module"), m.group("part"), m.group("param")) if m else None


def pattern_key(patterns, module: str) -> str | None:
    """The rank_pattern/alpha_pattern key that applies to `module`: the first, in the config's order,
    that matches the whole path or a suffix of it after a dot (peft's get_pattern_key); None if none."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module if module in patterns else None  # peft then looks the path itself up


def peft_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """The factor peft multiplies B·A by: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def plain_alpha(alpha: float | None, rank: int | None, use_rslora: bool) -> float | None:
    """The alpha that gives a runtime dividing by r (llama.cpp) peft's scale: alpha·sqrt(r) under rsLoRA."""
    if alpha is None or not rank:
        return alpha
    return float(alpha) * math.sqrt(rank) if use_rslora else float(alpha)


@dataclass(frozen=True)
class LoraModule:
    """One module the adapter adapts, as peft builds it."""

    path: str  # module path in the base model (what rank_pattern/alpha_pattern match against)
    kind: str  # "linear", "embedding" or "conv"
    rank: int  # r, or the rank_pattern entry that matches
    alpha: float  # lora_alpha, or the alpha_pattern entry that matches
    scale: float  # peft_scale(alpha, rank, use_rslora)
    # Linear only: the base weight is stored (in, out) and the update is transposed (GPT-2's Conv1D).
    # peft decides it by the module's class; here the base weight's shape shows it (a square one takes
    # what the adapter's other projections show, see _orient_square), the config's value without base
    # shapes. Embedding updates are always (B·A)ᵀ, conv updates never transposed.
    fan_in_fan_out: bool
    a_key: str
    a_shape: tuple[int, ...]  # linear/conv (r, in, ...); embedding (r, vocab)
    b_key: str
    b_shape: tuple[int, ...]  # linear/conv (out, r, ...); embedding (dim, r)
    base_weight: str | None  # the base tensor the update lands on; None without base shapes or when absent
    tied: bool = False  # base_weight is the input embedding a tied lm_head shares
    magnitude_key: str | None = None  # DoRA's magnitude vector
    bias_key: str | None = None  # lora_B's bias (lora_bias)
    rank_pattern: str | None = None  # the rank_pattern key that set `rank`
    alpha_pattern: str | None = None  # the alpha_pattern key that set `alpha`
    # A LoRA on a module's nn.Parameter (peft's target_parameters and ParamWrapper; what `all-linear` makes
    # of a transformers 5 MoE's fused experts and router). `path` is then the parameter's path.
    target_parameter: str | None = None  # the parameter's name on its module (gate_up_proj, weight)
    parameter: Parameter | None = None  # that parameter and the stored tensors it is built from (with base shapes)
    # Stacked experts (a 3-D parameter): "out_in" when stored (experts, out, in) as nn.Linear stores a
    # weight, "in_out" when (experts, in, out); None when its shape does not show which.
    expert_layout: str | None = None

    @property
    def name(self) -> str:
        """The last component of the path (q_proj, lm_head, ...); a module's own name for its `weight` parameter."""
        parts = [p for p in self.path.split(".") if p != "base_layer"]
        return parts[-2] if self.target_parameter == "weight" and len(parts) > 1 else parts[-1]

    @property
    def experts(self) -> int:
        """How many experts the parameter stacks (1 for a 2-D parameter or a module)."""
        shape = self.parameter.shape if self.parameter is not None else ()
        return shape[0] if len(shape) == 3 else 1


@dataclass(frozen=True)
class SavedTensor:
    """A tensor of the adapter's weights that is not LoRA: a whole trained module or a trained bias.
    peft loads it in place of the base's tensor; a LoRA update on the same module is added after."""

    key: str
    module: str  # module path in the base model
    shape: tuple[int, ...]
    base_tensor: str | None  # the base tensor it replaces; None without base shapes or when absent
    tied: bool = False  # base_tensor is the input embedding a tied lm_head shares


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer and chat template files a folder holds (of TOKENIZER_FILES), with their sha256."""

    folder: Path
    files: tuple[tuple[str, str], ...]  # (file name, sha256), in TOKENIZER_FILES order
    template: str | None  # the file holding the folder's own chat template, as transformers would pick it

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.files)

    def differing_from(self, base_dir: Path) -> tuple[str, ...]:
        """The files held here that the base folder lacks or holds with other bytes."""
        base_dir = Path(base_dir)
        return tuple(name for name, digest in self.files
                     if not (base_dir / name).is_file() or _sha256(base_dir / name) != digest)


def tokenizer_files(folder: Path) -> TokenizerFiles:
    folder = Path(folder)
    files = tuple((name, _sha256(folder / name)) for name in TOKENIZER_FILES if (folder / name).is_file())
    return TokenizerFiles(folder, files, _template_file(folder))


def _template_file(folder: Path) -> str | None:
    for name in TEMPLATE_FILES:
        if (folder / name).is_file():
            return name
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{config} is not valid JSON ({e})",
                             "restore it, or remove it to use the base's") from None
        if isinstance(data, dict) and data.get("chat_template"):
            return config.name
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_sources(own: TokenizerFiles | None, base_dir: Path) -> dict[str, Path]:
    """File name -> source of the tokenizer and chat template a model made from adapter + base gets.

    Each of the adapter's files wins, the rest come from the base; a template the adapter carries is
    never shadowed by a template file of the base's that transformers would prefer.
    """
    base_dir = Path(base_dir)
    mine = set(own.names) if own is not None else set()
    own_template = own is not None and own.template is not None
    files: dict[str, Path] = {}
    for name in TOKENIZER_FILES:
        if name in mine:
            files[name] = own.folder / name
        elif (base_dir / name).is_file() and not (own_template and name in TEMPLATE_FILES):
            files[name] = base_dir / name
    return files


@dataclass(frozen=True)
class AdapterFacts:
    path: Path  # the adapter folder
    weights: Path  # adapter_model.safetensors (or .bin)
    r: int  # the config's default rank
    lora_alpha: float  # the config's default alpha
    use_rslora: bool
    use_dora: bool  # the config says so, or the weights hold magnitude vectors
    lora_bias: bool  # the config says so, or the weights hold lora_B biases
    bias: str  # "none", "all" or "lora_only": which base biases were trained
    fan_in_fan_out: bool  # the config's value (per module: LoraModule.fan_in_fan_out)
    rank_pattern: tuple[tuple[str, int], ...]
    alpha_pattern: tuple[tuple[str, float], ...]
    layers_to_transform: tuple[int, ...] | None
    layers_pattern: tuple[str, ...] | None
    modules_to_save: tuple[str, ...]  # as the config names them
    variants: tuple[str, ...]  # LoRA variants the config enables (use_dora, ...): not the plain B·A update
    modules: tuple[LoraModule, ...]  # sorted by path
    saved: tuple[SavedTensor, ...]  # whole module tensors in the weights (modules_to_save, embedding layers)
    biases: tuple[SavedTensor, ...]  # trained base biases (bias "all"/"lora_only")
    tokenizer: TokenizerFiles

    @property
    def saved_modules(self) -> tuple[str, ...]:
        """Modules saved whole beside the LoRA: the config's modules_to_save, then any other module
        whose tensors the weights hold."""
        names = list(self.modules_to_save)
        for t in self.saved:
            if not any(t.module == n or t.module.endswith(f".{n}") for n in names):
                names.append(t.module)
        return tuple(names)

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.modules), default=self.r)

    @property
    def module_names(self) -> tuple[str, ...]:
        """The last name component of every adapted module (q_proj, ...), sorted."""
        return tuple(sorted({m.name for m in self.modules}))

    @property
    def base_weights(self) -> dict[str, str | None]:
        """Module path -> the base tensor its update lands on."""
        return {m.path: m.base_weight for m in self.modules}

    @property
    def uniform(self) -> bool:
        """Every module has the config's rank and alpha (what a runtime with one rank and alpha can hold)."""
        return not self.rank_pattern and not self.alpha_pattern

    @property
    def ships_tokenizer(self) -> bool:
        return bool(self.tokenizer.files)

    @property
    def ships_chat_template(self) -> bool:
        return self.tokenizer.template is not None


def adapter_tensor_shapes(adapter: Adapter) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the adapter's weights, from the header (or a meta-device load of a pickle)."""
    if adapter.pickled:
        import torch

        state = torch.load(adapter.weights, map_location="meta", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    with open_safetensors(adapter.weights) as st:
        return {name: tuple(st.get_slice(name).get_shape()) for name in st.keys()}


def open_safetensors(path: Path):
    """safe_open, with a damaged or truncated file reported as bad input naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path} is not a readable safetensors file ({e})",
                         "re-download or re-save it; a truncated copy is the usual cause") from None


def find_base_tensor(name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str | None, bool]:
    """(the base's tensor for `name`, whether it is the input embedding standing in for a tied lm_head).

    `name` is in the model's module paths; the checkpoint may be saved with or without the outer
    `model.` prefix. A model with tied embeddings stores only the input side, and what peft writes
    to lm_head lands on that one tensor.
    """
    for candidate in (name, name.removeprefix("model."), f"model.{name}"):
        if candidate in shapes:
            return candidate, False
    module, _, param = name.rpartition(".")
    if module.rsplit(".", 1)[-1] == "lm_head":
        for embedding in _INPUT_EMBEDDINGS:
            found = sorted(k for k in shapes if k == f"{embedding}.{param}" or k.endswith(f".{embedding}.{param}"))
            if found:
                return found[0], True
    return None, False


def _int_tuple(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _str_tuple(value) -> tuple[str, ...] | None:
    if not value:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _lora_module(path: str, found: dict, ranks: "_Ranks", fan_in_fan_out: bool,
                 base_shapes: dict | None) -> LoraModule | None:
    """The module peft builds at `path` from its LoRA tensors (`found`: slot -> (key, shape))."""
    if "lora_A" in found or "lora_B" in found:
        a, b = found.get("lora_A"), found.get("lora_B")
        kind = "conv" if a is not None and len(a[1]) > 2 else "linear"
    elif "lora_embedding_A" in found or "lora_embedding_B" in found:
        a, b = found.get("lora_embedding_A"), found.get("lora_embedding_B")
        kind = "embedding"
    else:
        return None  # a magnitude or bias without its pair: no LoRA module peft would build
    a, b = a or ("", ()), b or ("", ())
    rank, mod_alpha, r_key, a_key = ranks.of(path)
    base_weight, tied = find_base_tensor(f"{path}.weight", base_shapes) if base_shapes else (None, False)
    transposed = False
    if kind == "linear":
        shown = _shown_orientation(base_shapes[base_weight], a[1], b[1]) if base_weight is not None else None
        transposed = fan_in_fan_out if shown is None else shown
    return LoraModule(
        path=path, kind=kind, rank=rank, alpha=mod_alpha,
        scale=ranks.scale(mod_alpha, rank),
        fan_in_fan_out=transposed, a_key=a[0], a_shape=a[1], b_key=b[0], b_shape=b[1],
        base_weight=base_weight, tied=tied,
        magnitude_key=found["lora_magnitude_vector"][0] if "lora_magnitude_vector" in found else None,
        bias_key=found["lora_B.bias"][0] if "lora_B.bias" in found else None,
        rank_pattern=r_key, alpha_pattern=a_key)


@dataclass(frozen=True)
class _Ranks:
    """The config's rank and alpha, per module after rank_pattern/alpha_pattern, as peft sets them."""

    r: int
    alpha: float
    rank_pattern: dict
    alpha_pattern: dict
    use_rslora: bool

    def of(self, path: str) -> tuple[int, float, str | None, str | None]:
        """(rank, alpha, the rank_pattern key and the alpha_pattern key that set them) at `path`."""
        r_key, a_key = pattern_key(self.rank_pattern, path), pattern_key(self.alpha_pattern, path)
        return (int(self.rank_pattern[r_key]) if r_key is not None else self.r,
                self.alpha_pattern[a_key] if a_key is not None else self.alpha, r_key, a_key)

    def scale(self, alpha: float, rank: int) -> float:
        return peft_scale(alpha, rank, self.use_rslora) if rank > 0 else 0.0


# --- LoRA on parameters (peft's target_parameters) -----------------------------------------------
# peft wraps a targeted nn.Parameter in a ParamWrapper; several parameters of one module nest, the one
# wrapped first innermost, so their tensors are saved under `<module>.base_layer.lora_A.weight`
# (inner), `<module>.lora_A.weight` (outer). Which parameter each wrapper adapts is not saved: the
# base's shapes show it. On stacked experts (experts, d1, d2), A is (experts·r, in) and B (out, r·experts).

_BASE_LAYER = ".base_layer"


def _unwrap(path: str) -> tuple[str, int]:
    """(the module a LoRA's tensors belong to, how many of peft's ParamWrappers lie outside this one)."""
    depth = 0
    while path.endswith(_BASE_LAYER):
        path, depth = path[: -len(_BASE_LAYER)], depth + 1
    return path, depth


def _targeted_names(owner: str, targets: tuple[str, ...]) -> list[str]:
    """The parameter names of `owner` that target_parameters entries can mean (peft matches the
    parameter's path, or a suffix of it after a dot)."""
    names = []
    for target in targets:
        module, _, param = target.rpartition(".")
        if (not module or owner == module or owner.endswith(f".{module}")) and param not in names:
            names.append(param)
    return names


def find_parameter(name: str, parameters: dict[str, Parameter]) -> Parameter | None:
    """The base's parameter `name` (a model path, the checkpoint's names with or without `model.`)."""
    for candidate in (name, name.removeprefix("model."), f"model.{name}"):
        if candidate in parameters:
            return parameters[candidate]
    return None


def _parameter_fit(parameter: Parameter, a_shape, b_shape) -> tuple[str, ...] | None:
    """How a ParamWrapper's A and B fit `parameter`, as peft lays them out: ("linear",) on a 2-D one
    (out, in); on stacked experts the layouts that fit, "out_in" and/or "in_out"; () when they do not
    fit; None when the parameter's shape is not known (a conversion not followed)."""
    shape = parameter.shape
    if not shape:
        return None
    if len(a_shape) != 2 or len(b_shape) != 2:
        return ()
    if len(shape) == 2:
        return ("linear",) if (a_shape[1], b_shape[0]) == (shape[1], shape[0]) and a_shape[0] == b_shape[1] else ()
    if len(shape) != 3 or a_shape[0] != b_shape[1] or a_shape[0] % shape[0]:
        return ()
    _, d1, d2 = shape
    return tuple(layout for layout, fits in (("out_in", (a_shape[1], b_shape[0]) == (d2, d1)),
                                             ("in_out", (a_shape[1], b_shape[0]) == (d1, d2))) if fits)


def _place_parameters(where: Path, owner: str, wrappers: dict[int, tuple[str, dict]], names: list[str],
                      parameters: dict[str, Parameter] | None) -> dict[int, tuple[str | None, Parameter | None, str | None]]:
    """Per wrapper depth: (the parameter it adapts, that parameter, its expert layout). Without the
    base's parameters, only a lone wrapper with one possible name is placed."""
    if parameters is None:
        only = names[0] if len(names) == 1 and len(wrappers) == 1 else None
        return {depth: (only, None, None) for depth in wrappers}
    found = {n: p for n in names if (p := find_parameter(f"{owner}.{n}", parameters)) is not None}
    shown = {n: f"{owner}.{n}" for n in names}
    if not found:
        raise AdapterError(f"the adapter targets {' and '.join(shown.values())} (target_parameters), which the base "
                           f"model does not have", "pass --base with the model this adapter was trained on")
    fits: dict[int, dict[str, tuple[str, ...] | None]] = {}
    for depth, (path, parts) in wrappers.items():
        a, b = parts.get("lora_A", ("", ()))[1], parts.get("lora_B", ("", ()))[1]
        fits[depth] = {n: fit for n, p in found.items() if (fit := _parameter_fit(p, a, b)) is None or fit}
        if not fits[depth]:
            odd = [n for n, p in found.items() if len(p.shape) not in (0, 2, 3)]
            if odd:
                raise AdapterError(f"{where} puts a LoRA on {shown[odd[0]]}, a {len(found[odd[0]].shape)}-D "
                                   "parameter; peft wraps only 2-D and 3-D parameters, so it cannot load or merge "
                                   "this adapter either", "retrain without it in target_parameters")
            sizes = ", ".join(f"{n} {list(p.shape)}" for n, p in found.items())
            raise AdapterError(f"the adapter's LoRA at {path} is {a[-1] if a else '?'}->{b[0] if b else '?'}, which "
                               f"fits none of {owner}'s parameters in the base ({sizes})",
                               "this adapter was trained on a different base; pass --base")
    placed: dict[int, str] = {}
    while len(placed) < len(fits):
        free = {d: [n for n in fits[d] if n not in placed.values()] for d in fits if d not in placed}
        sure = {d: left[0] for d, left in free.items() if len(left) == 1}
        if not sure:  # every remaining wrapper fits several parameters, or none is left for one
            depth = min(free)
            raise AdapterError(f"{where}: the base's shapes do not show which of {owner}'s parameters "
                               f"{', '.join(free[depth]) or ', '.join(found)} the LoRA at {wrappers[depth][0]} adapts",
                               "merge it with peft yourself and export the merged folder")
        placed.update(sure)
    layouts = {d: fits[d][n] for d, n in placed.items()}
    shown_layouts = {lay[0] for lay in layouts.values() if lay and len(lay) == 1 and lay[0] != "linear"}
    result = {}
    for depth, name in placed.items():
        layout = layouts[depth]
        if layout and len(layout) > 1:  # square experts: the module's other parameters show its layout
            layout = (next(iter(shown_layouts)),) if len(shown_layouts) == 1 else None
        result[depth] = (name, found[name], layout[0] if layout and layout[0] != "linear" else None)
    return result


def _wraps_parameters(owner: str, depth: int, targets: tuple[str, ...], parameters: dict[str, Parameter] | None,
                      config: dict) -> bool:
    """Whether the LoRA tensors of `owner` (at wrapper `depth`) adapt a parameter of it rather than the module:
    the base has a parameter of that name; without the base, a target_parameters entry names the module, or
    names a bare parameter and target_modules does not name the module."""
    names = _targeted_names(owner, targets)
    if depth:
        return True
    if parameters is not None:
        return any(find_parameter(f"{owner}.{n}", parameters) is not None for n in names)
    modules = config.get("target_modules") or ()
    leaf = owner.rsplit(".", 1)[-1]
    named = any(t.rpartition(".")[0] and (owner == t.rpartition(".")[0] or owner.endswith("." + t.rpartition(".")[0]))
                for t in targets)
    return named or (bool(names) and not (modules == leaf or leaf in modules or owner in modules))


def _parameter_modules(where: Path, owner: str, wrappers: dict[int, tuple[str, dict]], names: list[str],
                       parameters: dict[str, Parameter] | None, ranks: _Ranks) -> list[LoraModule]:
    """The LoRA modules peft builds for the ParamWrappers nested on `owner` (`wrappers`: depth ->
    (the tensors' module path, slot -> (key, shape)))."""
    modules = []
    for depth, (name, parameter, layout) in sorted(_place_parameters(where, owner, wrappers, names,
                                                                     parameters).items()):
        path, found = wrappers[depth]
        a, b = found.get("lora_A", ("", ())), found.get("lora_B", ("", ()))
        param_path = f"{owner}.{name}" if name is not None else path
        rank, alpha, r_key, a_key = ranks.of(param_path)
        stacked = parameter is not None and len(parameter.shape) == 3
        modules.append(LoraModule(
            path=param_path, kind="experts" if stacked else "linear", rank=rank, alpha=alpha, scale=ranks.scale(alpha, rank),
            fan_in_fan_out=False, a_key=a[0], a_shape=a[1], b_key=b[0], b_shape=b[1],
            base_weight=parameter.stored_whole if parameter is not None else None,
            magnitude_key=found["lora_magnitude_vector"][0] if "lora_magnitude_vector" in found else None,
            bias_key=found["lora_B.bias"][0] if "lora_B.bias" in found else None,
            rank_pattern=r_key, alpha_pattern=a_key, target_parameter=name, parameter=parameter,
            expert_layout=layout))
    return modules


def _shown_orientation(stored, a_shape, b_shape) -> bool | None:
    """Whether a linear base weight is stored (in, out), when its shape shows it (not square, and
    matching the LoRA pair one way round)."""
    stored = tuple(stored)
    if not a_shape or not b_shape or len(stored) != 2 or stored[0] == stored[1]:
        return None
    if stored == (b_shape[0], a_shape[-1]):
        return False
    return True if stored == (a_shape[-1], b_shape[0]) else None


def _orient_square(modules: list[LoraModule], base_shapes: dict | None) -> list[LoraModule]:
    """peft transposes a linear update by the module's class (Conv1D stores (in, out), nn.Linear (out, in)).
    A square weight does not show which it is: it takes the orientation every non-square projection of
    the adapter shows (a model uses one class for its projections; lm_head is nn.Linear everywhere),
    and the config's value only when they show none or disagree."""
    if not base_shapes:
        return modules
    shown = {_shown_orientation(base_shapes[m.base_weight], m.a_shape, m.b_shape)
             for m in modules if m.kind == "linear" and m.base_weight is not None and m.name != "lm_head"}
    shown.discard(None)
    if len(shown) != 1:
        return modules
    (orientation,) = shown
    return [dataclasses.replace(m, fan_in_fan_out=orientation)
            if m.kind == "linear" and m.base_weight is not None
            and _shown_orientation(base_shapes[m.base_weight], m.a_shape, m.b_shape) is None else m
            for m in modules]


def _non_lora_tensors(others: dict[str, tuple[int, ...]], bias: str,
                      base_shapes: dict | None) -> tuple[list[SavedTensor], list[SavedTensor]]:
    """(whole saved module tensors, trained base biases) among the tensors that are not LoRA parts."""
    names = {key: _WRAPPER.sub("", key.removeprefix(_PEFT_PREFIX)) for key in others}
    whole = {name.rsplit(".", 1)[0] for name in names.values() if not name.endswith(".bias")}
    saved, biases = [], []
    for key, shape in sorted(others.items()):
        name = names[key]
        module = name.rsplit(".", 1)[0] if "." in name else name
        base_tensor, tied = find_base_tensor(name, base_shapes) if base_shapes else (None, False)
        tensor = SavedTensor(key, module, shape, base_tensor, tied)
        # a bias of a module not otherwise saved whole is one of the base biases `bias` trains
        (biases if bias != "none" and name.endswith(".bias") and module not in whole else saved).append(tensor)
    return saved, biases


def describe(adapter: Adapter, base_shapes: dict | None = None,
             parameters: dict[str, Parameter] | None = None) -> AdapterFacts:
    """The adapter's facts. With `base_shapes` (tensor name -> shape of the base, e.g.
    models.merge.base_tensor_shapes) every update and saved tensor is mapped onto the base tensor it
    changes, and fan_in_fan_out is read from the base weight's orientation where it shows. A LoRA on a
    parameter (target_parameters) is mapped through `parameters` (checkpoint.model_parameters: the
    model's parameters as transformers builds them from those tensors; the tensors as they are stored
    when not given)."""
    config = adapter.config
    r = int(config["r"]) if config.get("r") is not None else _DEFAULT_R
    alpha = config.get("lora_alpha")
    alpha = _DEFAULT_ALPHA if alpha is None else alpha
    use_rslora = bool(config.get("use_rslora"))
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    ranks = _Ranks(r, alpha, rank_pattern, alpha_pattern, use_rslora)
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    targets = tuple(config.get("target_parameters") or ())
    if base_shapes is not None and parameters is None:
        parameters = {name: Parameter(name, tuple(shape), (Piece(name),)) for name, shape in base_shapes.items()}
    bias = str(config.get("bias") or "none")
    shapes = adapter_tensor_shapes(adapter)

    parts: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    others: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        parsed = parse_key(key)
        if parsed is None:
            others[key] = shape
        else:
            slot = "lora_B.bias" if parsed.part == "lora_B" and parsed.param == "bias" else parsed.part
            parts.setdefault(parsed.module, {})[slot] = (key, shape)
    modules = []
    wrapped: dict[str, dict[int, tuple[str, dict]]] = {}  # module -> its ParamWrappers, by depth
    for path, found in sorted(parts.items()):
        owner, depth = _unwrap(path)
        if targets and _wraps_parameters(owner, depth, targets, parameters, config):
            wrapped.setdefault(owner, {})[depth] = (path, found)
            continue
        module = _lora_module(path, found, ranks, fan_in_fan_out, base_shapes)
        if module is None:
            continue
        if module.rank <= 0:
            raise AdapterError(f"{adapter.path / 'adapter_config.json'} gives {path} rank {module.rank}; "
                               "a LoRA rank is a positive integer", "re-save the adapter with peft")
        modules.append(module)
    modules = _orient_square(modules, base_shapes)
    where = adapter.path / "adapter_config.json"
    for owner, wrappers in sorted(wrapped.items()):
        modules += _parameter_modules(where, owner, wrappers, _targeted_names(owner, targets), parameters, ranks)
    modules.sort(key=lambda m: m.path)
    saved, biases = _non_lora_tensors(others, bias, base_shapes)

    variants = tuple(f for f in _VARIANT_FIELDS if config.get(f))
    variants += tuple(f"init_lora_weights={v}" for v in _VARIANT_INITS if config.get("init_lora_weights") == v)
    use_dora = bool(config.get("use_dora")) or any(m.magnitude_key for m in modules)
    if use_dora and "use_dora" not in variants:
        variants = ("use_dora",) + variants
    return AdapterFacts(
        path=adapter.path, weights=adapter.weights, r=r, lora_alpha=alpha, use_rslora=use_rslora,
        use_dora=use_dora, lora_bias=bool(config.get("lora_bias")) or any(m.bias_key for m in modules),
        bias=bias, fan_in_fan_out=fan_in_fan_out,
        rank_pattern=tuple((k, int(v)) for k, v in rank_pattern.items()),
        alpha_pattern=tuple(alpha_pattern.items()),
        layers_to_transform=_int_tuple(config.get("layers_to_transform")),
        layers_pattern=_str_tuple(config.get("layers_pattern")),
        modules_to_save=tuple(m for m in (config.get("modules_to_save") or []) if m),
        variants=variants, modules=tuple(modules), saved=tuple(saved), biases=tuple(biases),
        tokenizer=tokenizer_files(adapter.path))
