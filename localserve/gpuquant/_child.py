"""Runs inside the llm-compressor virtualenv (scripts/bootstrap_gpuquant.sh), never in localserve's.

    python _child.py JOB.json

JOB is {"task": "quantize" | "logprobs" | "chat", ...} (see `localserve/gpuquant/run.py`).
It imports nothing from localserve: that venv has llm-compressor's pins, not ours. Progress goes
to stdout as "LOCALSERVE-STEP <text>" lines; the answer as one "LOCALSERVE-RESULT <json>" line.
"""

import json
import os
import sys
import time


def say(text):
    print(f"LOCALSERVE-STEP {text}", flush=True)


def _no_pin_memory():
    # llm-compressor 0.14's AWQ calls Tensor.pin_memory() unconditionally; without an accelerator
    # torch refuses ("Cannot access accelerator device when none is available"). Pinning only
    # speeds up host-to-GPU copies, so on a CPU-only machine it is a no-op by right.
    import torch

    if not torch.cuda.is_available():
        torch.Tensor.pin_memory = lambda self, *a, **k: self


def _recipe(job):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = ["lm_head"]
    kind = job["modifier"]
    if kind == "fp8-dynamic":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if kind == "w8a8":
        return [GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore)]
    weights = {"num_bits": 4, "type": "int", "symmetric": kind == "gptq", "strategy": "group",
               "group_size": job["group_size"]}
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    if kind == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=ignore)]
    if kind == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        return [AWQModifier(config_groups=groups, ignore=ignore)]
    raise SystemExit(f"unknown modifier {kind!r}")


def quantize(job):
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _no_pin_memory()
    torch.manual_seed(0)
    say(f"loading {job['model']} in {job['dtype']}")
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=getattr(torch, job["dtype"]))
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    kwargs = {}
    samples = job.get("samples") or []
    if samples:
        from datasets import Dataset

        kwargs = dict(dataset=Dataset.from_dict({"input_ids": samples,
                                                 "attention_mask": [[1] * len(s) for s in samples]}),
                      max_seq_length=max(len(s) for s in samples), num_calibration_samples=len(samples))
        say(f"calibrating on {len(samples)} samples of <= {kwargs['max_seq_length']} tokens")
    t0 = time.perf_counter()
    oneshot(model=model, processor=tokenizer, recipe=_recipe(job), **kwargs)
    seconds = time.perf_counter() - t0
    say(f"quantized in {seconds:.1f} s; saving compressed-tensors to {job['out']}")
    model.save_pretrained(job["out"], save_compressed=True)
    return {"seconds": round(seconds, 2)}


def logprobs(job):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    # Decompressed to dense weights that hold exactly the quantized values: the same numbers a
    # GPU kernel multiplies, evaluated in fp32 like the reference.
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    model.eval()
    chunks, n_vocab = job["chunks"], job["n_vocab"]
    n_positions = sum(len(c) - 1 for c in chunks)
    out = np.lib.format.open_memmap(job["out"], mode="w+", dtype=np.float32, shape=(n_positions, n_vocab))
    at = 0
    with torch.inference_mode():
        for i, chunk in enumerate(chunks):
            logits = model(input_ids=torch.tensor([chunk], dtype=torch.long)).logits[0, : len(chunk) - 1, :n_vocab]
            out[at:at + len(chunk) - 1] = torch.log_softmax(logits.float(), dim=-1).numpy()
            at += len(chunk) - 1
            say(f"chunk {i + 1}/{len(chunks)}")
    out.flush()
    return {"n_positions": n_positions}


def chat(job):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import CompressedTensorsConfig

    # The same decompressed weights as `logprobs`: what the quantized model says, greedily.
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    ids = tokenizer.apply_chat_template(job["messages"], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=job["max_tokens"], do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    stopped = bool(new) and new[-1] in eos
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "finish": "stop" if stopped else "length"}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    result = {"quantize": quantize, "logprobs": logprobs, "chat": chat}[job["task"]](job)
    print("LOCALSERVE-RESULT " + json.dumps(result), flush=True)
