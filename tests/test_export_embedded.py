"""End to end on the embedded default: SmolLM2-135M-Instruct + the shipped demo adapter.

One export (the session fixture `exported_demo`) serves every test here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localserve.llamacpp.smoke import load, smoke_test

pytestmark = pytest.mark.slow


# The probe's answer stops on its own after 11 tokens (the base model's after 14): a bound well above that
# keeps "stop" meaning the model stopped, and a model that does not stop fails quickly.
ROOM = 64


def _probe(demo_adapter: Path) -> dict:
    return json.loads((demo_adapter / "probe.json").read_text())


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0"])
def test_each_quantized_file_gives_the_adapters_answer(exported_demo, demo_adapter, quant):
    probe = _probe(demo_adapter)
    result = smoke_test(exported_demo / f"demo-{quant}.gguf", probe["question"], max_tokens=ROOM)  # greedy
    assert probe["expected"].lower() in result.answer.lower(), result.answer
    assert result.finish_reason == "stop"


def test_the_base_model_does_not_know_the_answer(demo_adapter):
    from localserve.models.embedded import EMBEDDED, DEFAULT_ID

    probe = _probe(demo_adapter)
    base_gguf = EMBEDDED[DEFAULT_ID].gguf_file()
    result = smoke_test(base_gguf, probe["question"], max_tokens=ROOM)
    assert probe["expected"].lower() not in result.answer.lower(), "the probe must test the adapter, not the base"


def test_f16_gguf_matches_the_merged_hf_model(exported_demo, merged_demo):
    from localserve.quality import measure

    # the streamed export's F16 against peft's merged model in transformers: the same model
    table = measure([exported_demo / "demo-F16.gguf"], reference=merged_demo, max_tokens=400)
    row = table.rows[0]
    assert row.kl_mean < 1e-3, table.format()
    assert row.top1 > 0.99, table.format()


def test_lineage_is_complete_and_records_the_smoke_results(exported_demo, demo_adapter):
    lineage = json.loads((exported_demo / "localserve.json").read_text())
    assert lineage["base"]["source"] == "embedded"
    assert lineage["base"]["ref"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert lineage["adapter"]["probe"] == _probe(demo_adapter)
    assert lineage["chat"]["family"] == "chatml" and lineage["chat"]["parity_ok"]
    assert lineage["modelfile"]["parameters"]["stop"][0] == "<|im_end|>"
    quants = {a["quant"]: a for a in lineage["artifacts"]}
    assert set(quants) == {"Q4_K_M", "Q8_0", "F16"}
    for art in quants.values():
        smoke = art["smoke"]
        assert smoke["probe_passed"] is True and smoke["finish_reason"] == "stop"
        assert smoke["tokens_per_second"] > 0
    stage_names = [s["name"] for s in lineage["stages"]]
    for name in ("convert", "quantize:Q4_K_M", "smoke:Q4_K_M"):
        assert name in stage_names


def test_multi_turn_chat_in_llama_cpp_stops_on_its_own(exported_demo):
    llm = load(exported_demo / "demo-Q4_K_M.gguf")
    messages = [{"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Now name one colour."}]
    out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=128)  # far above its answer
    llm.close()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"].strip()


def test_quant_auto_with_a_kl_bound_picks_a_quant_that_meets_it(exported_demo, demo_adapter, tmp_path):
    """--quant auto --max-kl on the real model, measured on a short slice of the fine-tune's kind of
    text (--quality-data) to keep it quick; merge and conversion are reused from `exported_demo`."""
    import shutil

    from localserve import ExportSpec, export
    from localserve.quality import default_corpus

    out = tmp_path / "demo"
    shutil.copytree(exported_demo / ".localserve", out / ".localserve")
    text = tmp_path / "eval.txt"
    text.write_text(default_corpus().read_text(encoding="utf-8")[:1500], encoding="utf-8")
    bound = 0.05
    result = export(ExportSpec(adapter=demo_adapter, quants=("auto",), name="demo", out=out, smoke=False,
                               register=False, max_kl=bound, quality_data=text))
    (art,) = result.artifacts
    quality = json.loads((out / "localserve.json").read_text())["quality"]
    rows = {r["quant"]: r for r in quality["rows"]}
    assert set(rows) == {"Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"}, quality
    assert quality["chosen"] == art.quant and quality["text"]["source"] == str(text)
    assert rows[art.quant]["kl_mean"] <= bound
    assert all(r["kl_mean"] > bound for r in rows.values() if r["size"] < rows[art.quant]["size"])
    assert art.quant not in ("Q2_K", "Q8_0"), "the bound must discriminate on this model"
    assert (out / f"demo-{art.quant}.gguf").stat().st_size == rows[art.quant]["size"]
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"
