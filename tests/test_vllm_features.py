"""vLLM's serving features in the export: prefix caching, speculative decoding (ngram, or a draft model
whose vocabulary must be the served model's), the structured-output backend. Options are declared
for --target vllm only; the choice is written into every serve file and the record. The real vLLM
runs them in tests/test_vllm_serving_features.py."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from localserve.cli import cli
from localserve.errors import InputError
from localserve.exports import VllmExportSpec, export_spec, export_vllm
from localserve.vllm import ServeConfig, render
from localserve.vllm.serve import COMPOSE_FILE, CONFIG_FILE, LAUNCH_FILE

NGRAM = (("method", "ngram"), ("num_speculative_tokens", 3), ("prompt_lookup_min", 2), ("prompt_lookup_max", 4))


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


# --- the options -------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, shown", [
    (["--no-prefix-caching"], "--prefix-caching/--no-prefix-caching"),
    (["--prefix-caching"], "--prefix-caching/--no-prefix-caching"),
    (["--speculative", "ngram"], "--speculative"),
    (["--structured-output-backend", "xgrammar"], "--structured-output-backend"),
])
def test_the_serving_features_are_refused_for_the_ollama_export(tiny_adapter, tmp_path, option, shown):
    result = invoke("export", tiny_adapter, "--out", tmp_path / "o", *option)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and f"{shown} applies to --target vllm only" in result.output
    assert not (tmp_path / "o").exists()


def test_the_serving_features_are_refused_for_ollama_tenants(tiny_adapter):
    with pytest.raises(InputError, match="--speculative does not apply to --lora") as refused:
        export_spec((tiny_adapter, tiny_adapter), lora=True, speculative="ngram")
    assert "it applies to --target vllm" in refused.value.hint


def test_unset_the_features_are_vllms_defaults_written_out(tiny_adapter):
    spec = export_spec((tiny_adapter,), target="vllm")
    assert (spec.prefix_caching, spec.speculative, spec.structured_output_backend) == (True, None, "auto")
    assert export_spec((tiny_adapter,), target="vllm", prefix_caching=False).prefix_caching is False


@pytest.mark.parametrize("value, message", [
    ("ngram:0", "N must be a whole number from 1 to 16, not '0'"),
    ("ngram:x", "N must be a whole number from 1 to 16, not 'x'"),
    ("ngram:17", "N must be a whole number from 1 to 16"),
    ("medusa", "'medusa' is not a speculation vLLM runs here"),
    ("draft:", "names no draft model"),
    ("draft:/no/such/folder", "/no/such/folder is not a model folder (no config.json)"),
])
def test_a_speculation_vllm_cannot_run_is_refused_in_one_line(tiny_adapter, value, message):
    with pytest.raises(InputError) as refused:
        VllmExportSpec(adapters=(tiny_adapter,), speculative=value)
    assert message in refused.value.message and "\n" not in str(refused.value)


def test_an_unknown_backend_is_refused(tiny_adapter):
    with pytest.raises(InputError, match="--structured-output-backend must be one of auto, xgrammar, guidance, "
                                         "outlines, not 'lm-format-enforcer'"):
        VllmExportSpec(adapters=(tiny_adapter,), structured_output_backend="lm-format-enforcer")


def test_the_cli_takes_the_features(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--out", tmp_path / "o", "--no-prefix-caching",
                    "--speculative", "ngram:3", "--structured-output-backend", "guidance")
    assert result.exit_code == 0, result.output
    assert "prefix caching: off" in result.output
    assert "speculative decoding: ngram prompt lookup (3 tokens per step, n-grams of 2-4)" in result.output
    assert "structured outputs (response_format json_schema): guidance backend" in result.output
    written = yaml.safe_load((tmp_path / "o" / CONFIG_FILE).read_text())
    assert written["enable-prefix-caching"] is False
    assert written["speculative-config"] == dict(NGRAM)
    assert written["structured-outputs-config"] == {"backend": "guidance"}


# --- rendering ---------------------------------------------------------------------------------------

def test_every_serve_file_names_the_features():
    config = ServeConfig(name="demo", prefix_caching=False, speculative=NGRAM, structured_output_backend="xgrammar")
    files = render(config)
    written = yaml.safe_load(files[CONFIG_FILE])
    assert written["enable-prefix-caching"] is False
    assert written["speculative-config"] == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
                                             "prompt_lookup_max": 4}
    assert written["structured-outputs-config"] == {"backend": "xgrammar"}
    for name, text in files.items():
        assert "prefix caching: off" in text and "ngram prompt lookup (3 tokens per step" in text, name
        assert "xgrammar backend" in text, name
    # the containers run the config file, so they serve with the same features
    compose = yaml.safe_load(files[COMPOSE_FILE])
    assert compose["services"]["vllm"]["command"][:2] == ["--config", f"/export/{CONFIG_FILE}"]
    assert f"--config {CONFIG_FILE}" in files[LAUNCH_FILE]


def test_prefix_caching_is_written_even_when_it_is_vllms_default():
    written = yaml.safe_load(render(ServeConfig(name="demo"))[CONFIG_FILE])
    assert written["enable-prefix-caching"] is True and "speculative-config" not in written
    assert written["structured-outputs-config"] == {"backend": "auto"}


# --- the export: ngram, and a draft model with the served model's vocabulary --------------------------

def test_the_record_tells_what_was_asked_and_what_vllm_defaults_to(tiny_adapter, tmp_path):
    result = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), name="tiny", out=tmp_path / "o",
                                        speculative="ngram"))
    features = json.loads((result.out_dir / "localserve.json").read_text())["features"]
    assert features["prefix_caching"] == {"enabled": True, "vllm_default": True}
    assert features["speculative"]["method"] == "ngram" and features["speculative"]["num_speculative_tokens"] == 5
    assert features["speculative"]["speculative_config"] == yaml.safe_load(
        result.config_file.read_text())["speculative-config"]
    assert features["structured_output_backend"] == "auto"
    assert features["lines"] == list(result.features)


@pytest.fixture
def draft_copy(tiny_base, tmp_path):
    """A draft model to spoil: the tiny base itself (same tokenizer, same vocabulary) copied."""
    return shutil.copytree(tiny_base, tmp_path / "draft")


def test_a_draft_with_the_served_vocabulary_is_copied_into_the_export(tiny_adapter, draft_copy, tmp_path):
    result = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), name="tiny", out=tmp_path / "o",
                                        speculative=f"draft:{draft_copy}"))
    written = yaml.safe_load(result.config_file.read_text())
    assert written["speculative-config"] == {"method": "draft_model", "model": "./draft", "num_speculative_tokens": 5}
    copied = result.out_dir / "draft"
    assert (copied / "config.json").is_file() and (copied / "tokenizer.json").is_file()
    weights = sorted(p.name for p in draft_copy.glob("*.safetensors"))
    assert weights and sorted(p.name for p in copied.glob("*.safetensors")) == weights
    record = json.loads((result.out_dir / "localserve.json").read_text())
    assert record["features"]["speculative"]["draft"]["path"] == "./draft"
    assert record["features"]["speculative"]["draft"]["sha256"]


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _swap_two_tokens(tokenizer: dict) -> None:
    """The last two tokens the BPE learnt trade ids: same size, same tokens, other ids."""
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]


@pytest.mark.parametrize("spoil, message", [
    (lambda d: _edit_json(d / "config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 8)),
     "its vocab_size is {draft}, tiny's is {ours}"),
    (lambda d: _edit_json(d / "tokenizer.json", _swap_two_tokens), "its tokenizer differs from tiny's: token '"),
    (lambda d: _edit_json(d / "tokenizer_config.json", lambda c: c.update(eos_token="</s>")),
     "its tokenizer differs from tiny's: eos_token is '</s>', not '<|im_end|>'"),
])
def test_a_draft_whose_tokens_differ_is_refused_before_anything_is_written(tiny_adapter, draft_copy, tmp_path,
                                                                            spoil, message):
    ours = json.loads((draft_copy / "config.json").read_text())["vocab_size"]
    spoil(draft_copy)
    result = invoke("export", tiny_adapter, "--target", "vllm", "--name", "tiny", "--out", tmp_path / "o",
                    "--speculative", f"draft:{draft_copy}")
    assert result.exit_code != 0
    assert result.output.count("\n") == 1 and result.output.startswith("error: --speculative draft:"), result.output
    assert message.format(ours=ours, draft=ours + 8) in result.output
    assert "the served model's tokenizer" in result.output  # the hint: what a draft must be
    assert not (tmp_path / "o").exists()
