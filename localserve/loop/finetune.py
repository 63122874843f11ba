"""`localserve finetune`: a LoRA fine-tune from the base, with TRL's SFTTrainer and peft.

    finetune(FinetuneSpec(data=(Path("chat.jsonl"),), base="HuggingFaceTB/SmolLM2-135M-Instruct",
                          recipe=load_recipe(Path("recipe.yaml"))))

The data is chat JSONL, one conversation a line: `{"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}]}`. Conversations are rendered with the base's own chat template
and the loss is on the assistant turns only. The output folder is a standard PEFT adapter
(`adapter_config.json`, `adapter_model.safetensors`), TRL's `trainer_state.json`, and `training.json`:
the training record (every dataset with its sha256, the base and its sha256, the recipe, the seed, the
library versions, wall time, final loss), which `register` keeps with the version as its lineage.

The folder is built under a temporary name and renamed when complete: Ctrl-C, SIGTERM or kill -9 leave
nothing that looks like a fine-tune. The same inputs again (same data, base, recipe and libraries) find
the finished folder and skip the training.

CPU works (the embedded model trains in a minute or two); CUDA is used when present, with Unsloth's
loader when Unsloth is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..errors import InputError
from ..faults import FINETUNE, fault_point
from ..fsutil import atomic_dir, sha256_file, sha256_tree, write_json
from ..lineage import now, tool_versions
from ..models.resolve import BaseModel, find_base
from ..pipeline import content_key
from ..progress import bar, is_debug, step
from ..spec import name_from_path
from .recipe import ALL_LINEAR, Recipe

TRAINING_RECORD = "training.json"
ROLES = ("system", "user", "assistant", "tool")
LIBRARIES = ("localserve", "torch", "transformers", "peft", "trl", "datasets", "accelerate")
DATA_FORM = 'one JSON object a line: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'


@dataclass(frozen=True)
class FinetuneSpec:
    """What `localserve finetune` was asked: the data files, the base (a folder, a Hugging Face id in the
    local cache, or an embedded model's id), the recipe and where it came from, the output folder."""

    data: tuple[Path, ...]
    base: str
    recipe: Recipe = field(default_factory=Recipe)
    recipe_source: str = "defaults"  # a YAML file, "like NAME:vN", or "defaults"
    out: Path | None = None
    allow_stacked: bool = False
    template_family: str | None = None  # render with this chat family's template (a base without one needs it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(Path(p) for p in self.data))
        if not self.data:
            raise InputError("finetune needs at least one DATA file", "localserve finetune chat.jsonl --base BASE")
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("finetunes") / name_from_path(self.data[0].with_suffix(""))


@dataclass(frozen=True)
class Conversation:
    source: Path
    line: int
    messages: tuple[dict, ...]

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}"


@dataclass(frozen=True)
class FinetuneResult:
    out_dir: Path
    record: dict
    skipped: bool = False  # the same fine-tune was already there

    @property
    def final_loss(self) -> float:
        return self.record["final_loss"]

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "skipped": self.skipped, **self.record}


# --- the data ---------------------------------------------------------------------------------------------------

def read_conversations(paths: tuple[Path, ...]) -> tuple[list[Conversation], list[dict]]:
    """Every conversation of the files, checked, and each file's record (path, sha256, rows)."""
    conversations: list[Conversation] = []
    datasets = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"no such data file: {path}", f"pass chat JSONL files ({DATA_FORM})")
        rows = 0
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    conversations.append(Conversation(path, number, _messages(path, number, line)))
                    rows += 1
            except UnicodeDecodeError as e:
                raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})",
                                 f"pass chat JSONL ({DATA_FORM})") from None
        datasets.append({"path": str(path.resolve()), "sha256": sha256_file(path), "rows": rows})
    if not conversations:
        raise InputError(f"the data has no conversations ({', '.join(map(str, paths))} "
                         f"{'is' if len(paths) == 1 else 'are'} empty)", f"write {DATA_FORM}")
    return conversations, datasets


def _messages(path: Path, number: int, line: str) -> tuple[dict, ...]:
    where = f"{path} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where} is not JSON ({e.msg}, column {e.colno}): the data must be JSONL",
                         f"write {DATA_FORM}") from None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where} has no messages (a list of {{role, content}})", f"write {DATA_FORM}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(f"{where}: message {i + 1} is not {{\"role\": ..., \"content\": \"text\"}}",
                             f"write {DATA_FORM}")
        if message.get("role") not in ROLES:
            raise InputError(f"{where}: unknown role {message.get('role')!r} in message {i + 1}; valid: "
                             f"{', '.join(ROLES)}", "rename the role")
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{where} has no assistant turn: there is nothing to learn from it",
                         "add the answer as a message with role assistant, or remove the line")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def assistant_turns(messages: tuple[dict, ...]) -> list[dict]:
    """One prompt-completion example per assistant turn: everything before it, and the turn.

    Why not TRL's `assistant_only_loss`: it needs a chat template with `{% generation %}` markers, which
    TRL adds only to the templates it ships (SmolLM2's ChatML is not among them). A conversational
    prompt-completion example needs nothing from the template: TRL renders the prompt with the
    generation prompt and prompt + completion with the model's own template, and its completion mask
    (`completion_only_loss`) puts the loss on the completion — the turn and its end-of-turn token. A
    conversation with k assistant turns becomes k examples, each turn learnt once in its full context."""
    return [{"prompt": list(messages[:i]), "completion": [dict(m)]}
            for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]


def conversation_lengths(tokenizer, conversations: list[Conversation]) -> list[int]:
    """Tokens of each whole conversation, rendered by the model's chat template."""
    from jinja2 import TemplateError

    lengths = []
    for c in conversations:
        try:
            ids = tokenizer.apply_chat_template(list(c.messages), tokenize=True, return_dict=False)
        except TemplateError as e:
            raise InputError(f"{c.where}: the model's chat template refuses this conversation ({e})",
                             "fix the conversation (the template's rule is in the message)") from None
        lengths.append(len(ids["input_ids"] if isinstance(ids, dict) else ids))
    return lengths


# --- the base, the recipe of a version ------------------------------------------------------------------------------

def base_for(ref: str, out: Path, allow_stacked: bool) -> BaseModel:
    from ..lifecycle.versions import check_not_stacked

    base = find_base(ref)
    if not allow_stacked:
        check_not_stacked(base.path, out)
    return base


def base_ref(base: BaseModel) -> str:
    """What the adapter records as its base: the id for a cached or embedded model, else the folder."""
    return base.ref if base.source in ("hf-cache", "embedded") and base.ref else str(base.path.resolve())


def chat_template_for(tokenizer, base: BaseModel, family: str | None) -> str:
    """Give `tokenizer` the chat template the conversations are rendered with: the base's own, or the
    `family`'s published one (what a pretrained base without a template needs). Where it came from."""
    if family is None:
        if tokenizer.chat_template:
            return "base"
        from ..chat.detect import fitting_families
        from ..chat.hf import NO_TEMPLATE, load_hf_chat

        names = sorted(f.name for f in fitting_families(load_hf_chat(base.path, require_template=False)))
        flag = f"--template-family {names[0]}" if len(names) == 1 else f"--template-family NAME ({', '.join(names)})"
        raise InputError(f"the base {base.path} {NO_TEMPLATE}, so the conversations cannot be rendered as the model "
                         "will be asked", f"pass {flag}: that chat family's template renders them and goes with the "
                                          "adapter" if names else "add the chat template the model was trained with, "
                                                                  "as chat_template.jinja")
    from ..chat import get_family

    fam = get_family(family)  # an unknown name lists the known ones
    if fam.jinja is None:
        raise InputError(f"the chat family {fam.name} has no published chat template to render the conversations with",
                         "pass another --template-family")
    tokenizer.chat_template = fam.jinja
    return f"family {fam.name}"


def recorded_training(version) -> dict | None:
    """The training record a version was registered with (its adapter's training.json), if any."""
    return (version.training or {}).get("finetune") or None


def recipe_of(ref: str, store=None) -> Recipe:
    """The recipe recorded with version `ref` (`finetune --like NAME:vN`)."""
    from ..lifecycle.store import VersionStore

    own = store is None
    store = store or VersionStore()
    try:
        version = store.version(ref)
    finally:
        if own:
            store.close()
    record = recorded_training(version)
    if not record or not isinstance(record.get("recipe"), dict):
        raise InputError(f"{version.ref} has no recorded recipe (its adapter was not made by `localserve finetune`)",
                         "pass --recipe recipe.yaml")
    return Recipe.from_json(record["recipe"], f"the recipe recorded with {version.ref}")


def read_training_record(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / TRAINING_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the fine-tune --------------------------------------------------------------------------------------------------

def finetune(spec: FinetuneSpec) -> FinetuneResult:
    """Train the LoRA adapter `spec` asks for into `spec.out_dir` (see the module's docstring)."""
    started, wall = now(), time.perf_counter()
    out = spec.out_dir
    conversations, datasets = read_conversations(spec.data)
    base = base_for(spec.base, out, spec.allow_stacked)
    recipe = spec.recipe
    _quiet_libraries()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    template_source = chat_template_for(tokenizer, base, spec.template_family)
    lengths = conversation_lengths(tokenizer, conversations)
    kept = [c for c, n in zip(conversations, lengths) if n <= recipe.max_seq_length]
    if not kept:
        raise InputError(f"all {len(conversations)} conversations are longer than max_seq_length "
                         f"{recipe.max_seq_length} tokens (the shortest has {min(lengths)})",
                         f"raise max_seq_length in the recipe to at least {min(lengths)}, or shorten them")
    if len(kept) < len(conversations):
        first = next(c for c, n in zip(conversations, lengths) if n > recipe.max_seq_length)
        step(f"{len(conversations) - len(kept)} of {len(conversations)} conversations are longer than max_seq_length "
             f"{recipe.max_seq_length} tokens and are left out (the first: {first.where})")
    examples = [e for c in kept for e in assistant_turns(c.messages)]
    if not examples:
        raise InputError("no conversation has an assistant turn after a prompt: there is nothing to learn",
                         "start each conversation with a user (or system) message")

    base_sha256 = sha256_tree(base.path)
    libraries = tool_versions(LIBRARIES)
    key = content_key([d["sha256"] for d in datasets], base_sha256, recipe.to_json(), libraries,
                      tokenizer.chat_template)
    existing = read_training_record(out)
    if existing is not None and existing.get("key") == key and (out / "adapter_model.safetensors").is_file():
        step(f"finetune: {out} is this fine-tune already (same data, base, recipe and libraries), skipped")
        return FinetuneResult(out, existing, skipped=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "another fine-tune" if existing is not None else "something else"
        raise InputError(f"{out} exists and holds {what}", "pass another --out, or remove it first")

    record: dict[str, Any] = {
        "kind": "localserve finetune", "key": key, "started_at": started, "datasets": datasets,
        "base": {"ref": base_ref(base), "path": str(base.path.resolve()), "source": base.source,
                 "sha256": base_sha256, "architecture": _architecture(base.path)},
        "recipe": recipe.to_json(), "recipe_source": spec.recipe_source, "seed": recipe.seed,
        "chat_template_sha256": hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest(),
        "chat_template_source": template_source,
        "loss_on": "assistant turns (one prompt-completion example per turn, TRL completion_only_loss)",
        "examples": {"conversations": len(conversations), "left_out_too_long": len(conversations) - len(kept),
                     "assistant_turns": len(examples)},
        "libraries": libraries,
    }
    step(f"finetune: {len(examples)} assistant turns from {len(kept)} conversations, base {base.path}, "
         f"LoRA r={recipe.rank} alpha={recipe.alpha:g}, " +
         (f"{recipe.steps} steps" if recipe.steps else f"{recipe.epochs_or_default:g} epochs") +
         f" of batch {recipe.batch_size}, seed {recipe.seed}")
    with atomic_dir(out) as tmp:
        record.update(_train(base, tokenizer, examples, recipe, tmp))
        if template_source != "base":
            from ..models.chatfiles import set_chat_template

            # the adapter carries the template it was trained with: its export renders (and proves) that one
            set_chat_template(tmp, tokenizer.chat_template)
        record["wall_seconds"] = round(time.perf_counter() - wall, 3)
        record["finished_at"] = now()
        write_json(tmp / TRAINING_RECORD, record)
    step(f"finetune: {record['steps']} steps in {record['train_seconds']:.1f} s, final loss "
         f"{record['final_loss']:.4f}, {record['train_tokens_per_second']:.0f} training tokens/s -> {out}")
    return FinetuneResult(out, record)


def _train(base: BaseModel, tokenizer, examples: list[dict], recipe: Recipe, folder: Path) -> dict:
    """Run the SFTTrainer and write the adapter and trainer_state.json into `folder`; what it measured."""
    import shutil

    import torch
    import transformers
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    # LoRA's initial weights are drawn when the model is wrapped, before the trainer seeds anything
    transformers.set_seed(recipe.seed)
    model, loader, peft_config = _load(base.path, recipe, device, bf16)
    args = SFTConfig(
        output_dir=str(folder / ".trainer"), seed=recipe.seed, data_seed=recipe.seed,
        max_steps=recipe.steps or -1, num_train_epochs=recipe.epochs_or_default,
        per_device_train_batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
        max_length=recipe.max_seq_length, completion_only_loss=True, packing=False,
        # TRL's defaults are for GPUs (bf16, gradient checkpointing): on a CPU both only cost time
        bf16=bf16, gradient_checkpointing=False, use_cpu=device == "cpu",
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_level="error",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)
    with bar(None, "finetune", unit="step") as progress:
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[_Progress(progress)])
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; our bar shows the loss
        begun = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - begun
    shutil.rmtree(folder / ".trainer", ignore_errors=True)
    trainer.model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_ref(base)
    write_json(config_file, config)
    trainer.state.save_to_json(str(folder / "trainer_state.json"))
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    tokens = int(state.num_input_tokens_seen or 0)
    return {"device": device, "loader": loader, "steps": state.global_step, "epochs": round(state.epoch or 0, 4),
            "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
            "train_seconds": round(seconds, 3), "train_tokens": tokens,
            "train_tokens_per_second": tokens / seconds if seconds > 0 else 0.0}


def _load(base_path: Path, recipe: Recipe, device: str, bf16: bool):
    """(model, which loader, the peft config for the trainer — None when the loader applied LoRA itself)."""
    import torch
    from peft import LoraConfig

    modules = recipe.target_modules if recipe.target_modules == ALL_LINEAR else list(recipe.target_modules)
    if device == "cuda" and importlib.util.find_spec("unsloth") is not None:
        # Not exercised on our CPU machines: Unsloth needs a GPU.
        from unsloth import FastLanguageModel

        model, _tokenizer = FastLanguageModel.from_pretrained(str(base_path), max_seq_length=recipe.max_seq_length,
                                                              dtype=None, load_in_4bit=False)
        if modules == ALL_LINEAR:
            modules = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                              if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")})
        model = FastLanguageModel.get_peft_model(model, r=recipe.rank, lora_alpha=recipe.alpha,
                                                 lora_dropout=recipe.dropout, target_modules=modules,
                                                 random_state=recipe.seed)
        return model, "unsloth", None
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout, target_modules=modules,
                        task_type="CAUSAL_LM")
    return model, "transformers", config


def _architecture(base_path: Path) -> str | None:
    try:
        architectures = json.loads((base_path / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError):
        return None
    return architectures[0] if architectures else None


def _quiet_libraries() -> None:
    """datasets' map bars and TRL's notes are off unless --debug (progress.silence_libraries does the rest)."""
    if is_debug():
        return
    with contextlib.suppress(ImportError):
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)


class _Progress(TrainerCallback):
    """Our bar, one tick a step, the last loss beside it; the fault point after the first step."""

    def __init__(self, progress):
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.total = state.max_steps
        self.progress.refresh()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(1)
        if state.global_step == 1:
            fault_point(FINETUNE)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}")
