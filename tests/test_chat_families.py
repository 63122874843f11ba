"""Every family is detected from the model's own published chat template and proven against it.

The templates under tests/data/chat_templates are the real published texts (see index.json for
where each comes from); their folders hold the token facts stops are built from, but no vocabulary,
so these comparisons are text-only. The embedded SmolLM2 folder adds the token check
(test_chat_embedded.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from localserve.chat import families, get_family, resolve_chat
from localserve.chat.parity import BASE_CASES, TOOL_CASES, check_parity
from localserve.errors import InputError, SetupError, TemplateMismatch, UnknownName

DATA = Path(__file__).parent / "data" / "chat_templates"
INDEX = json.loads((DATA / "index.json").read_text())
HAVE_GO = shutil.which("go") is not None
needs_go = pytest.mark.skipif(not HAVE_GO, reason="Go is not installed (apt-get install golang-go)")


@pytest.mark.parametrize("model", sorted(INDEX))
def test_the_family_is_detected_from_what_the_template_renders(model):
    assert resolve_chat(DATA / model).family == INDEX[model]["family"]


@pytest.mark.go
@needs_go
@pytest.mark.parametrize("model", sorted(INDEX))
def test_the_go_template_reproduces_the_published_template(model):
    setup = resolve_chat(DATA / model)
    report = check_parity(DATA / model, setup)
    assert report.ok, report.summary()
    by_name = {c.name: c for c in report.cases}
    # Plain conversations are byte-identical unless the family documents trimming (padded text only).
    for case in BASE_CASES:
        result = by_name[case.name]
        if result.skipped:
            continue
        trimmed = case.name == "padded_text" and setup.trims_content and not result.equal
        assert result.equal or (trimmed and "strips whitespace" in result.explanation), report.summary()
    # Tool conversations run exactly when the family has tools.
    assert all(c.name in by_name for c in TOOL_CASES) == setup.supports_tools


def test_every_listed_family_has_published_template_data():
    assert set(families()) == {info["family"] for info in INDEX.values()}


def test_stops_are_eos_plus_generation_config_ids_plus_end_of_turn_markers():
    setup = resolve_chat(DATA / "Llama-3.2-3B-Instruct")
    assert setup.stop[:3] == ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")  # EOS, then 128001/128008
    assert "<|start_header_id|>" in setup.stop
    assert len(set(setup.stop)) == len(setup.stop)
    qwen = resolve_chat(DATA / "Qwen2.5-7B-Instruct")
    assert {"<|im_end|>", "<|endoftext|>", "<|im_start|>"} <= set(qwen.stop)


def test_num_ctx_comes_from_the_model_and_is_capped():
    assert resolve_chat(DATA / "SmolLM2-135M-Instruct").parameters == {"num_ctx": 8192}
    assert resolve_chat(DATA / "Llama-3.2-3B-Instruct").parameters == {"num_ctx": 8192}  # 131072 capped


def test_a_default_system_prompt_becomes_the_modelfile_system():
    assert resolve_chat(DATA / "Qwen2.5-7B-Instruct").system == \
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert resolve_chat(DATA / "SmolLM2-135M-Instruct").system.startswith("You are a helpful AI assistant named SmolLM")
    assert resolve_chat(DATA / "Llama-3.2-3B-Instruct").system is None


def _model_with_template(tmp_path: Path, template: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "chat_template": template}))
    return d


def test_an_unknown_template_is_an_error_naming_the_families_and_the_overrides(tmp_path):
    d = _model_with_template(tmp_path, "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
                                       "{% if add_generation_prompt %}### assistant:{% endif %}")
    with pytest.raises(TemplateMismatch) as err:
        resolve_chat(d)
    text = str(err.value)
    for name in families():
        assert name in text
    assert "--template-family" in text and "--template-file" in text
    assert "### user: localserve probe" in text  # says what the template rendered


def test_a_model_without_a_template_says_how_to_choose_one(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer_config.json").write_text("{}")
    with pytest.raises(InputError, match="no chat template.*--template-family"):
        resolve_chat(d)


def test_an_unknown_family_name_lists_the_valid_ones():
    with pytest.raises(UnknownName, match="valid: chatml, deepseek"):
        get_family("vicuna")


@pytest.mark.go
@needs_go
def test_a_forced_wrong_family_fails_the_parity_check_with_a_readable_diff():
    setup = resolve_chat(DATA / "Llama-3.2-3B-Instruct", family="chatml")
    report = check_parity(DATA / "Llama-3.2-3B-Instruct", setup)
    assert not report.ok
    summary = report.summary()
    assert "MISMATCH" in summary and "✗ system_user: differs" in summary
    assert "--- HF apply_chat_template" in summary and "+++ Ollama Go TEMPLATE" in summary
    assert "+'<|im_start|>user\\n'" in summary


@pytest.mark.go
@needs_go
def test_a_template_file_replaces_the_family_template_and_is_proven_too(tmp_path):
    good = tmp_path / "good.gotmpl"
    good.write_text(get_family("phi4").template, encoding="utf-8")
    setup = resolve_chat(DATA / "phi-4", template_file=good)
    assert setup.family == "custom (phi4)" and "<|im_end|>" in setup.stop
    assert check_parity(DATA / "phi-4", setup).ok
    wrong = tmp_path / "wrong.gotmpl"
    wrong.write_text("{{ range .Messages }}{{ .Content }}{{ end }}", encoding="utf-8")
    assert not check_parity(DATA / "phi-4", resolve_chat(DATA / "phi-4", template_file=wrong)).ok
    broken = tmp_path / "broken.gotmpl"
    broken.write_text("{{ range .Messages }}", encoding="utf-8")
    with pytest.raises(InputError, match="not a valid Ollama Go TEMPLATE"):
        resolve_chat(DATA / "phi-4", template_file=broken)


@pytest.mark.go
@needs_go
def test_json_differences_are_explained_only_when_the_json_values_are_the_same(tmp_path):
    # A TEMPLATE that prints other arguments than the call made must not pass as "same JSON".
    template = get_family("qwen2.5").template.replace("{{ .Function.Arguments }}", '{"city": "Rome"}')
    path = tmp_path / "qwen-wrong-args.gotmpl"
    path.write_text(template, encoding="utf-8")
    report = check_parity(DATA / "Qwen2.5-7B-Instruct", resolve_chat(DATA / "Qwen2.5-7B-Instruct", "qwen2.5", path))
    failed = {c.name for c in report.cases if not c.ok}
    assert failed == {"tool_call_and_result"}


def test_missing_go_is_a_setup_error_with_the_install_command(tmp_path, monkeypatch):
    from localserve.chat import gotemplate

    monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    with pytest.raises(SetupError, match="apt-get install golang-go"):
        gotemplate.binary_path()


def test_an_adapter_saved_with_its_own_template_uses_it(tmp_path):
    from localserve.chat.check import chat_source, check_template

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = DATA / "Phi-3.5-mini-instruct"
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # only its presence is read here
    (adapter / "tokenizer_config.json").write_text((DATA / "phi-4" / "tokenizer_config.json").read_text())
    source = chat_source(adapter, None, tmp_path / "chat")
    assert source == tmp_path / "chat" and (source / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert resolve_chat(source).family == "phi4"
    assert check_template(adapter).setup.family == "phi4"


def test_an_edited_template_is_read_again(tmp_path):
    d = _model_with_template(tmp_path, json.loads((DATA / "phi-4" / "tokenizer_config.json").read_text())[
        "chat_template"])
    assert resolve_chat(d).family == "phi4"
    cfg = json.loads((DATA / "Phi-3.5-mini-instruct" / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg) + "\n" * 3)
    assert resolve_chat(d).family == "phi3"


def test_each_family_s_chat_template_is_its_models_published_one_byte_for_byte():
    published: dict[str, set[str]] = {}
    for model, info in INDEX.items():
        text = json.loads((DATA / model / "tokenizer_config.json").read_text())["chat_template"]
        published.setdefault(info["family"], set()).add(text)
    for fam in families().values():
        if fam.name != "chatml":
            assert fam.jinja in published[fam.name], fam.name
    # ChatML's is the plain one: SmolLM2's would give every model SmolLM2's default system prompt. With a
    # system message of their own, the two render alike.
    from localserve.chat.hf import load_hf_chat

    smollm2 = load_hf_chat(DATA / "SmolLM2-135M-Instruct")
    plain = smollm2.with_template(get_family("chatml").jinja)
    for case in BASE_CASES:
        if case.messages[0]["role"] == "system":
            assert plain.render(case.messages) == smollm2.render(case.messages)
    assert plain.render(BASE_CASES[1].messages) != smollm2.render(BASE_CASES[1].messages)


@pytest.mark.go
@needs_go
@pytest.mark.parametrize("model", sorted(INDEX))
def test_a_model_of_each_family_without_its_template_is_proven_with_the_family_s(model, tmp_path):
    d = tmp_path / model
    shutil.copytree(DATA / model, d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    family = INDEX[model]["family"]
    setup = resolve_chat(d, family=family)
    assert (setup.template_source, setup.chat_template) == ("family", get_family(family).jinja)
    report = check_parity(d, setup)
    assert report.ok, report.summary()
