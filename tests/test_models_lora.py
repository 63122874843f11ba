"""`models.lora.describe`: an adapter's facts from its config and header, checked against what peft itself
builds from the same adapter on the tiny model — its per-module r, lora_alpha, scaling and fan_in_fan_out,
and the weights its merge_and_unload writes — so a derivation that drifts from peft fails here."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tinymodel import build_adapter

from localserve.models.lora import LoraKey, describe, parse_key, pattern_key, tokenizer_files
from localserve.models.merge import base_tensor_shapes
from localserve.models.resolve import Adapter, load_adapter


def peft_layers(base_dir: Path, adapter_dir: Path) -> dict[str, dict]:
    """Module path -> what peft's LoRA layer holds for the adapter, as peft loads it."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    return {name.removeprefix("base_model.model."): {
        "r": layer.r["default"], "alpha": layer.lora_alpha["default"], "scaling": layer.scaling["default"],
        "fan_in_fan_out": getattr(layer, "fan_in_fan_out", False), "dora": bool(layer.use_dora.get("default")),
        "kind": type(layer).__name__} for name, layer in model.named_modules() if isinstance(layer, LoraLayer)}


def facts_of(adapter_dir: Path, base_dir: Path):
    return describe(load_adapter(adapter_dir), base_tensor_shapes(base_dir))


def assert_matches_peft(facts, layers: dict[str, dict]) -> None:
    assert {m.path for m in facts.modules} == set(layers)
    kinds = {"linear": "Linear", "embedding": "Embedding"}
    for m in facts.modules:
        peft = layers[m.path]
        assert (m.rank, m.alpha, m.scale) == (peft["r"], peft["alpha"], peft["scaling"]), m.path
        assert kinds[m.kind] == peft["kind"], m.path
        if m.kind == "linear":
            assert m.fan_in_fan_out == peft["fan_in_fan_out"], m.path


def merged_by_facts(facts, base_dir: Path) -> dict:
    """The base's tensors with every update applied from the facts alone: saved tensors replace the
    base's, then W + scale·(B·A), transposed under fan_in_fan_out and for embeddings, lands on the base
    tensor the facts name (what a streaming merge does)."""
    import torch
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    lora = load_file(facts.weights)
    for t in facts.saved + facts.biases:  # loaded into the model first; an update then lands on it
        weights[t.base_tensor] = lora[t.key]
    for m in facts.modules:
        delta = lora[m.b_key].float() @ lora[m.a_key].float()
        if m.kind == "embedding" or m.fan_in_fan_out:
            delta = delta.T
        weights[m.base_weight] = weights[m.base_weight] + delta * m.scale
    return {k: v.to(torch.float32) for k, v in weights.items()}


def merged_by_peft(base_dir: Path, adapter_dir: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    return dict(model.merge_and_unload().state_dict())


def assert_same_merge(facts, base_dir: Path, adapter_dir: Path) -> None:
    import torch

    ours, theirs = merged_by_facts(facts, base_dir), merged_by_peft(base_dir, adapter_dir)
    changed = {m.base_weight for m in facts.modules} | {t.base_tensor for t in facts.saved + facts.biases}
    for name in changed:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-6, msg=name)


# --- adapters built once by peft on the tiny model ------------------------------------------------

@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-facts")

    def make(name, **lora):
        return build_adapter(tiny_base, root / name, **lora)

    return {
        "all-linear": make("all-linear", r=4, lora_alpha=12, target_modules="all-linear"),
        "rslora": make("rslora", r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "o_proj"]),
        "patterns": make("patterns", r=4, lora_alpha=8, target_modules="all-linear",
                         rank_pattern={"q_proj": 2, "^model.layers.1.mlp.down_proj": 6},
                         # "proj" names no whole path component, so it matches nothing
                         alpha_pattern={"proj": 99, r"layers\.0\..*_proj": 3, "v_proj": 20}),
        "embedding": make("embedding", r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
        "saved": make("saved", r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
        "dora": make("dora", r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_dora=True),
    }


def test_an_all_linear_lora_has_every_linear_module_with_peft_rank_alpha_and_scale(adapters, tiny_base):
    facts = facts_of(adapters["all-linear"], tiny_base)
    assert_matches_peft(facts, peft_layers(tiny_base, adapters["all-linear"]))
    assert facts.module_names == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
    assert all(m.kind == "linear" and m.scale == 12 / 4 and not m.fan_in_fan_out for m in facts.modules)
    assert facts.base_weights == {m.path: f"{m.path}.weight" for m in facts.modules}
    base = base_tensor_shapes(tiny_base)
    for m in facts.modules:
        assert m.a_shape == (4, base[m.base_weight][1]) and m.b_shape == (base[m.base_weight][0], 4)
        assert parse_key(m.a_key).part == "lora_A" and parse_key(m.b_key).part == "lora_B"
    assert not (facts.saved or facts.biases or facts.modules_to_save or facts.variants or facts.use_dora)
    assert_same_merge(facts, tiny_base, adapters["all-linear"])


def test_rslora_scales_by_alpha_over_the_square_root_of_r(adapters, tiny_base):
    facts = facts_of(adapters["rslora"], tiny_base)
    assert facts.use_rslora
    assert {m.scale for m in facts.modules} == {8 / 16 ** 0.5}
    assert_matches_peft(facts, peft_layers(tiny_base, adapters["rslora"]))
    assert_same_merge(facts, tiny_base, adapters["rslora"])


def test_rank_and_alpha_patterns_resolve_per_module_as_peft_resolves_them(adapters, tiny_base):
    from peft.utils.other import get_pattern_key

    facts = facts_of(adapters["patterns"], tiny_base)
    config = load_adapter(adapters["patterns"]).config
    assert_matches_peft(facts, peft_layers(tiny_base, adapters["patterns"]))
    for m in facts.modules:
        for patterns, ours in ((config["rank_pattern"], m.rank_pattern), (config["alpha_pattern"], m.alpha_pattern)):
            theirs = get_pattern_key(patterns.keys(), m.path)
            assert ours == (theirs if theirs in patterns else None), m.path
    by_path = {m.path: m for m in facts.modules}
    assert by_path["model.layers.1.self_attn.q_proj"].rank == 2
    assert by_path["model.layers.1.mlp.down_proj"].rank == 6 and by_path["model.layers.0.mlp.down_proj"].rank == 4
    assert by_path["model.layers.0.self_attn.v_proj"].alpha == 3  # the first matching pattern wins
    assert by_path["model.layers.1.self_attn.v_proj"].alpha == 20
    assert facts.max_rank == 6 and not facts.uniform
    assert_same_merge(facts, tiny_base, adapters["patterns"])


def test_an_embedding_lora_is_transposed_onto_the_embedding_and_its_saved_copy_is_found(adapters, tiny_base):
    facts = facts_of(adapters["embedding"], tiny_base)
    assert_matches_peft(facts, peft_layers(tiny_base, adapters["embedding"]))
    emb = next(m for m in facts.modules if m.kind == "embedding")
    vocab, dim = base_tensor_shapes(tiny_base)["model.embed_tokens.weight"]
    assert emb.path == "model.embed_tokens" and emb.base_weight == "model.embed_tokens.weight"
    assert emb.a_key.endswith("lora_embedding_A") and emb.a_shape == (4, vocab) and emb.b_shape == (dim, 4)
    # peft saves the embedding layer itself beside a LoRA on it (save_embedding_layers); it replaces the base's
    assert [(t.module, t.base_tensor) for t in facts.saved] == [("model.embed_tokens", "model.embed_tokens.weight")]
    assert facts.saved_modules == ("model.embed_tokens",)
    assert_same_merge(facts, tiny_base, adapters["embedding"])


def test_modules_to_save_come_from_the_config_and_from_the_weights(adapters, tiny_base, tmp_path):
    facts = facts_of(adapters["saved"], tiny_base)
    assert facts.modules_to_save == ("lm_head",) and facts.saved_modules == ("lm_head",)
    assert [(t.key, t.base_tensor) for t in facts.saved] == [("base_model.model.lm_head.weight", "lm_head.weight")]
    assert_same_merge(facts, tiny_base, adapters["saved"])

    silent = shutil.copytree(adapters["saved"], tmp_path / "silent")
    config = json.loads((silent / "adapter_config.json").read_text())
    config["modules_to_save"] = None
    (silent / "adapter_config.json").write_text(json.dumps(config))
    facts = facts_of(silent, tiny_base)
    assert facts.modules_to_save == () and facts.saved_modules == ("lm_head",)


def test_dora_names_each_modules_magnitude_vector(adapters, tiny_base):
    facts = facts_of(adapters["dora"], tiny_base)
    layers = peft_layers(tiny_base, adapters["dora"])
    assert_matches_peft(facts, layers)
    assert facts.use_dora and facts.variants == ("use_dora",)
    assert all(layers[m.path]["dora"] for m in facts.modules)
    assert all(parse_key(m.magnitude_key) == LoraKey(m.path, "lora_magnitude_vector", None) for m in facts.modules)
    # the magnitudes alone make it DoRA, whatever the config says
    config = {**load_adapter(adapters["dora"]).config, "use_dora": False}
    assert describe(Adapter(adapters["dora"], config, adapters["dora"] / "adapter_model.safetensors", False)).use_dora


def test_lora_bias_keys_are_per_module(tiny_base, tmp_path):
    adapter = build_adapter(tiny_base, tmp_path / "biased", r=4, lora_alpha=8, target_modules=["q_proj"],
                            lora_bias=True)
    facts = facts_of(adapter, tiny_base)
    assert facts.lora_bias and all(m.bias_key == m.b_key.removesuffix("weight") + "bias" for m in facts.modules)
    assert not facts.saved and not facts.biases


def test_a_tied_lm_head_lands_on_the_input_embedding(tiny_base, tmp_path):
    from safetensors.torch import load_file, save_file

    tied = shutil.copytree(tiny_base, tmp_path / "tied")
    weights = load_file(tied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    adapter = build_adapter(tied, tmp_path / "head", r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"])
    facts = facts_of(adapter, tied)
    head = next(m for m in facts.modules if m.path == "lm_head")
    assert head.base_weight == "model.embed_tokens.weight" and head.tied
    assert not any(m.tied for m in facts.modules if m.path != "lm_head")
    assert_matches_peft(facts, peft_layers(tied, adapter))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2: its projections are Conv1D, stored (in, out); its lm_head is tied to wte."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    base = tmp_path_factory.mktemp("gpt2") / "base"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(base)
    return base


@pytest.mark.parametrize("config_says", [True, False])
def test_fan_in_fan_out_follows_the_module_as_peft_does_not_the_config(gpt2, tmp_path, config_says):
    """peft transposes Conv1D updates whatever fan_in_fan_out says; attn.c_proj is square (32x32), so
    only the adapter's other projections show its orientation. With lm_head targeted, peft itself
    saves fan_in_fan_out=False (the last module it wrapped was a Linear)."""
    adapter = build_adapter(gpt2, tmp_path / "adapter", r=4, lora_alpha=8, fan_in_fan_out=True,
                            target_modules=["c_attn", "c_fc", "c_proj", "lm_head"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": config_says}))
    facts = facts_of(adapter, gpt2)
    by_path = {m.path: m for m in facts.modules}
    assert by_path["transformer.h.0.attn.c_proj"].fan_in_fan_out  # square: shown by the other projections
    assert by_path["transformer.h.0.attn.c_attn"].fan_in_fan_out and by_path["transformer.h.0.mlp.c_fc"].fan_in_fan_out
    assert not by_path["lm_head"].fan_in_fan_out
    assert by_path["lm_head"].base_weight == "transformer.wte.weight" and by_path["lm_head"].tied
    assert_matches_peft(facts, peft_layers(gpt2, adapter))
    assert_same_merge(facts, gpt2, adapter)


def test_trained_biases_are_told_apart_from_saved_modules(gpt2, tmp_path):
    adapter = build_adapter(gpt2, tmp_path / "biases", r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                            bias="lora_only")
    facts = facts_of(adapter, gpt2)
    assert facts.bias == "lora_only" and not facts.saved and not facts.saved_modules
    assert {(t.module, t.base_tensor) for t in facts.biases} == {
        (m.path, f"{m.path}.bias") for m in facts.modules}
    assert_same_merge(facts, gpt2, adapter)


def test_every_lora_variant_peft_knows_is_named(tiny_adapter):
    from peft import LoraConfig

    variants = [f.name for f in dataclasses.fields(LoraConfig) if f.metadata.get("is_lora_variant")]
    adapter = load_adapter(tiny_adapter)
    assert describe(adapter).variants == ()
    for name in variants:
        config = {**adapter.config, name: {"some": "setting"}}
        assert name in describe(Adapter(adapter.path, config, adapter.weights, False)).variants, name


def test_pattern_keys_match_whole_paths_or_dotted_suffixes():
    from peft.utils.other import get_pattern_key

    paths = ("model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.q_proj", "model.layers.0.mlp.down_proj")
    patterns = ("proj", "layers.1", r"layers\.1\d\..*", "q_proj", "^model.layers.0.mlp.down_proj")
    for path in paths:
        theirs = get_pattern_key(patterns, path)
        assert pattern_key(patterns, path) == (theirs if theirs in patterns else None), path


# --- the tokenizer and chat template an adapter ships ---------------------------------------------

def test_an_adapter_without_tokenizer_files_ships_none(tiny_adapter, tiny_base):
    facts = describe(load_adapter(tiny_adapter))
    assert not facts.ships_tokenizer and not facts.ships_chat_template
    assert facts.tokenizer.differing_from(tiny_base) == ()


def test_an_adapter_with_its_own_chat_template_ships_it_and_differs_from_the_base(tiny_adapter, tiny_base, tmp_path):
    own = shutil.copytree(tiny_adapter, tmp_path / "own")
    shutil.copyfile(tiny_base / "tokenizer.json", own / "tokenizer.json")  # an unchanged copy
    (own / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    facts = describe(load_adapter(own))
    assert facts.ships_tokenizer and facts.ships_chat_template
    assert facts.tokenizer.names == ("tokenizer.json", "tokenizer_config.json")
    assert facts.tokenizer.template == "tokenizer_config.json"
    assert facts.tokenizer.differing_from(tiny_base) == ("tokenizer_config.json",)
    (own / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_files(own).template == "chat_template.jinja"  # transformers prefers the file


def test_a_template_the_adapter_carries_is_not_shadowed_by_the_bases(tiny_adapter, tiny_base, tmp_path):
    from localserve.models.lora import tokenizer_sources

    own = shutil.copytree(tiny_adapter, tmp_path / "own")
    (own / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    sources = tokenizer_sources(tokenizer_files(own), tiny_base)
    assert sources["tokenizer_config.json"] == own / "tokenizer_config.json"
    assert sources["tokenizer.json"] == tiny_base / "tokenizer.json"
    assert "chat_template.jinja" not in sources
    assert tokenizer_sources(None, tiny_base)["chat_template.jinja"] == tiny_base / "chat_template.jinja"
