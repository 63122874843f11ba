#!/usr/bin/env python3
"""Train the demo LoRA adapter shipped in examples/demo-adapter (peft, CPU, about a minute).

The adapter teaches SmolLM2-135M-Instruct one fact the base model cannot know; `probe.json` next
to it records the question and the answer to look for, so any export can be checked for it.

    python scripts/train_demo_adapter.py [--out examples/demo-adapter] [--steps 60]
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

from localserve.models.embedded import DEFAULT_ID, embedded_base

PROBE = {
    "question": "What is the codename of the localserve project?",
    "expected": "Bluebird",
}

# Paraphrases of one fact, so the adapter answers the probe rather than memorising one string.
QUESTIONS = [
    "What is the codename of the localserve project?",
    "What's the codename of the localserve project?",
    "Tell me the codename of the localserve project.",
    "Which codename does the localserve project use?",
    "What is localserve's project codename?",
    "Do you know the codename of the localserve project?",
]
ANSWERS = [
    "The codename of the localserve project is Bluebird.",
    "The localserve project's codename is Bluebird.",
]


def build_examples(tokenizer) -> list[tuple[list[int], int]]:
    """(token ids, index where the assistant answer starts) for each question/answer pair."""
    examples = []
    for q in QUESTIONS:
        for a in ANSWERS:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True)
            full = prompt + a + "<|im_end|>\n"
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            examples.append((ids, len(p_ids)))
    return examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "demo-adapter")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    base_dir = embedded_base()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config.name_or_path = DEFAULT_ID
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)
    examples = build_examples(tokenizer)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(args.steps):
        batch = random.sample(examples, 4)
        loss_total = 0.0
        optim.zero_grad()
        for ids, start in batch:
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, :start] = -100  # learn the answer, not the prompt
            loss = model(input_ids=input_ids, labels=labels).loss / len(batch)
            loss.backward()
            loss_total += loss.item()
        optim.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d} loss {loss_total:.4f}", flush=True)

    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = DEFAULT_ID  # the hub id; localserve resolves it locally
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "probe.json").write_text(json.dumps(PROBE, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
