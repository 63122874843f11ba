"""Chat templates chosen, not read: a base without a chat template (a pretrained model) and an adapter
that ships its template but no tokenizer.

A base without a template gets the chat template of the family chosen with --template-family (or of
the family whose turns --template-file's TEMPLATE renders): the GGUF carries it, the parity proof runs
against it, and localserve.json says it was chosen. An adapter that ships only its template is
tokenized with its base's tokenizer. Tiny models (tests/tinymodel.py): their vocabulary has ChatML's
<|im_start|>/<|im_end|> and Llama's <s>/</s>, no Gemma turn token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from localserve import ExportSpec, export
from localserve.chat import get_family, resolve_chat
from localserve.chat.gotemplate import go_available
from localserve.chat.parity import check_parity
from localserve.cli import cli
from localserve.errors import InputError
from localserve.exports.checks import check_chat
from localserve.exports.inputs import adapter_source

pytestmark = [pytest.mark.go, pytest.mark.skipif(not go_available(), reason="Go is not installed")]

FAMILIES_THAT_FIT = ["chatml", "qwen2.5"]  # the families whose turn tokens the tiny vocabulary has


@pytest.fixture(scope="module")
def bare_base(tiny_base, tmp_path_factory) -> Path:
    """The tiny base without its chat template, like a pretrained model."""
    base = tmp_path_factory.mktemp("bare") / "base"
    shutil.copytree(tiny_base, base)
    (base / "chat_template.jinja").unlink()
    return base


@pytest.fixture(scope="module")
def bare_adapter(bare_base, tmp_path_factory) -> Path:
    from tinymodel import build_lora

    return build_lora(bare_base, tmp_path_factory.mktemp("bare-lora") / "adapter")


def _gguf_chat_template(path: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def test_a_base_without_a_template_is_refused_in_one_line_naming_the_families_that_fit(bare_base):
    with pytest.raises(InputError) as err:
        resolve_chat(bare_base)
    text = str(err.value)
    assert "\n" not in text and "has no chat template" in text
    assert f"--template-family NAME ({', '.join(FAMILIES_THAT_FIT)})" in text
    for name in FAMILIES_THAT_FIT:  # every hint works
        setup = resolve_chat(bare_base, family=name)
        assert check_parity(bare_base, setup).ok


def test_the_chosen_family_s_template_is_proven_with_tokens_and_recorded_as_chosen(bare_base):
    setup = resolve_chat(bare_base, family="chatml")
    assert (setup.template_source, setup.chat_template_from) == ("family", "chatml")
    assert setup.chat_template == get_family("chatml").jinja and setup.template == get_family("chatml").template
    report = check_parity(bare_base, setup)
    assert report.ok, report.summary()
    assert all(c.tokens_equal for c in report.cases if c.equal), report.summary()
    assert "<|im_end|>" in setup.stop


def test_a_family_whose_special_tokens_the_tokenizer_lacks_is_refused_naming_the_token(bare_base):
    with pytest.raises(InputError) as err:
        resolve_chat(bare_base, family="gemma")
    text = str(err.value)
    assert "\n" not in text and "no token <start_of_turn>" in text and "gemma" in text


def test_a_template_file_chooses_the_family_whose_turns_it_renders(bare_base, tmp_path):
    own = tmp_path / "mine.gotmpl"
    own.write_text(get_family("chatml").template + "\n", encoding="utf-8")  # an editor's final newline
    setup = resolve_chat(bare_base, template_file=own)
    assert (setup.template_source, setup.chat_template_from) == ("file", "chatml")
    assert setup.template == get_family("chatml").template
    assert check_parity(bare_base, setup).ok


def test_a_template_file_of_a_family_the_tokenizer_lacks_is_refused(bare_base):
    gemma = Path(__file__).parent.parent / "modelfiles" / "gemma" / "template.gotmpl"
    with pytest.raises(InputError) as err:
        resolve_chat(bare_base, template_file=gemma)
    text = str(err.value)
    assert "\n" not in text and str(gemma) in text
    assert f"--template-family NAME ({', '.join(FAMILIES_THAT_FIT)}) instead of --template-file" in text


def test_a_template_file_that_does_not_parse_is_refused_naming_the_file(bare_base, tmp_path):
    broken = tmp_path / "broken.gotmpl"
    broken.write_text("{{ range .Messages }}{{ .Content }}", encoding="utf-8")
    result = CliRunner().invoke(cli, ["check-template", str(bare_base), "--template-file", str(broken)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(broken) in lines[0], result.output


def test_export_without_a_flag_refuses_before_any_work(bare_adapter, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(bare_adapter), "--quant", "Q8_0", "--out", str(out),
                                      "--no-register", "--no-smoke", "--quiet"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--template-family NAME (chatml, qwen2.5)" in lines[0], result.output
    assert not list(out.rglob("*.gguf"))


def test_export_with_a_family_gives_the_gguf_that_family_s_template(bare_adapter, tmp_path):
    out = tmp_path / "out"
    result = export(ExportSpec(adapter=bare_adapter, quants=("Q8_0",), template_family="chatml", name="bare", out=out,
                               smoke=False, register=False))
    assert _gguf_chat_template(out / "bare-Q8_0.gguf") == get_family("chatml").jinja
    chat = json.loads((out / "localserve.json").read_text())["chat"]
    assert chat["template_source"] == "family" and chat["chat_template"]["family"] == "chatml"
    assert chat["parity_ok"] and not chat["forced"]
    assert all(c["tokens_equal"] for c in chat["parity"]["cases"] if c["equal"])
    assert result.record.modelfile["template"] == get_family("chatml").template


# --- an adapter that ships its chat template but no tokenizer ---------------------------------------

@pytest.fixture(scope="module")
def eos_base(bare_base, tmp_path_factory) -> Path:
    """The bare base whose EOS is </s>, a token of no chat family's turns here: as Gemma's <eos> is
    not its <end_of_turn>. A stop on </s> can only come from the tokenizer."""
    base = tmp_path_factory.mktemp("eos") / "base"
    shutil.copytree(bare_base, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["eos_token"] = "</s>"
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    return base


@pytest.fixture(scope="module")
def templated_adapter(eos_base, tmp_path_factory) -> Path:
    """A LoRA on `eos_base` saved with the chat template set during training, and no tokenizer."""
    from tinymodel import build_lora

    adapter = build_lora(eos_base, tmp_path_factory.mktemp("templated") / "adapter")
    (adapter / "chat_template.jinja").write_text(get_family("chatml").jinja, encoding="utf-8")
    return adapter


def test_an_adapter_s_template_is_compared_in_tokens_with_its_base_s_tokenizer(templated_adapter, tmp_path):
    source = adapter_source(templated_adapter, None, allow_pickle=False)
    chat_dir = source.chat_dir(lambda: None, tmp_path / "chat")
    setup, parity = check_chat(chat_dir, None, None, force=False)
    assert setup.family == "chatml" and setup.template_source == "model"
    assert parity.ok and "no tokenizer files" not in parity.summary()
    assert all(c.tokens_equal for c in parity.cases if c.equal), parity.summary()
    assert setup.stop[0] == "</s>" and "<|im_end|>" in setup.stop  # the base's EOS, then the turn's end


def test_export_of_an_adapter_with_its_own_template_stops_on_the_base_s_eos(templated_adapter, tmp_path):
    out = tmp_path / "out"
    export(ExportSpec(adapter=templated_adapter, quants=("Q8_0",), name="templated", out=out, smoke=False,
                      register=False))
    assert _gguf_chat_template(out / "templated-Q8_0.gguf") == get_family("chatml").jinja
    modelfile = (out / "Modelfile").read_text().splitlines()
    assert "PARAMETER stop </s>" in modelfile and "PARAMETER stop <|im_end|>" in modelfile
    chat = json.loads((out / "localserve.json").read_text())["chat"]
    assert chat["template_source"] == "model" and "chat_template" not in chat
    assert all(c["tokens_equal"] for c in chat["parity"]["cases"] if c["equal"])


def test_an_adapter_s_template_file_wins_over_the_base_s_tokenizer_config_entry(tiny_adapter, tiny_base, tmp_path):
    # the base keeps its template in tokenizer_config.json, which llama.cpp's converter prefers to a
    # chat_template.jinja beside it: the merged model's copy must not carry it
    from gguf import SpecialVocab

    from localserve.models.merge import copy_chat_files

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = get_family("zephyr").jinja
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink()
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "chat_template.jinja").write_text(get_family("chatml").jinja, encoding="utf-8")
    merged = tmp_path / "merged"
    merged.mkdir()
    copy_chat_files(adapter, base, merged)
    assert SpecialVocab(merged, load_merges=False).chat_template == get_family("chatml").jinja
    assert json.loads((merged / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert resolve_chat(merged).family == "chatml"
