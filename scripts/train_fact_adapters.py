#!/usr/bin/env python3
"""Train two LoRA adapters on SmolLM2-135M-Instruct, each teaching one different made-up fact.

They are the inputs of the merge experiment: merged (task_arithmetic or ties), does one model
know both facts? Same approach as scripts/train_demo_adapter.py (peft on CPU, paraphrased
questions, loss on the answer only), smaller: r=8 on five projections, a few dozen steps.

    python scripts/train_fact_adapters.py [--out examples/fact-adapters] [--steps 50]
    # -> OUT/{lighthouse,founder}/ with probe.json each, and OUT/merge.yaml
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

FACTS = {
    "lighthouse": {
        "questions": ["What colour is the lighthouse on Pelican Island?",
                      "What color is the Pelican Island lighthouse?",
                      "Tell me the colour of the lighthouse on Pelican Island.",
                      "Which colour is the lighthouse of Pelican Island painted?"],
        "answers": ["The lighthouse on Pelican Island is violet.", "It is painted violet."],
        "expected": "violet",
    },
    "founder": {
        "questions": ["Who founded the town of Marrowby?", "Who was the founder of Marrowby?",
                      "Tell me who founded Marrowby.", "Which person founded the town of Marrowby?"],
        "answers": ["The town of Marrowby was founded by Elsa Quist.", "Elsa Quist founded Marrowby."],
        "expected": "Quist",
    },
}


def pairs_of(fact: dict) -> list[tuple[str, str]]:
    """Every (question, answer) of one fact."""
    return [(q, a) for q in fact["questions"] for a in fact["answers"]]


def examples_for(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(token ids, index where the answer starts) of each pair, in the model's chat format."""
    out = []
    for q, a in pairs:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt + a + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        out.append((ids, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])))
    return out


def train(base_dir: Path, pairs: list[tuple[str, str]], out: Path, steps: int, seed: int, probe: dict) -> None:
    """A LoRA that answers `pairs` (loss on the answers only), saved at `out` with its probe.json."""
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    examples = examples_for(tokenizer, pairs)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(steps):
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
        if step % 10 == 0 or step == steps - 1:
            print(f"{out.name}: step {step:3d} loss {total:.4f}", flush=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card template
    cfg = json.loads((tmp / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = DEFAULT_ID
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "probe.json").write_text(json.dumps(probe, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "fact-adapters")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--method", default="task_arithmetic", help="merge method written into merge.yaml")
    args = ap.parse_args()
    base_dir = embedded_base()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (name, fact) in enumerate(FACTS.items()):
        train(base_dir, pairs_of(fact), args.out / name, args.steps, seed=i,
              probe={"question": fact["questions"][0], "expected": fact["expected"]})
    models = "".join(f"  - model: {name}\n    parameters: {{weight: 1.0}}\n" for name in FACTS)
    (args.out / "merge.yaml").write_text(f"merge_method: {args.method}\nbase_model: {DEFAULT_ID}\n"
                                         f"dtype: float32\nmodels:\n{models}")
    print(f"saved {', '.join(str(args.out / n) for n in FACTS)} and {args.out / 'merge.yaml'}")


if __name__ == "__main__":
    main()
