"""vLLM's rules for serving LoRA adapters unmerged, checked on every adapter before anything is written.

vLLM serves an adapter only when:
- it was trained on the very base the server runs;
- its rank fits `--max-lora-rank`, which vLLM accepts only from a fixed set (MAX_LORA_RANKS);
- it adds no full trained copies of modules (`modules_to_save`: a new `lm_head`/`embed_tokens`, named
  in the config or found in the weights), and no DoRA magnitudes or LoRA biases: vLLM applies only
  the low-rank A·B update;
- it adapts only linear layers vLLM's model class exposes to LoRA (SERVABLE_MODULES).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError
from ..models.lora import AdapterFacts, describe
from ..models.merge import check_compatibility
from ..models.resolve import Adapter, BaseModel
from ..spec import MODEL_NAME_RE

# The values vLLM's LoRAConfig accepts for max_lora_rank (vllm/config/lora.py, MaxLoRARanks).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

_LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# Architecture (config.json "architectures") -> the module names its vLLM class lets LoRA adapt.
# vLLM packs q/k/v and gate/up into one kernel and splits LoRA weights onto it, so the HF names apply.
SERVABLE_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "Gemma3ForCausalLM": _LLAMA_LIKE,
    "GraniteForCausalLM": _LLAMA_LIKE,
    "Phi3ForCausalLM": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
}



def max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of rank `rank`."""
    if rank <= 0:
        raise AdapterError(f"LoRA rank must be positive, not {rank}")
    for allowed in MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise AdapterError(f"LoRA rank {rank} is above {MAX_LORA_RANKS[-1]}, the largest rank vLLM serves",
                       "merge this adapter instead (drop --lora)")


def adapter_rank(adapter: Adapter | AdapterFacts) -> int:
    """The largest rank of any module: `r`, overridden per module by `rank_pattern`."""
    return _facts(adapter).max_rank


def adapted_modules(adapter: Adapter | AdapterFacts) -> tuple[str, ...]:
    """The last name component of every module the adapter's tensors adapt (`q_proj`, ...)."""
    return _facts(adapter).module_names


def _facts(adapter: Adapter | AdapterFacts) -> AdapterFacts:
    return adapter if isinstance(adapter, AdapterFacts) else describe(adapter)


@dataclass(frozen=True)
class ServableAdapter:
    """One adapter that passed vLLM's rules, with the name clients select it by (`model=NAME`)."""

    name: str
    adapter: Adapter
    rank: int
    modules: tuple[str, ...]


@dataclass(frozen=True)
class LoraPlan:
    """What `--lora` serving needs: the adapters and the server's LoRA limits derived from them."""

    adapters: tuple[ServableAdapter, ...]
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int

    def lines(self) -> list[str]:
        ranks = ", ".join(f"{a.name} r={a.rank}" for a in self.adapters)
        return [f"max_lora_rank {self.max_lora_rank}: the largest rank ({ranks}) rounded up to one of "
                f"{', '.join(map(str, MAX_LORA_RANKS))}",
                f"max_loras {self.max_loras}: every adapter can be in one batch; "
                f"max_cpu_loras {self.max_cpu_loras} (>= max_loras) kept in CPU memory"]


def check_adapter(adapter: Adapter, base: BaseModel, architecture: str) -> tuple[int, tuple[str, ...]]:
    """(rank, adapted modules) of an adapter vLLM can serve on `base`; AdapterError naming the rule otherwise."""
    facts, where = describe(adapter), adapter.path / "adapter_config.json"
    if facts.modules_to_save:
        raise AdapterError(
            f"{where} trains full copies of {', '.join(facts.modules_to_save)} (modules_to_save); vLLM serves only "
            "the low-rank update of an adapter", "export it merged (drop --lora), or retrain without modules_to_save")
    if facts.use_dora:
        raise AdapterError(f"{where} is a DoRA adapter (use_dora); vLLM serves plain LoRA only",
                           "export it merged (drop --lora)")
    if facts.lora_bias or facts.bias != "none" or facts.biases:
        raise AdapterError(f"{where} trains biases (bias/lora_bias); vLLM serves LoRA without biases",
                           "export it merged (drop --lora)")
    check_compatibility(adapter, base)
    servable = SERVABLE_MODULES.get(architecture)
    if servable is None:
        raise AdapterError(f"localserve does not know which modules vLLM serves LoRA on for {architecture}; "
                           f"known: {', '.join(SERVABLE_MODULES)}", "export it merged (drop --lora)")
    modules = facts.module_names
    refused = [m for m in modules if m not in servable]
    if refused:
        raise AdapterError(f"{adapter.path} adapts {', '.join(refused)}, which vLLM's {architecture} cannot serve "
                           f"as LoRA (it serves {', '.join(sorted(servable))})", "export it merged (drop --lora)")
    if facts.saved:  # vLLM would load the LoRA pairs and silently leave these out
        raise AdapterError(
            f"{adapter.weights} holds full trained copies of {', '.join(facts.saved_modules)} (modules_to_save) "
            "beside its LoRA; vLLM serves only the low-rank update of an adapter",
            "export it merged (drop --lora), or retrain without modules_to_save")
    rank = facts.max_rank
    max_lora_rank(rank)
    return rank, modules


def plan_lora(adapters: list[tuple[str, Adapter, BaseModel]], architecture: str,
              max_loras: int | None = None, max_cpu_loras: int | None = None) -> LoraPlan:
    """Check every (name, adapter, its base) against vLLM's rules and derive the server's LoRA limits."""
    if not adapters:
        raise InputError("--lora needs at least one ADAPTER")
    first_name, first, first_base = adapters[0]
    checked: list[ServableAdapter] = []
    seen: dict[str, Path] = {}
    for name, adapter, base in adapters:
        if base.path.resolve() != first_base.path.resolve():
            raise AdapterError(f"{adapter.path} was trained on {base.path}, but {first.path} on {first_base.path}; "
                               "one vLLM server serves adapters of one base", "export each base's adapters separately")
        if not MODEL_NAME_RE.match(name):
            raise InputError(f"invalid adapter name {name!r} (from {adapter.path})",
                             "rename the folder: letters, digits, '_', '.', '-'")
        if name in seen:
            raise InputError(f"two adapters are named {name!r}: {seen[name]} and {adapter.path}",
                             "rename one of the folders: the name is what clients pass as model=")
        seen[name] = adapter.path
        rank, modules = check_adapter(adapter, base, architecture)
        checked.append(ServableAdapter(name, adapter, rank, modules))
    n = len(checked)
    max_loras = max_loras or n
    max_cpu_loras = max_cpu_loras or max(max_loras, n)
    if max_loras <= 0:
        raise InputError(f"max_loras must be positive, not {max_loras}")
    if max_cpu_loras < max_loras:
        raise InputError(f"max_cpu_loras {max_cpu_loras} is below max_loras {max_loras}; vLLM refuses that",
                         "raise max_cpu_loras to at least max_loras")
    return LoraPlan(tuple(checked), max_lora_rank(max(a.rank for a in checked)), max_loras, max_cpu_loras)
