#!/usr/bin/env python3
"""Synthetic Llama-shaped models and LoRA adapters, for benchmarks and memory tests without a hub.

Random bf16 weights in the exact tensor shapes of a published Llama, written tensor by tensor (the
generator never holds more than one tensor), with a tokenizer of the model's vocabulary size (the
tests' tiny BPE, padded with unreachable tokens: llama.cpp's converter needs one token per embedding
row), and a random all-linear LoRA in peft's file layout.

    python scripts/synthetic_llama.py OUT --shape llama-3.2-1b [--rank 16]

writes OUT/base (config.json, safetensors shards, tokenizer) and OUT/adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tinymodel's tokenizer trainer

# Shapes of the published configs (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SHAPES = {
    # 0.4 GB in bf16, its largest tensor 17 MB: a whole-model merge shows in memory, a per-tensor one hardly
    "test-400mb": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
                       num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(shape: dict) -> dict[str, tuple[int, int]]:
    """Module name -> (out, in) of every linear layer of one decoder layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def base_tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    h = shape["hidden_size"]
    out = [("model.embed_tokens.weight", (shape["vocab_size"], h))]
    for layer in range(shape["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,))]
        for name, dims in linear_shapes(shape).items():
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            out.append((f"{p}.{part}.{name}.weight", dims))
    out.append(("model.norm.weight", (h,)))
    if not shape["tie_word_embeddings"]:
        out.append(("lm_head.weight", (shape["vocab_size"], h)))
    return out


def _random(shape: tuple[int, ...], seed: int, std: float):
    import torch

    g = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)  # norms
    return (torch.randn(shape, generator=g, dtype=torch.float32) * std).to(torch.bfloat16)


def write_base(out: Path, name: str, seed: int = 0) -> Path:
    from localserve.models.tensors import PlannedTensor, write_shards
    from tinymodel import train_tokenizer

    shape = SHAPES[name]
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out)
    _pad_vocab(out / "tokenizer.json", shape["vocab_size"])
    tok = json.loads((out / "tokenizer.json").read_text())
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|im_end|>")
    bos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<s>")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
              "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "bos_token_id": bos, "eos_token_id": eos, "attention_bias": False, "mlp_bias": False, **shape}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    tensors = [PlannedTensor(n, "bfloat16", s, lambda s=s, i=i: _random(s, seed + i, 0.02))
               for i, (n, s) in enumerate(base_tensors(shape))]
    write_shards(tensors, out, 2 * 1000**3, f"synthetic {name}")
    return out


def _pad_vocab(tokenizer_json: Path, vocab_size: int) -> None:
    """Pad the BPE vocabulary with tokens no merge reaches, to the model's vocabulary size."""
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    assert all(t["content"] in vocab for t in data["added_tokens"])  # the trainer puts special tokens in the vocab
    for i in range(vocab_size - len(vocab)):
        vocab[f"<pad_{i}>"] = len(vocab)
    ids = sorted(vocab.values())
    assert ids == list(range(vocab_size)), (len(ids), vocab_size)
    tokenizer_json.write_text(json.dumps(data))


def write_adapter(out: Path, base: Path, name: str, rank: int = 16, seed: int = 1) -> Path:
    from localserve.models.tensors import PlannedTensor, write_shards

    shape = SHAPES[name]
    out.mkdir(parents=True, exist_ok=True)
    tensors = []
    for layer in range(shape["num_hidden_layers"]):
        for module, (o, i) in linear_shapes(shape).items():
            part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{module}"
            s = seed + 1000 * layer + LINEAR.index(module)
            tensors += [PlannedTensor(f"{key}.lora_A.weight", "bfloat16", (rank, i), lambda r=rank, i=i, s=s: _random((r, i), s, 0.02)),
                        PlannedTensor(f"{key}.lora_B.weight", "bfloat16", (o, rank), lambda r=rank, o=o, s=s: _random((o, r), s + 7, 0.02))]
    write_shards(tensors, out, 10**12, f"synthetic adapter r={rank}")
    (out / "model.safetensors").rename(out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": list(LINEAR), "bias": "none", "base_model_name_or_path": str(base.resolve())}, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    base = write_base(args.out / "base", args.shape)
    write_adapter(args.out / "adapter", base, args.shape, args.rank)
    print(args.out)


if __name__ == "__main__":
    main()
