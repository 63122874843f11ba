"""End to end on the embedded default: SmolLM2-135M-Instruct + the shipped demo adapter.

One export (the session fixture `exported_demo`) serves every test here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localserve.llamacpp.smoke import load, smoke_test

pytestmark = pytest.mark.slow


def _probe(demo_adapter: Path) -> dict:
    return json.loads((demo_adapter / "probe.json").read_text())


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0"])
def test_each_quantized_file_gives_the_adapters_answer(exported_demo, demo_adapter, quant):
    probe = _probe(demo_adapter)
    result = smoke_test(exported_demo / f"demo-{quant}.gguf", probe["question"])  # greedy
    assert probe["expected"].lower() in result.answer.lower(), result.answer
    assert result.finish_reason == "stop"


def test_the_base_model_does_not_know_the_answer(demo_adapter):
    from localserve.models.embedded import EMBEDDED, DEFAULT_ID

    probe = _probe(demo_adapter)
    base_gguf = EMBEDDED[DEFAULT_ID].gguf_file()
    result = smoke_test(base_gguf, probe["question"])
    assert probe["expected"].lower() not in result.answer.lower(), "the probe must test the adapter, not the base"


def test_f16_gguf_matches_the_merged_hf_model(exported_demo):
    from localserve.quality import measure

    merged = exported_demo / ".localserve" / "work" / "merged"
    table = measure([exported_demo / "demo-F16.gguf"], reference=merged, max_tokens=400)
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
    for name in ("merge", "convert", "quantize:Q4_K_M", "smoke:Q4_K_M"):
        assert name in stage_names


def test_multi_turn_chat_in_llama_cpp_stops_on_its_own(exported_demo):
    llm = load(exported_demo / "demo-Q4_K_M.gguf")
    messages = [{"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Now name one colour."}]
    out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=128)
    llm.close()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"].strip()
