#!/usr/bin/env python3
"""What `localserve finetune` costs: its training tokens/s against a plain transformers + peft loop with the same
settings, in one run (the ratio is the number to read); and the continuous loop's total time.

Both train the embedded SmolLM2-135M on examples/loop/codename.jsonl with the recipe of examples/loop/recipe.yaml
(LoRA r=8 on every linear layer, AdamW at 1e-3 decaying linearly, batches of 4, the same seed), the loss on the
assistant turns: the same examples (each rendered by the chat template: prompt with its generation prompt, then the
answer), padded per batch the same way, for the same number of steps. Tokens are the non-padding tokens of the
batches; the time is the training loop's alone (no model loading, no saving). Each side runs `--rounds` times,
alternating, and its best round counts.

    python scripts/bench_finetune.py [--steps 30] [--rounds 2] [--loop]   # --loop: also time continuous_demo.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "loop" / "codename.jsonl"
RECIPE = REPO / "examples" / "loop" / "recipe.yaml"


def plain_loop(base: Path, recipe, steps: int) -> dict:
    """The reference: transformers + peft by hand, as scripts/train_demo_adapter.py trains."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localserve.loop.finetune import assistant_turns, read_conversations

    tokenizer = AutoTokenizer.from_pretrained(base)
    conversations, _ = read_conversations((DATA,))
    examples = []
    for c in conversations:
        for turn in assistant_turns(c.messages):
            prompt = tokenizer.apply_chat_template(turn["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
            full = tokenizer.apply_chat_template(turn["prompt"] + turn["completion"], tokenize=True, return_dict=False)
            examples.append((full, len(prompt)))
    transformers.set_seed(recipe.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                                             target_modules=recipe.target_modules, task_type="CAUSAL_LM"))
    trained = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trained, lr=recipe.learning_rate, weight_decay=0.0)  # the Trainer's defaults
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1 - s / steps))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = random.Random(recipe.seed)
    order: list[int] = []
    tokens, loss = 0, None
    model.train()
    begun = time.perf_counter()
    for _ in range(steps):
        if len(order) < recipe.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(recipe.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, start) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, start:len(ids)] = torch.tensor(ids[start:])  # the answer, not the prompt
            mask[row, :len(ids)] = 1
        tokens += int(mask.sum())
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # the Trainer's max_grad_norm
        optim.step()
        schedule.step()
        optim.zero_grad()
        loss = out.loss.item()
    seconds = time.perf_counter() - begun
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "final_loss": loss}


def localserve_finetune(base: Path, recipe, steps: int) -> dict:
    from dataclasses import replace

    from localserve.loop.finetune import FinetuneSpec, finetune

    with tempfile.TemporaryDirectory() as tmp:
        record = finetune(FinetuneSpec(data=(DATA,), base=str(base), recipe=replace(recipe, steps=steps),
                                       out=Path(tmp) / "adapter")).record
    return {"tokens": record["train_tokens"], "seconds": record["train_seconds"],
            "tokens_per_s": record["train_tokens_per_second"], "final_loss": record["final_loss"]}


def loop_time() -> dict:
    """scripts/continuous_demo.py against the tests' Ollama stand-in, in a temporary folder."""
    import os

    sys.path.insert(0, str(REPO / "scripts"))
    sys.path.insert(0, str(REPO / "tests"))
    from continuous_demo import run
    from ollama_standin.server import Standin

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOCALSERVE_STATE_DIR"] = str(Path(tmp) / "state")
        standin = Standin(Path(tmp) / "ollama-models").start()
        try:
            outcome = run(Path(tmp), standin.url, log=lambda *a: None)
        finally:
            standin.stop()
    return {"total_s": outcome["total_s"], "stages": outcome["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loop", action="store_true", help="also run the continuous loop and report its total time")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()

    from localserve.loop.recipe import load_recipe
    from localserve.models.embedded import embedded_base
    from localserve.progress import set_debug, set_quiet

    set_debug(False)
    set_quiet(True)
    base, recipe = embedded_base(), load_recipe(RECIPE)
    runs: dict[str, list[dict]] = {"plain": [], "localserve": []}
    for i in range(args.rounds):
        for side, fn in (("plain", plain_loop), ("localserve", localserve_finetune)):
            runs[side].append(fn(base, recipe, args.steps))
            r = runs[side][-1]
            print(f"round {i + 1} {side:<10} {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens_per_s']:.0f} "
                  f"tokens/s, final loss {r['final_loss']:.4f}", flush=True)
    best = {side: max(rs, key=lambda r: r["tokens_per_s"]) for side, rs in runs.items()}
    ratio = best["localserve"]["tokens_per_s"] / best["plain"]["tokens_per_s"]
    print(f"\n{args.steps} steps of batch {recipe.batch_size}, LoRA r={recipe.rank} ({recipe.target_modules}), "
          f"SmolLM2-135M fp32, CPU; best of {args.rounds} rounds")
    print(f"{'':<28}{'tokens/s':>10}{'tokens':>8}{'seconds':>9}{'final loss':>12}")
    for side, label in (("plain", "transformers + peft loop"), ("localserve", "localserve finetune (TRL)")):
        r = best[side]
        print(f"{label:<28}{r['tokens_per_s']:>10.0f}{r['tokens']:>8}{r['seconds']:>9.1f}{r['final_loss']:>12.4f}")
    print(f"ratio localserve / plain: {ratio:.2f}x")
    numbers = {"steps": args.steps, "runs": runs, "ratio": ratio}
    if args.loop:
        numbers["loop"] = loop_time()
        print(f"\nthe continuous loop (scripts/continuous_demo.py): {numbers['loop']['total_s']:.0f} s — " +
              ", ".join(f"{k} {v:.0f} s" for k, v in numbers["loop"]["stages"].items()))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
