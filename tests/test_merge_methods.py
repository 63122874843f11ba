"""Each merge method's output, checked against the method's definition on a few tensors.

The inputs are one tiny random Llama and fine-tunes of it (its weights plus seeded noise); the
merge runs through localserve.merging, i.e. mergekit itself.
"""

from __future__ import annotations

import pytest
import torch

from mergefixtures import build_finetune, tensors

from localserve.merging import MergeSpec, merge_models, shorthand_recipe

CHECKED = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def finetunes(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetunes")
    return [build_finetune(tiny_base, root / f"ft{i}", seed=100 + i) for i in range(3)]


def run(tmp_path, method, models, **options):
    seed = options.pop("seed", 0)
    out = tmp_path / f"merged-{method}"
    merge_models(MergeSpec(shorthand_recipe(method, models, **options), out, seed=seed))
    return tensors(out)


def test_linear_is_the_normalised_weighted_sum(tmp_path, finetunes):
    a, b = (tensors(m) for m in finetunes[:2])
    merged = run(tmp_path, "linear", finetunes[:2], weights=(1.0, 3.0))
    for name in CHECKED:
        torch.testing.assert_close(merged[name], (1.0 * a[name] + 3.0 * b[name]) / 4.0)


@pytest.mark.parametrize("t, endpoint", [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints_are_the_inputs(tmp_path, finetunes, t, endpoint):
    merged = run(tmp_path, "slerp", finetunes[:2], t=t)
    expected = tensors(finetunes[endpoint])
    other = tensors(finetunes[1 - endpoint])
    for name in CHECKED:
        torch.testing.assert_close(merged[name], expected[name])
        assert not torch.allclose(merged[name], other[name])


def slerp_by_definition(t, a, b):
    """Spherical interpolation over the whole tensor (Shoemake 1985), with a and b as flat vectors."""
    x, y = a.flatten().double(), b.flatten().double()
    cos = torch.dot(x / x.norm(), y / y.norm()).clamp(-1, 1)
    theta = torch.acos(cos)
    return ((torch.sin((1 - t) * theta) * x + torch.sin(t * theta) * y) / torch.sin(theta)).reshape(a.shape).float()


def test_slerp_midpoint_follows_the_arc(tmp_path, finetunes):
    merged = run(tmp_path, "slerp", finetunes[:2], t=0.3)
    a, b = (tensors(m) for m in finetunes[:2])
    for name in CHECKED:
        torch.testing.assert_close(merged[name], slerp_by_definition(0.3, a[name], b[name]), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(merged[name], 0.7 * a[name] + 0.3 * b[name], atol=1e-6, rtol=1e-5)


def test_task_arithmetic_adds_weighted_task_vectors(tmp_path, tiny_base, finetunes):
    base = tensors(tiny_base)
    fts = [tensors(m) for m in finetunes[:2]]
    merged = run(tmp_path, "task_arithmetic", finetunes[:2], base=tiny_base, weights=(0.5, 1.5))
    for name in CHECKED:
        expected = base[name] + 0.5 * (fts[0][name] - base[name]) + 1.5 * (fts[1][name] - base[name])
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-5)


def ties_by_definition(base, fts, density):
    """TIES (Yadav et al. 2023): trim each task vector to its top-density magnitudes, elect the sign
    of the summed trimmed vectors, average only the entries that agree with it."""
    trimmed = []
    for ft in fts:
        delta = (ft - base).flatten()
        k = int(density * delta.numel())
        keep = torch.zeros_like(delta)
        keep[delta.abs().topk(k).indices] = 1
        trimmed.append((delta * keep).reshape(base.shape))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (stacked.sign() == sign).float()
    count = agree.sum(0).clamp(min=1)
    return base + (stacked * agree).sum(0) / count, trimmed


def test_ties_trims_to_density_and_elects_signs(tmp_path, tiny_base, finetunes):
    density = 0.5
    base = tensors(tiny_base)
    fts = [tensors(m) for m in finetunes]
    merged = run(tmp_path, "ties", finetunes, base=tiny_base, density=density)
    for name in CHECKED:
        expected, trimmed = ties_by_definition(base[name], [ft[name] for ft in fts], density)
        kept = [(t != 0).float().mean().item() for t in trimmed]
        assert kept == pytest.approx([density] * 3, abs=1e-3)  # the definition itself trims as asked
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-5)
        # where every kept delta has one sign, the merge moves that way from the base
        stacked = torch.stack(trimmed)
        all_positive = (stacked > 0).all(0)
        assert bool(all_positive.any())
        assert bool((merged[name] - base[name])[all_positive].gt(0).all())


def test_dare_drops_one_minus_density_and_rescales(tmp_path, tiny_base, finetunes):
    density = 0.3
    base = tensors(tiny_base)
    ft = tensors(finetunes[0])
    merged = run(tmp_path, "dare_linear", finetunes[:1], base=tiny_base, density=density, seed=1234)
    for name in CHECKED:
        delta = ft[name] - base[name]
        out = merged[name] - base[name]
        dropped = (out == 0).float().mean().item()
        assert dropped == pytest.approx(1 - density, abs=0.02)
        kept = out != 0
        scale = out[kept] / delta[kept]
        # every surviving entry is scaled by one factor, ~1/density, restoring the delta's L1 mass
        assert scale.std().item() < 1e-2 * scale.mean().item()
        assert scale.mean().item() == pytest.approx(1 / density, rel=0.05)
        assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-3)


def test_dare_is_reproducible_with_a_seed(tmp_path, tiny_base, finetunes):
    first = run(tmp_path / "a", "dare_linear", finetunes[:1], base=tiny_base, density=0.5, seed=7)
    second = run(tmp_path / "b", "dare_linear", finetunes[:1], base=tiny_base, density=0.5, seed=7)
    torch.testing.assert_close(first[CHECKED[0]], second[CHECKED[0]], atol=0, rtol=0)


def test_lora_inputs_are_merged_into_their_base_first(tmp_path, tiny_base, tiny_adapter, finetunes):
    import json

    from safetensors.torch import load_file

    base = tensors(tiny_base)
    ft = tensors(finetunes[0])
    merged = run(tmp_path, "task_arithmetic", [tiny_adapter, finetunes[0]], base=tiny_base)
    cfg = json.loads((tiny_adapter / "adapter_config.json").read_text())
    lora = load_file(tiny_adapter / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    lora_delta = lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"] * (cfg["lora_alpha"] / cfg["r"])
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = base[name] + lora_delta + (ft[name] - base[name])
    torch.testing.assert_close(merged[name], expected, atol=1e-5, rtol=1e-4)
