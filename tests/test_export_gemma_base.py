"""End to end on the real Gemma 3 270M base: a pretrained model without a chat template.

`examples/gemma-base-adapter` is a LoRA that taught the base one made-up fact, in Gemma's chat
format (scripts/train_gemma_base_adapter.py). Exported with --template-family gemma, the Q4_K_M GGUF
carries the gemma family's chat template, the Modelfile the gemma TEMPLATE proven against it, and
llama.cpp answers the adapter's probe from that file (the export's own smoke test asks it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localserve import ExportSpec, export
from localserve.chat import get_family
from localserve.chat.gotemplate import go_available
from localserve.models.embedded import EMBEDDED, GEMMA_BASE_ID, embedded_base

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not go_available(), reason="Go is not installed")]

ADAPTER = Path(__file__).resolve().parent.parent / "examples" / "gemma-base-adapter"
ROOM = 64  # tokens: the probe's answer ends its turn after about 15


@pytest.fixture(scope="module")
def probe() -> dict:
    return json.loads((ADAPTER / "probe.json").read_text())


@pytest.fixture(scope="module")
def exported_gemma(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gemma") / "gemma"
    export(ExportSpec(adapter=ADAPTER, quants=("Q4_K_M",), template_family="gemma", name="gemma", out=out,
                      register=False))
    return out


def test_the_q4_k_m_file_answers_the_adapter_s_probe_in_llama_cpp(exported_gemma, probe):
    from localserve.llamacpp.smoke import smoke_test

    recorded = json.loads((exported_gemma / "localserve.json").read_text())["artifacts"][0]["smoke"]
    assert recorded["probe_passed"] and recorded["finish_reason"] == "stop", recorded
    result = smoke_test(exported_gemma / "gemma-Q4_K_M.gguf", probe["question"], max_tokens=ROOM)  # greedy, again
    assert probe["expected"].lower() in result.answer.lower(), result.answer
    assert result.finish_reason == "stop"


def test_the_gguf_and_the_record_carry_the_chosen_gemma_template(exported_gemma):
    import gguf

    reader = gguf.GGUFReader(str(exported_gemma / "gemma-Q4_K_M.gguf"))
    assert reader.fields["tokenizer.chat_template"].contents() == get_family("gemma").jinja
    record = json.loads((exported_gemma / "localserve.json").read_text())
    chat = record["chat"]
    assert chat["template_source"] == "family" and chat["chat_template"]["family"] == "gemma"
    assert chat["parity_ok"] and not chat["forced"]
    identical = [c for c in chat["parity"]["cases"] if c["equal"]]
    assert identical and all(c["tokens_equal"] for c in identical)  # compared in tokens, not text only
    assert {"<eos>", "<end_of_turn>"} <= set(record["modelfile"]["parameters"]["stop"])
    assert record["modelfile"]["template"] == get_family("gemma").template


def test_the_base_alone_does_not_know_the_answer(probe):
    from localserve.chat.hf import load_hf_chat
    from localserve.llamacpp.smoke import load

    hf = load_hf_chat(embedded_base(GEMMA_BASE_ID), require_template=False).with_template(get_family("gemma").jinja)
    prompt = hf.render([{"role": "user", "content": probe["question"]}]).removeprefix(hf.bos_token)  # llama.cpp adds it
    llm = load(EMBEDDED[GEMMA_BASE_ID].gguf_file())  # the package's own Q4_K_M of the base
    answer = llm(prompt, max_tokens=ROOM, temperature=0.0)["choices"][0]["text"]
    llm.close()
    assert probe["expected"].lower() not in answer.lower(), "the probe must test the adapter, not the base"
