"""The parity check's own rules: what counts as equal, what is explained, what it reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from localserve.chat import resolve_chat
from localserve.chat.parity import Case, canonical_json_text, check_parity, ollama_prompt

DATA = Path(__file__).parent / "data" / "chat_templates"
needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt-get install golang-go)")


def test_canonical_json_text_equates_json_values_only():
    a = 'call {"b": [1, 2], "a": "x<y"} end'
    b = 'call {"a":"x\\u003cy","b":[1,2]} end'
    assert canonical_json_text(a) == canonical_json_text(b)
    assert canonical_json_text(a) != canonical_json_text('call {"b": [1, 3], "a": "x<y"} end')
    assert canonical_json_text(a) != canonical_json_text('call  {"b": [1, 2], "a": "x<y"} end')  # text outside JSON
    # Text that is not JSON is compared as text.
    assert canonical_json_text("[INST] hi {not json}") == "[INST] hi {not json}"


@pytest.mark.go
@needs_go
def test_ollama_prompt_inserts_the_default_system_like_ollama_does():
    setup = resolve_chat(DATA / "Qwen2.5-7B-Instruct")
    prompt = ollama_prompt(setup, [{"role": "user", "content": "hi"}])
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    own = ollama_prompt(setup, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "Qwen" not in own


@pytest.mark.go
@needs_go
def test_a_conversation_the_model_template_refuses_is_skipped_not_failed():
    setup = resolve_chat(DATA / "gemma-2-2b-it")
    report = check_parity(DATA / "gemma-2-2b-it", setup,
                          (Case("system", ({"role": "system", "content": "s"}, {"role": "user", "content": "u"})),))
    assert report.ok and "System role not supported" in report.cases[0].skipped


@pytest.mark.go
@needs_go
def test_the_report_serializes_both_texts_for_localserve_json():
    setup = resolve_chat(DATA / "phi-4")
    data = check_parity(DATA / "phi-4", setup).to_json()
    json.dumps(data)
    assert data["ok"] and data["family"] == "phi4"
    case = next(c for c in data["cases"] if c["name"] == "system_user")
    assert case["hf_text"] == case["go_text"] == ("<|im_start|>system<|im_sep|>You are a concise assistant. Answer in "
                                                  "one sentence.<|im_end|><|im_start|>user<|im_sep|>What is the "
                                                  "capital of France?<|im_end|><|im_start|>assistant<|im_sep|>")


@pytest.mark.go
@needs_go
def test_templates_bypassed_by_new_ollama_are_flagged():
    report = check_parity(DATA / "Qwen3-8B", resolve_chat(DATA / "Qwen3-8B"))
    assert any("advertises thinking" in n and "0.30" in n for n in report.notes)
    smol = check_parity(DATA / "SmolLM2-135M-Instruct", resolve_chat(DATA / "SmolLM2-135M-Instruct"))
    assert not any("advertises" in n for n in smol.notes)


def test_json_strings_compare_by_value_too():
    # Go's encoding/json escapes <, > and & in strings; Python's json.dumps does not.
    assert canonical_json_text('ipython: "21\\u00b0C \\u003csunny\\u003e"') == canonical_json_text('ipython: "21°C <sunny>"')
    assert canonical_json_text('say "hi" now') != canonical_json_text('say "ho" now')


def test_identical_text_that_tokenizes_differently_fails_the_proof():
    from localserve.chat.parity import CaseResult, ParityReport

    # e.g. a TEMPLATE that writes "<s>" while llama.cpp also adds BOS: same text, one token more
    double_bos = CaseResult("system_user", "<s>hi", "<s>hi", equal=True, tokens_equal=False)
    assert not double_bos.ok
    report = ParityReport("m", "llama2", (double_bos,))
    assert not report.ok and "tokenizes differently" in report.summary()
    assert CaseResult("system_user", "hi", "hi", equal=True, tokens_equal=None).ok  # no tokenizer: text decides
