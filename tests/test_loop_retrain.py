"""`localserve retrain` on the tiny model, in an Ollama model folder: the live version's datasets plus the new
data, its recipe, exported as it was and registered as the next version with its parent; the gate's table; a
second run skips every finished stage and records nothing twice; `finetune --like` reuses a version's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelpers import assert_one_line_error, chat_jsonl, invoke

from localserve.fsutil import sha256_file

RECIPE = "rank: 4\nalpha: 8\nlearning_rate: 1e-3\nsteps: 4\nbatch_size: 2\nmax_seq_length: 128\nseed: 0\n"
SUITE = """prompts: ["{{question}}"]
tests:
  - description: a question
    vars: {question: hello world}
    assert: [{type: icontains, value: fox}]
"""


def _export(adapter: Path, out: Path) -> Path:
    from localserve import ExportSpec, export

    return export(ExportSpec(adapter=adapter, quants=("Q8_0",), name="tiny", out=out, register=False,
                             smoke=False)).out_dir


@pytest.fixture
def live(tmp_path, tiny_base) -> dict:
    """tiny:v1, a `localserve finetune` of the tiny base, registered in an Ollama model folder and live."""
    data = chat_jsonl(tmp_path / "first.jsonl")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    done = invoke("--quiet", "finetune", data, "--base", tiny_base, "--recipe", tmp_path / "recipe.yaml",
                  "--out", tmp_path / "v1-adapter")
    assert done.exit_code == 0, done.output
    models = tmp_path / "models"
    export_dir = _export(tmp_path / "v1-adapter", tmp_path / "v1-export")
    for args in (("register", export_dir, "--store", models), ("promote", "tiny:v1", "--as", "tiny:latest",
                                                               "--store", models)):
        result = invoke("--quiet", *args)
        assert result.exit_code == 0, result.output
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"messages": [{"role": "user", "content": "hello world"},
                                            {"role": "assistant", "content": "the quick brown fox"}]}) + "\n")
    return {"data": data, "new": new, "models": models, "base": tiny_base}


def _versions(name: str) -> list[dict]:
    listed = invoke("versions", name, "--json")
    assert listed.exit_code == 0, listed.output
    return json.loads(listed.output)


def test_retrain_trains_on_the_recorded_data_and_the_new_with_the_live_recipe_and_registers_the_next_version(
        tmp_path, live):
    work = tmp_path / "work"
    result = invoke("--quiet", "retrain", "tiny", "--data", live["new"], "--store", live["models"], "--out", work,
                    "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["version"], out["parent"], out["new"]) == ("tiny:v2", "tiny:v1", True)
    assert [(d["path"], d["sha256"]) for d in out["datasets"]] == [
        (str(live["data"].resolve()), sha256_file(live["data"])), (str(live["new"].resolve()), sha256_file(live["new"]))]
    assert out["base"]["path"] == str(live["base"].resolve())
    assert [(s["name"], s["skipped"]) for s in out["stages"]] == [("finetune", False), ("export", False)]
    record = json.loads((work / "adapter" / "training.json").read_text())
    assert record["recipe"] == json.loads(json.dumps(_versions("tiny")[0]["training"]["finetune"]["recipe"]))
    assert record["recipe_source"] == "like tiny:v1"
    v2 = _versions("tiny")[1]
    assert v2["parent"] == "tiny:v1" and v2["training"]["finetune"]["datasets"] == out["datasets"]
    assert [e["action"] for e in v2["events"]] == ["retrain:finetune", "retrain:export", "retrain:register"]

    again = invoke("--quiet", "retrain", "tiny", "--data", live["new"], "--store", live["models"], "--out", work,
                   "--json")
    assert again.exit_code == 0, again.output
    out = json.loads(again.output)
    assert (out["version"], out["new"]) == ("tiny:v2", False)
    assert [s["skipped"] for s in out["stages"]] == [True, True]
    assert len(_versions("tiny")) == 2 and len(_versions("tiny")[1]["events"]) == 3


def test_the_gate_shows_the_paired_table_and_promotes_only_when_asked(tmp_path, live):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    common = ("retrain", "tiny", "--data", live["new"], "--store", live["models"], "--out", tmp_path / "work",
              "--suite", suite)
    shown = invoke("--quiet", *common)
    assert shown.exit_code == 0, shown.output
    assert "tiny:v2" in shown.output and "tiny:latest (tiny:v1)" in shown.output
    assert "the gate would promote tiny:v2; not promoted" in shown.output
    promoted = invoke("--quiet", *common, "--promote")
    assert promoted.exit_code == 0, promoted.output
    assert "tiny:latest -> tiny:v2" in promoted.output
    actions = [e["action"] for e in _versions("tiny")[1]["events"]]
    assert actions.count("retrain:gate") == 1 and "promote" in actions


def test_finetune_like_a_version_reuses_its_recorded_recipe(tmp_path, live):
    result = invoke("--quiet", "finetune", live["new"], "--base", live["base"], "--like", "tiny:v1",
                    "--out", tmp_path / "like", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["recipe_source"] == "like tiny:v1"
    assert out["recipe"] == _versions("tiny")[0]["training"]["finetune"]["recipe"]


def test_retrain_refuses_changed_or_repeated_data_and_a_version_without_a_recipe(tmp_path, live, tiny_adapter):
    result = invoke("retrain", "tiny", "--data", live["data"], "--store", live["models"], "--out", tmp_path / "w")
    assert_one_line_error(result, "the new data is what tiny:v1 was trained on already")
    live["data"].write_text(live["data"].read_text() + live["new"].read_text())
    result = invoke("retrain", "tiny", "--data", live["new"], "--store", live["models"], "--out", tmp_path / "w")
    assert_one_line_error(result, f"tiny:v1 was trained on {live['data'].resolve()} with sha256",
                          "has changed since")
    result = invoke("retrain", "tiny", "--data", live["new"], "--promote", "--store", live["models"])
    assert_one_line_error(result, "--promote promotes through the golden-suite gate", "--suite")
    result = invoke("retrain", "tiny", "--data", live["new"], "--ab", "100", "--store", live["models"])
    assert_one_line_error(result, "--ab is the new version's share of the users in percent")
    result = invoke("retrain", "nobody", "--data", live["new"], "--store", live["models"])
    assert_one_line_error(result, "nobody has no version to retrain")
    assert not (tmp_path / "w").exists()

    # a version whose adapter was trained by hand has no recorded recipe
    export_dir = _export(tiny_adapter, tmp_path / "hand-export")
    assert invoke("--quiet", "register", export_dir, "--store", live["models"]).exit_code == 0
    assert invoke("--quiet", "promote", "tiny:v2", "--as", "tiny:latest", "--store", live["models"]).exit_code == 0
    result = invoke("retrain", "tiny", "--data", live["new"], "--store", live["models"], "--out", tmp_path / "w")
    assert_one_line_error(result, "tiny:v2 has no recorded recipe", "--recipe recipe.yaml")
    result = invoke("finetune", live["new"], "--base", live["base"], "--like", "tiny:v2", "--out", tmp_path / "w")
    assert_one_line_error(result, "tiny:v2 has no recorded recipe", "--recipe recipe.yaml")
    assert not (tmp_path / "w").exists()
