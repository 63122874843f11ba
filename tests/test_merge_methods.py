"""Each merge method's output, checked against the method's definition on a few tensors.

The inputs are one tiny random Llama and fine-tunes of it (its weights plus seeded noise); the
merge runs through localserve.merging, i.e. mergekit itself.
"""

from __future__ import annotations

import pytest
import torch

from mergefixtures import build_finetune, tensors

from localserve.merging import MergeSpec, load_recipe, merge_models, shorthand_recipe

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


def lora_delta(adapter, module: str):
    """B·A·(alpha/r) of one LoRA module, i.e. what merging the adapter adds to that weight."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    lora = load_file(adapter / "adapter_model.safetensors")
    prefix = f"base_model.model.{module}"
    return lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"] * (cfg["lora_alpha"] / cfg["r"])


def merge_yaml(tmp_path, text: str, seed: int = 0):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    out = tmp_path / "merged"
    return merge_models(MergeSpec(load_recipe(recipe), out, seed=seed)), out


def test_mergekits_base_plus_adapter_form_merges_the_adapter_and_records_both(tmp_path, tiny_base, tiny_adapter,
                                                                              finetunes):
    from localserve.fsutil import sha256_tree

    result, out = merge_yaml(tmp_path, f"merge_method: task_arithmetic\nbase_model: {tiny_base}\ndtype: float32\n"
                                       f"models:\n  - model: {finetunes[0]}\n    parameters: {{weight: 1.0}}\n"
                                       f"  - model: {tiny_base}+{tiny_adapter}\n    parameters: {{weight: 1.0}}\n")
    base, ft, merged = tensors(tiny_base), tensors(finetunes[0]), tensors(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = base[name] + lora_delta(tiny_adapter, "model.layers.0.self_attn.q_proj") + (ft[name] - base[name])
    torch.testing.assert_close(merged[name], expected, atol=1e-5, rtol=1e-4)
    assert {i["path"]: i["sha256"] for i in result.inputs} == {
        str(p.resolve()): sha256_tree(p) for p in (tiny_base, finetunes[0], tiny_adapter)}
    from localserve.fsutil import sha256_file
    from localserve.lineage import read_record

    record = read_record(out)  # the merged folder says what it is, for later exports and the version store
    assert record.kind == "merge" and record.merge["method"] == "task_arithmetic"
    assert record.merge["inputs"] == result.inputs
    assert {a.file: a.sha256 for a in record.artifacts} == {p.name: sha256_file(p) for p in out.glob("*.safetensors")}


def test_a_folder_merged_again_after_it_changed_is_read_anew(tmp_path, tiny_base):
    """mergekit caches a loader per model path for the whole process; each merge must see the files as they are."""
    import shutil

    model = build_finetune(tiny_base, tmp_path / "model", seed=1)
    recipe = f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1.0}}\n"
    _, first = merge_yaml(tmp_path / "first", recipe)
    shutil.rmtree(model)
    build_finetune(tiny_base, model, seed=2)
    _, second = merge_yaml(tmp_path / "second", recipe)
    torch.testing.assert_close(tensors(second)[CHECKED[0]], tensors(model)[CHECKED[0]], atol=0, rtol=0)
    assert not torch.equal(tensors(first)[CHECKED[0]], tensors(second)[CHECKED[0]])


# --- the methods with no definition check above: each runs, and changes what it should ----------

EVERY_METHOD = {
    # DARE-style dropping of the gamma largest and the smallest deltas (Davari & Belilovsky 2023)
    "breadcrumbs": "merge_method: breadcrumbs\nbase_model: {base}\nmodels:\n"
                   "  - model: {a}\n    parameters: {{weight: 1.0, density: 0.9, gamma: 0.01}}\n"
                   "  - model: {b}\n    parameters: {{weight: 1.0, density: 0.9, gamma: 0.01}}\n",
    # magnitude-ranked random drops; mergekit requires density ± epsilon within (0, 1)
    "della": "merge_method: della\nbase_model: {base}\nparameters: {{lambda: 1.0}}\nmodels:\n"
             "  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5, epsilon: 0.1}}\n"
             "  - model: {b}\n    parameters: {{weight: 1.0, density: 0.5, epsilon: 0.1}}\n",
    # needs the base and at least two fine-tunes
    "model_stock": "merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n",
    # layers 0-1 of a, then layer 1 of b: a three-layer model
    "passthrough": "merge_method: passthrough\nslices:\n"
                   "  - sources:\n      - model: {a}\n        layer_range: [0, 2]\n"
                   "  - sources:\n      - model: {b}\n        layer_range: [1, 2]\n",
}


def loads_and_runs(model_dir) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 13]])).logits
    assert torch.isfinite(logits).all()
    return model.config.num_hidden_layers


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_every_other_method_runs_as_written(tmp_path, tiny_base, finetunes, method):
    a, b = finetunes[:2]
    result, out = merge_yaml(tmp_path, EVERY_METHOD[method].format(base=tiny_base, a=a, b=b), seed=3)
    assert result.method == method
    merged, base, ta, tb = tensors(out), tensors(tiny_base), tensors(a), tensors(b)
    if method == "passthrough":
        assert loads_and_runs(out) == 3
        for layer, (source, source_layer) in enumerate([(ta, 0), (ta, 1), (tb, 1)]):
            for part in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
                torch.testing.assert_close(merged[f"model.layers.{layer}.{part}"],
                                           source[f"model.layers.{source_layer}.{part}"], atol=0, rtol=0)
        # mergekit takes the embeddings from the first slice, the final norm and head from the last
        torch.testing.assert_close(merged["model.embed_tokens.weight"], ta["model.embed_tokens.weight"], atol=0, rtol=0)
        for name in ("model.norm.weight", "lm_head.weight"):
            torch.testing.assert_close(merged[name], tb[name], atol=0, rtol=0)
        return
    assert loads_and_runs(out) == 2
    for name in CHECKED:
        for source in (base, ta, tb):
            assert not torch.allclose(merged[name], source[name]), f"{method} left {name} as one of its inputs"
        moved, da, db = (t.flatten() for t in (merged[name] - base[name], ta[name] - base[name], tb[name] - base[name]))
        if method == "model_stock":
            # Model Stock (Jang et al. 2024): t·mean(fine-tunes) + (1 - t)·base, t = 2cos / (1 + cos) for two
            cos = torch.dot(da, db) / (da.norm() * db.norm())
            t = 2 * cos / (1 + cos)
            expected = t * (ta[name] + tb[name]) / 2 + (1 - t) * base[name]
            torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-5)
        else:  # sparsified task vectors, summed: the base moves towards the fine-tunes
            assert torch.nn.functional.cosine_similarity(moved, da + db, dim=0) > 0.3
