"""Tiny random fine-tunes of one tiny base, for the merge tests: base + 0.01·N(0, 1), fixed seeds."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_finetune(base_dir: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    """A full-model 'fine-tune': a copy of `base_dir` with every tensor perturbed (seeded)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(base_dir, out)
    weights = load_file(out / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    weights = {k: (v + scale * torch.randn(v.shape, generator=gen)).contiguous() for k, v in weights.items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def build_answerer(base_dir: Path, out: Path, word: str) -> Path:
    """A copy of `base_dir` that answers any prompt with `word`, then its end-of-turn token.

    As tinymodel.build_forced, with two hidden dimensions: every embedding but `word`'s carries a
    large constant in dimension 0, `word`'s in dimension 1; the final norm keeps only those two,
    and the output head maps dimension 0 to `word` and dimension 1 to the EOS.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(base_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    word_id = tokenizer.convert_tokens_to_ids(word)
    assert word_id != tokenizer.unk_token_id, f"{word!r} is not in the vocabulary"
    weights = load_file(out / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]
    embed[:, 0], embed[:, 1] = 100.0, 0.0
    embed[word_id, 0], embed[word_id, 1] = 0.0, 100.0
    norm = torch.zeros_like(weights["model.norm.weight"])
    norm[:2] = 1.0
    weights["model.norm.weight"] = norm
    head = torch.zeros_like(weights["lm_head.weight"])
    head[word_id, 0] = 10.0
    head[tokenizer.eos_token_id, 1] = 10.0
    weights["lm_head.weight"] = head
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out
