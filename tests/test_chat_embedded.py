"""The proof on a real model folder: the embedded SmolLM2-135M-Instruct, with its real tokenizer.

Here the HF side is `AutoTokenizer.apply_chat_template` itself, and both prompts are tokenized
with the model's tokenizer: the Go TEMPLATE's prompt must give the very same token ids.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from localserve.chat import resolve_chat
from localserve.chat.check import chat_source
from localserve.chat.parity import check_parity
from localserve.cli import cli

pytestmark = [pytest.mark.go, pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")]


def test_smollm2_is_chatml_with_its_default_system_prompt_and_stops(embedded_base):
    setup = resolve_chat(embedded_base)
    assert setup.family == "chatml"
    assert setup.stop[0] == "<|im_end|>" and "<|im_start|>" in setup.stop
    assert setup.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert setup.parameters["num_ctx"] == json.loads((embedded_base / "config.json").read_text())[
        "max_position_embeddings"]


def test_every_conversation_is_byte_and_token_identical(embedded_base):
    report = check_parity(embedded_base, resolve_chat(embedded_base))
    assert report.ok, report.summary()
    for case in report.cases:
        assert case.equal and case.tokens_equal, report.summary()


def test_check_template_cli_passes_on_the_model_and_on_an_adapter_using_it(embedded_base, demo_adapter, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["check-template", str(embedded_base)])
    assert result.exit_code == 0, result.output
    assert "family: chatml" in result.output and "byte-identical, tokens identical" in result.output
    assert chat_source(demo_adapter, None, tmp_path / "chat") == embedded_base  # the adapter ships no chat files
    result = runner.invoke(cli, ["check-template", str(demo_adapter), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parity"]["ok"] and data["setup"]["family"] == "chatml"


def test_check_template_cli_fails_with_a_diff_on_a_wrong_family(embedded_base):
    result = CliRunner().invoke(cli, ["check-template", str(embedded_base), "--family", "phi3"])
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and "+++ Ollama Go TEMPLATE" in result.output
