"""The Modelfile options of `localserve export`: --force, --modelfile, --ollama-template native."""

from __future__ import annotations

import json

import pytest

from localserve import ExportSpec, export


# --- the Modelfile options of export -------------------------------------------------------------

def test_force_exports_a_mismatching_template_and_records_that_it_was_forced(tiny_adapter, tmp_path):
    from localserve.errors import TemplateMismatch

    with pytest.raises(TemplateMismatch):
        export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), template_family="phi3", out=tmp_path / "refused",
                          smoke=False, register=False))
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), template_family="phi3", force=True,
                               out=tmp_path / "o", smoke=False, register=False))
    chat = json.loads(result.lineage_path.read_text())["chat"]
    assert chat["family"] == "phi3" and chat["parity_ok"] is False and chat["forced"] is True


def test_a_users_modelfile_is_merged_into_the_export(tiny_adapter, tmp_path):
    from localserve.modelfile import parse_modelfile

    mine = tmp_path / "Modelfile.mine"
    mine.write_text('FROM ignored\nPARAMETER temperature 0.2\nPARAMETER stop "<|x|>"\nSYSTEM """Be brief.\n'
                    'Very brief."""\nMESSAGE user Hi\nMESSAGE assistant Hello.\nLICENSE """MIT"""\n')
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), modelfile=mine, out=tmp_path / "o",
                               smoke=False, register=False))
    written = parse_modelfile(result.modelfile_path.read_text())
    assert written.from_ == f"./{result.artifacts[0].file}"  # our FROM, not the user's
    assert written.parameters["temperature"] == 0.2
    assert "<|x|>" in written.parameters["stop"] and "<|im_end|>" in written.parameters["stop"]  # merged, not replaced
    assert written.system == "Be brief.\nVery brief."
    assert [tuple(m) for m in written.messages] == [("user", "Hi"), ("assistant", "Hello.")]
    assert written.license == ("MIT",) and written.template  # the verified TEMPLATE stays


def test_native_template_mode_writes_no_template_and_says_which_servers_need_it(tiny_adapter, tmp_path):
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), ollama_template="native", out=tmp_path / "o",
                               smoke=False, register=False))
    assert "TEMPLATE" not in result.modelfile_path.read_text()
    modelfile = json.loads(result.lineage_path.read_text())["modelfile"]
    assert modelfile["template"] is None and modelfile["ollama_template"] == "native"
    prompt = json.loads(result.lineage_path.read_text())["ollama_prompt"]
    assert prompt["path"] == "gguf_jinja" and prompt["before_0_30"] == "raw"
    assert "built-in Go template" in prompt["why"]  # unless Ollama's create recognises the GGUF's template


def test_the_record_says_which_template_ollama_builds_the_prompts_with_and_what_proves_it(tiny_export):
    prompt = json.loads((tiny_export / "localserve.json").read_text())["ollama_prompt"]
    assert prompt["path"] == prompt["before_0_30"] == "go_template" and "parity check" in prompt["proof"]
