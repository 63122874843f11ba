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
