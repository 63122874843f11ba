"""Tiny, real Llama models built in the test session: a BPE tokenizer trained here, random weights.

Hidden and intermediate sizes are multiples of 256 so llama.cpp's K-quants apply to every matrix
(a row size that is not a multiple of 256 makes them fall back to other types).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly box jam; hello world, "
         "tiny models answer questions about colours, numbers and the weather today").split()


def train_tokenizer(out: Path, seed: int = 0) -> None:
    """A Llama-style BPE with byte fallback (what llama.cpp's converter reads as an SPM vocab)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(14)) for _ in range(3000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL + byte_tokens, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
        "pad_token": "<|im_end|>", "add_bos_token": False, "add_eos_token": False, "model_max_length": 512,
    }, indent=2))
    (out / "chat_template.jinja").write_text(CHATML_TEMPLATE)


def build_base(out: Path, seed: int = 0, hidden: int = 256, layers: int = 2) -> Path:
    """Save a random LlamaForCausalLM with its tokenizer and ChatML template into `out`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out, seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<s>"), eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=eos).save_pretrained(out)
    return out


def build_lora(base_dir: Path, out: Path, seed: int = 1, r: int = 8, alpha: int = 16,
               targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """A random LoRA on `base_dir` (B is non-zero, unlike peft's init, so merging changes weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir.resolve())
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def build_adapter(base_dir: Path, out: Path, seed: int = 3, **lora) -> Path:
    """A peft LoRA on `base_dir` with LoraConfig(**lora), every trained tensor random (peft starts B at
    zero, which would make every update vanish and every merge comparison pass)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir.resolve())
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def build_forced(base_dir: Path, out: Path, token: str) -> Path:
    """A copy of `base_dir` whose greedy output is always `token`, whatever the prompt.

    Every embedding gets a large constant in one hidden dimension, the final norm keeps only that
    dimension, and only `token`'s output row reads it: its logit is the one positive logit. With
    `token` = the EOS the model says nothing; with an ordinary word it never stops.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(base_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert token_id != tokenizer.unk_token_id, f"{token!r} is not in the vocabulary"
    weights = load_file(out / "model.safetensors")
    dim = 0
    weights["model.embed_tokens.weight"][:, dim] = 100.0
    norm = torch.zeros_like(weights["model.norm.weight"])
    norm[dim] = 1.0
    weights["model.norm.weight"] = norm
    head = torch.zeros_like(weights["lm_head.weight"])
    head[token_id, dim] = 10.0
    weights["lm_head.weight"] = head
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out
