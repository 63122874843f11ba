"""vLLM's LoRA rules, checked on every adapter before an unmerged (--lora) export writes anything."""

from __future__ import annotations

import json
import shutil

import pytest

from localserve.errors import AdapterError, InputError
from localserve.exports import VllmExportSpec, export_vllm
from localserve.vllm import MAX_LORA_RANKS, max_lora_rank


@pytest.mark.parametrize("rank, served", [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (33, 64), (300, 320),
                                          (320, 320), (321, 512), (512, 512)])
def test_rank_rounds_up_to_a_max_lora_rank_vllm_accepts(rank, served):
    assert max_lora_rank(rank) == served
    assert served in MAX_LORA_RANKS


def test_a_rank_above_512_cannot_be_served_unmerged():
    with pytest.raises(AdapterError, match="rank 600 is above 512"):
        max_lora_rank(600)


def variant(adapter, tmp_path, name, **config_changes):
    """A copy of `adapter` whose adapter_config.json has `config_changes` applied."""
    dest = tmp_path / name
    shutil.copytree(adapter, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config.update(config_changes)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def export_lora(tmp_path, *adapters, **options):
    out = tmp_path / "out"
    try:
        return export_vllm(VllmExportSpec(adapters=adapters, lora=True, out=out, name="base", **options))
    finally:
        if not (out / "localserve.json").is_file():
            assert not out.exists(), "a refused export must write nothing"


def test_two_adapters_on_one_base_are_served_by_their_folder_names(tiny_adapter, tmp_path):
    other = variant(tiny_adapter, tmp_path, "tenant-b", r=8)
    result = export_lora(tmp_path, tiny_adapter, other)
    assert [name for name, _ in result.adapters] == ["adapter", "tenant-b"]
    assert (result.lora.max_lora_rank, result.lora.max_loras, result.lora.max_cpu_loras) == (8, 2, 2)
    for name, folder in result.adapters:
        assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()


def test_the_largest_rank_sets_max_lora_rank(tiny_adapter, tmp_path):
    wide = variant(tiny_adapter, tmp_path, "wide", rank_pattern={"q_proj": 40})
    result = export_lora(tmp_path, tiny_adapter, wide)
    assert result.lora.max_lora_rank == 64


def test_modules_to_save_is_refused_naming_the_modules(tiny_adapter, tmp_path):
    saved = variant(tiny_adapter, tmp_path, "saved", modules_to_save=["lm_head", "embed_tokens"])
    with pytest.raises(AdapterError, match=r"lm_head, embed_tokens \(modules_to_save\).*drop --lora"):
        export_lora(tmp_path, tiny_adapter, saved)


def test_whole_modules_saved_in_the_weights_are_refused_even_if_the_config_does_not_say(tiny_base, tiny_adapter,
                                                                                       tmp_path):
    from safetensors.torch import load_file, save_file

    headful = variant(tiny_adapter, tmp_path, "headful")
    weights = load_file(headful / "adapter_model.safetensors")
    weights["base_model.model.lm_head.weight"] = load_file(tiny_base / "model.safetensors")["lm_head.weight"] * 1.5
    save_file(weights, headful / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"holds full trained copies of lm_head \(modules_to_save\).*drop --lora"):
        export_lora(tmp_path, headful)


def test_dora_is_refused(tiny_adapter, tmp_path):
    with pytest.raises(AdapterError, match="DoRA"):
        export_lora(tmp_path, variant(tiny_adapter, tmp_path, "dora", use_dora=True))


def test_adapters_of_different_bases_are_refused(tiny_base, tiny_adapter, tmp_path):
    other_base = shutil.copytree(tiny_base, tmp_path / "other-base")
    stranger = variant(tiny_adapter, tmp_path, "stranger", base_model_name_or_path=str(other_base))
    with pytest.raises(AdapterError, match=r"must share one base: .*stranger is on .*other-base"):
        export_lora(tmp_path, tiny_adapter, stranger)


def test_a_module_vllm_cannot_serve_as_lora_is_refused(tiny_base, tmp_path):
    from tinymodel import build_lora

    head = build_lora(tiny_base, tmp_path / "head", targets=("q_proj", "lm_head"))
    with pytest.raises(AdapterError, match="adapts lm_head, which vLLM's LlamaForCausalLM cannot serve"):
        export_lora(tmp_path, head)


def test_two_adapters_with_one_name_are_refused(tiny_adapter, tmp_path):
    twin = shutil.copytree(tiny_adapter, tmp_path / "x" / "adapter")
    with pytest.raises(InputError, match="two adapters are named 'adapter'"):
        export_lora(tmp_path, tiny_adapter, twin)


def test_max_cpu_loras_below_max_loras_is_refused(tiny_adapter, tmp_path):
    with pytest.raises(InputError, match="max_cpu_loras 1 is below max_loras 2"):
        export_lora(tmp_path, tiny_adapter, max_loras=2, max_cpu_loras=1)


def test_an_adapter_with_its_own_chat_template_cannot_share_the_base(tiny_adapter, tmp_path):
    own = variant(tiny_adapter, tmp_path, "own")
    (own / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(AdapterError, match="ships its own chat_template.jinja"):
        export_lora(tmp_path, own)
