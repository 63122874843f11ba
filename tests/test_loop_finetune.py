"""`localserve finetune`: a LoRA fine-tune of the tiny model with TRL's SFTTrainer, reproducible for a fixed
seed, a standard PEFT folder with its training record, bad input refused in one line with nothing written,
and Ctrl-C or kill -9 leaving no folder that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clihelpers import assert_one_line_error, chat_jsonl, invoke
from test_interrupts import Job

from localserve import faults
from localserve.fsutil import sha256_file

RECIPE = "rank: 4\nalpha: 8\nlearning_rate: 1e-3\nsteps: 6\nbatch_size: 2\nmax_seq_length: 128\nseed: {seed}\n"


def recipe(folder: Path, seed: int = 0, text: str = RECIPE) -> Path:
    path = folder / f"recipe-{seed}.yaml"
    path.write_text(text.format(seed=seed))
    return path


def train(tmp_path: Path, base: Path, data: Path, out: str, seed: int = 0, *extra) -> dict:
    result = invoke("finetune", data, "--base", base, "--recipe", recipe(tmp_path, seed), "--out", tmp_path / out,
                    "--json", "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def data(tmp_path) -> Path:
    return chat_jsonl(tmp_path / "chat.jsonl")


def test_the_same_seed_gives_the_same_final_loss_and_another_seed_does_not(tmp_path, tiny_base, data):
    first = train(tmp_path, tiny_base, data, "a", seed=0)
    again = train(tmp_path, tiny_base, data, "b", seed=0)
    other = train(tmp_path, tiny_base, data, "c", seed=1)
    assert first["steps"] == again["steps"] == 6
    assert abs(first["final_loss"] - again["final_loss"]) < 1e-6
    assert abs(first["final_loss"] - other["final_loss"]) > 1e-6
    assert first["final_loss"] < first["first_loss"]  # it learnt something


def test_the_output_is_a_peft_adapter_with_its_trainer_state_and_training_record(tmp_path, tiny_base, data):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    printed = train(tmp_path, tiny_base, data, "adapter", seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "trainer_state.json", "training.json"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(tiny_base.resolve())
    record = json.loads((out / "training.json").read_text())
    assert record == {k: v for k, v in printed.items() if k not in ("out_dir", "skipped")}
    assert record["datasets"] == [{"path": str(data.resolve()), "sha256": sha256_file(data), "rows": 10}]
    assert record["base"]["path"] == str(tiny_base.resolve()) and len(record["base"]["sha256"]) == 64
    assert record["recipe"]["rank"] == 4 and record["recipe"]["steps"] == 6 and record["seed"] == 0
    assert record["libraries"]["trl"] and record["libraries"]["peft"] and record["libraries"]["torch"]
    assert record["wall_seconds"] > 0 and record["train_tokens"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [h["loss"] for h in state["log_history"] if "loss" in h][-1] == \
        record["final_loss"]
    # the adapter loads on its base with peft, and changes what the model computes
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits.detach().clone()
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(before, tuned(ids).logits)


def test_the_same_fine_tune_again_is_skipped_and_another_one_is_not_written_over_it(tmp_path, tiny_base, data):
    first = train(tmp_path, tiny_base, data, "adapter", seed=0)
    again = train(tmp_path, tiny_base, data, "adapter", seed=0)
    assert again["skipped"] and again["final_loss"] == first["final_loss"]
    other = invoke("finetune", data, "--base", tiny_base, "--recipe", recipe(tmp_path, seed=1),
                   "--out", tmp_path / "adapter")
    assert_one_line_error(other, "exists and holds another fine-tune", "--out")
    assert json.loads((tmp_path / "adapter" / "training.json").read_text())["seed"] == 0


def test_the_loss_is_on_each_assistant_turn_in_its_whole_context():
    from localserve.loop.finetune import assistant_turns

    chat = ({"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"})
    assert assistant_turns(chat) == [
        {"prompt": list(chat[:2]), "completion": [chat[2]]},
        {"prompt": list(chat[:4]), "completion": [chat[4]]},
    ]


def _rows(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("rows, needles", [
    ((GOOD, "{not json", GOOD), ("line 2 is not JSON", "JSONL")),
    ((GOOD, {"text": "no messages"}), ("line 2 has no messages",)),
    (({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},),
     ("line 1: unknown role 'bot'", "valid: system, user, assistant, tool")),
    (({"messages": [{"role": "user", "content": "only a question"}]},), ("line 1 has no assistant turn",)),
    ((), ("the data has no conversations", "is empty")),
], ids=["not-jsonl", "no-messages", "unknown-role", "no-assistant-turn", "empty"])
def test_bad_data_is_refused_in_one_line_naming_the_line(tmp_path, tiny_base, rows, needles):
    data = _rows(tmp_path / "bad.jsonl", *rows)
    result = invoke("finetune", data, "--base", tiny_base, "--out", tmp_path / "out")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()


def test_conversations_longer_than_the_limit_are_left_out_and_all_of_them_is_refused(tmp_path, tiny_base):
    long = {"messages": [{"role": "user", "content": "hello world " * 40}, {"role": "assistant", "content": "ok"}]}
    data = _rows(tmp_path / "long.jsonl", long, long, long)
    result = invoke("finetune", data, "--base", tiny_base, "--recipe", recipe(tmp_path), "--out", tmp_path / "out")
    assert_one_line_error(result, "all 3 conversations are longer than max_seq_length 128 tokens",
                          "raise max_seq_length")
    assert not (tmp_path / "out").exists()
    data = _rows(tmp_path / "mixed.jsonl", long, GOOD, GOOD)
    result = invoke("finetune", data, "--base", tiny_base, "--recipe", recipe(tmp_path), "--out", tmp_path / "out",
                    "--json")
    assert result.exit_code == 0, result.output
    assert "1 of 3 conversations are longer than max_seq_length 128 tokens and are left out" in result.output
    assert json.loads((tmp_path / "out" / "training.json").read_text())["examples"] == {
        "conversations": 3, "left_out_too_long": 1, "assistant_turns": 2}


@pytest.mark.parametrize("text, needles", [
    ("rank: 4\nlr: 0.1\n", ("unknown key 'lr'", "valid: rank, alpha, dropout, target_modules, learning_rate, steps, "
                                                 "epochs, batch_size, max_seq_length, seed")),
    ("rank: four\n", ("rank must be a whole number of at least 1, not 'four'",)),
    ("steps: 5\nepochs: 2\n", ("gives both steps (5) and epochs (2)",)),
    ("rank: 4\n  alpha: [\n", ("is not valid YAML at line 2",)),
    ("- rank\n", ("holds a YAML list, not a mapping",)),
], ids=["unknown-key", "wrong-type", "steps-and-epochs", "yaml-syntax", "not-a-mapping"])
def test_a_bad_recipe_is_refused_in_one_line(tmp_path, tiny_base, data, text, needles):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = invoke("finetune", data, "--base", tiny_base, "--recipe", path, "--out", tmp_path / "out")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()


def test_a_base_that_is_not_found_and_a_version_without_a_recipe_are_refused(tmp_path, data):
    result = invoke("finetune", data, "--base", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_one_line_error(result, f"base model '{tmp_path / 'nowhere'}' (--base) not found", "--base PATH")
    result = invoke("finetune", data, "--base", "nobody/no-such-model", "--out", tmp_path / "out")
    assert_one_line_error(result, "not found; looked at:", "Hugging Face cache", "embedded models")
    result = invoke("finetune", data, "--base", tmp_path, "--like", "demo:v1", "--out", tmp_path / "out")
    assert_one_line_error(result, "unknown version 'demo:v1'")
    result = invoke("finetune", data, "--base", tmp_path, "--like", "demo:v1", "--recipe", tmp_path / "r.yaml")
    assert_one_line_error(result, "both name a recipe", "give one of them")
    assert not (tmp_path / "out").exists()


def test_a_base_that_is_an_export_or_a_merge_is_refused_unless_stacking_is_allowed(tmp_path, tiny_base, data):
    import shutil

    stacked = tmp_path / "merged"
    shutil.copytree(tiny_base, stacked)
    (stacked / "mergekit_config.yml").write_text("merge_method: linear\n")
    result = invoke("finetune", data, "--base", stacked, "--recipe", recipe(tmp_path), "--out", tmp_path / "out")
    assert_one_line_error(result, "is itself a mergekit merge", "--allow-stacked")
    assert not (tmp_path / "out").exists()
    allowed = train(tmp_path, stacked, data, "out", 0, "--allow-stacked")
    assert allowed["base"]["path"] == str(stacked.resolve())


def _nothing_looks_complete(out: Path) -> None:
    assert not out.exists()
    left = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert all(p.name.endswith(".partial") and not (p / "training.json").exists() for p in left), left


def test_ctrl_c_during_training_leaves_no_adapter_folder_and_the_same_command_then_finishes(tmp_path, tiny_base,
                                                                                            data):
    out = tmp_path / "adapter"
    args = ("finetune", data, "--base", tiny_base, "--recipe", recipe(tmp_path), "--out", out)
    job = Job(*args, hold=faults.FINETUNE)
    job.wait_for_line("localserve: finetune: 10 assistant turns")
    job.stop(signal.SIGINT)
    _nothing_looks_complete(out)
    assert not list(tmp_path.glob(".adapter.*"))  # Ctrl-C removes the temporary folder too
    again = invoke("--quiet", *args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "training.json").read_text())["steps"] == 6


def test_kill_9_during_training_leaves_nothing_that_looks_complete(tmp_path, tiny_base, data):
    out = tmp_path / "adapter"
    env = {**os.environ, faults.KILL_ENV: faults.FINETUNE}
    killed = subprocess.run([sys.executable, "-m", "localserve", "finetune", str(data), "--base", str(tiny_base),
                             "--recipe", str(recipe(tmp_path)), "--out", str(out)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _nothing_looks_complete(out)
    again = invoke("--quiet", "finetune", data, "--base", tiny_base, "--recipe", recipe(tmp_path), "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "adapter_model.safetensors").is_file()


@pytest.fixture
def base_without_template(tmp_path, tiny_base) -> Path:
    """The tiny base as a pretrained base ships: no chat template (its tokenizer has ChatML's turn tokens)."""
    import shutil

    base = tmp_path / "pretrained"
    shutil.copytree(tiny_base, base)
    (base / "chat_template.jinja").unlink()
    return base


def test_a_base_without_a_chat_template_trains_with_a_family_s_template_which_the_adapter_carries(
        tmp_path, base_without_template, data):
    from localserve.chat import get_family

    record = train(tmp_path, base_without_template, data, "adapter", 0, "--template-family", "chatml")
    assert record["chat_template_source"] == "family chatml"
    assert (tmp_path / "adapter" / "chat_template.jinja").read_text() == get_family("chatml").jinja
    result = invoke("finetune", data, "--base", base_without_template, "--template-family", "klingon",
                    "--out", tmp_path / "other")
    assert_one_line_error(result, "unknown chat template family 'klingon'", "chatml")
    assert not (tmp_path / "other").exists()


@pytest.mark.go
@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")
def test_a_base_without_a_chat_template_and_no_family_is_refused_naming_the_families_that_fit(
        tmp_path, base_without_template, data):
    result = invoke("finetune", data, "--base", base_without_template, "--out", tmp_path / "out")
    assert_one_line_error(result, "has no chat template", "--template-family NAME (chatml, ")
    assert not (tmp_path / "out").exists()
