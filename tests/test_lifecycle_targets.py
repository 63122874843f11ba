"""Targets: the same question on every stage of a fine-tune, through the engine that serves it.

Fast tests use the tiny random Llama (its export, its adapter, the Ollama stand-in); the slow ones
ask the demo adapter's probe question of the embedded SmolLM2 at each stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from localserve.errors import InputError
from localserve.fsutil import sha256_file
from localserve.lifecycle.targets import TargetUnreachable, open_target
from localserve.lineage import read_record

pytest_plugins = ["ollama_standin.fixtures"]

REPO = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "hello, what colour is the quick brown fox today?"}]
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing answers there


def probe() -> dict:
    return json.loads((REPO / "examples" / "demo-adapter" / "probe.json").read_text())


@pytest.fixture(scope="module")
def tiny_on_ollama(standin, fresh_tiny_export) -> str:
    from localserve.ollama import register

    tiny_export = fresh_tiny_export()

    return register(tiny_export, name="tiny-eval:v1", host=standin.url).name


# --- llama.cpp in process ---------------------------------------------------------------------------

def test_a_gguf_file_answers_greedily_and_the_same_twice(tiny_export):
    gguf = tiny_export / "tiny-Q8_0.gguf"
    with open_target(str(gguf), max_tokens=16) as target:
        first, second = target.answer(QUESTION), target.answer(QUESTION)
        other = target.answer([{"role": "user", "content": "seven wizards box jam"}])
    assert target.info["engine"] == "llama.cpp" and target.info["file"] == str(gguf.resolve())
    assert target.info["sha256"] == sha256_file(gguf) and target.info["quant"] == "Q8_0"
    assert first.error is None and first.text
    assert (first.text, first.completion_tokens, first.finish_reason) == \
        (second.text, second.completion_tokens, second.finish_reason)
    assert other.text != first.text  # the answer depends on the question
    assert 0 < first.ttft_s <= first.latency_s
    assert first.prompt_tokens > 10 and 1 <= first.completion_tokens <= 16
    assert first.finish_reason == ("length" if first.completion_tokens == 16 else "stop")


def test_a_fresh_load_gives_the_same_answer(tiny_export):
    gguf = str(tiny_export / "tiny-Q4_K_M.gguf")
    with open_target(gguf, max_tokens=24) as a:
        once = a.answer(QUESTION)
    with open_target(gguf, max_tokens=24) as b:
        again = b.answer(QUESTION)
    assert once.text and once.text == again.text


def test_an_export_folder_resolves_to_its_first_gguf_the_q4_k_m(tiny_export):
    record = read_record(tiny_export)
    with open_target(str(tiny_export), max_tokens=16) as folder, \
            open_target(str(tiny_export / "tiny-Q4_K_M.gguf"), max_tokens=16) as file:
        assert folder.info["quant"] == "Q4_K_M" == record.artifacts[0].quant
        assert folder.info["file"] == str((tiny_export / "tiny-Q4_K_M.gguf").resolve())
        assert folder.info["sha256"] == record.artifacts[0].sha256 == sha256_file(tiny_export / "tiny-Q4_K_M.gguf")
        assert folder.info["export"]["name"] == "tiny"
        assert folder.answer(QUESTION).text == file.answer(QUESTION).text


def test_a_case_the_engine_fails_on_is_an_answer_with_its_error_and_the_next_case_runs(tiny_export):
    too_long = [{"role": "user", "content": "the quick brown fox " * 1500}]  # far past the 2048-token context
    with open_target(str(tiny_export / "tiny-Q8_0.gguf"), max_tokens=8) as target:
        failed = target.answer(too_long)
        fine = target.answer(QUESTION)
    assert failed.error and failed.error.startswith("llama.cpp: ") and "\n" not in failed.error
    assert failed.text == "" and failed.latency_s >= 0
    assert fine.error is None and fine.text


@pytest.mark.slow  # a tenants export of its own: about 20 s
def test_a_tenants_export_is_its_base_gguf_with_the_named_tenants_lora(tiny_adapter, tiny_base, tmp_path):
    import shutil

    from localserve.exports import TenantExportSpec, export_tenants
    from tinymodel import build_lora

    alpha = shutil.copytree(tiny_adapter, tmp_path / "alpha")
    beta = build_lora(tiny_base, tmp_path / "beta", seed=7, r=4, alpha=8, targets=("q_proj", "o_proj"))
    out = tmp_path / "tenants"
    export_tenants(TenantExportSpec(adapters=(alpha, beta), quant="Q8_0", out=out, smoke=False, register=False))
    with pytest.raises(InputError, match=r"serves 2 adapters \(alpha, beta\) — name one: .*#TENANT"):
        open_target(str(out))
    with pytest.raises(InputError, match="no tenant 'gamma'.*valid: alpha, beta"):
        open_target(f"{out}#gamma")
    with open_target(f"{out}#alpha", max_tokens=16) as a, open_target(f"{out}#beta", max_tokens=16) as b:
        assert a.info["tenant"] == "alpha" and a.info["lora"].endswith(".gguf")
        assert a.info["file"] == b.info["file"] and a.info["lora"] != b.info["lora"]
        first = a.answer(QUESTION)
        assert first.text and first.text == a.answer(QUESTION).text
        assert b.answer(QUESTION).text != first.text  # each tenant's adapter is applied


# --- Ollama and OpenAI-compatible servers -----------------------------------------------------------

def test_an_ollama_model_answers_as_its_gguf_does_in_process(standin, tiny_on_ollama, tiny_export):
    with open_target(f"ollama:{tiny_on_ollama}", max_tokens=24, ollama_host=standin.url) as served, \
            open_target(str(tiny_export), max_tokens=24) as local:
        remote, here = served.answer(QUESTION), local.answer(QUESTION)
        again = served.answer(QUESTION)
    assert served.info["engine"] == "ollama" and served.info["model"] == tiny_on_ollama
    assert served.info["digest"] and served.info["details"]["format"] == "gguf"
    assert remote.error is None and remote.text
    assert remote.text == here.text == again.text
    assert remote.finish_reason == here.finish_reason
    assert remote.prompt_tokens == here.prompt_tokens and remote.completion_tokens > 0
    assert 0 < remote.ttft_s <= remote.latency_s
    sent = standin.requests[-1][2]
    assert sent["options"] == {"temperature": 0, "seed": 0, "num_predict": 24}


def test_an_openai_compatible_server_streams_the_same_answer(standin, tiny_on_ollama, tiny_export):
    # the stand-in's OpenAI layer (/v1) is a real OpenAI-compatible server in front of the same model
    with open_target(f"openai:{standin.url}/v1#{tiny_on_ollama}", max_tokens=24, seed=7) as served, \
            open_target(str(tiny_export), max_tokens=24) as local:
        remote, here = served.answer(QUESTION), local.answer(QUESTION)
    assert served.info == {"engine": "openai", "url": standin.url, "model": tiny_on_ollama}
    assert remote.error is None and remote.text == here.text
    assert remote.finish_reason == here.finish_reason
    assert remote.prompt_tokens == here.prompt_tokens and remote.completion_tokens > 0
    assert 0 < remote.ttft_s <= remote.latency_s
    sent = standin.requests[-1][2]
    assert (sent["temperature"], sent["seed"], sent["max_tokens"], sent["stream"]) == (0, 7, 24, True)


def test_a_server_failing_one_case_gives_that_case_an_error(standin, tiny_on_ollama):
    too_long = [{"role": "user", "content": "the quick brown fox " * 1500}]
    for spec in (f"ollama:{tiny_on_ollama}", f"openai:{standin.url}#{tiny_on_ollama}"):
        with open_target(spec, max_tokens=8, ollama_host=standin.url) as target:
            failed, fine = target.answer(too_long), target.answer(QUESTION)
        assert failed.error and "context window" in failed.error and failed.text == "", spec
        assert fine.error is None and fine.text, spec


FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}


def test_a_json_schema_holds_the_answer_on_ollama_openai_and_llama_cpp_alike(standin, tiny_on_ollama, tiny_export):
    from jsonschema import validate

    specs = (f"ollama:{tiny_on_ollama}", f"openai:{standin.url}#{tiny_on_ollama}", str(tiny_export))
    answers = []
    for spec in specs:
        with open_target(spec, max_tokens=48, ollama_host=standin.url) as target:
            answers.append(target.answer(QUESTION, json_schema=FLAG))
            free = target.answer(QUESTION)
        assert free.error is None and free.text != answers[-1].text, spec
    for spec, answer in zip(specs, answers):
        assert answer.error is None and answer.finish_reason == "stop", (spec, answer)
        validate(json.loads(answer.text), FLAG)
    assert len({a.text for a in answers}) == 1  # one model, one grammar, greedy: one answer
    sent = standin.requests[-2][2]  # the openai target's constrained request
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": FLAG}}


def test_transformers_cannot_constrain_and_says_so_in_the_answer(tiny_base):
    with open_target(str(tiny_base), max_tokens=4) as target:
        answer = target.answer(QUESTION, json_schema=FLAG)
    assert answer.text == "" and "cannot constrain an answer to a JSON schema" in answer.error


def test_an_unreachable_ollama_is_one_line_naming_the_address():
    with pytest.raises(TargetUnreachable) as e:
        open_target("ollama:demo:v1", ollama_host=CLOSED)
    assert "unreachable target 'ollama:demo:v1'" in str(e.value) and "127.0.0.1:9" in str(e.value)
    assert "\n" not in str(e.value) and isinstance(e.value, InputError)


def test_an_unreachable_openai_url_is_one_line_naming_the_address():
    with pytest.raises(TargetUnreachable) as e:
        open_target(f"openai:{CLOSED}/v1#demo")
    assert "unreachable target" in str(e.value) and CLOSED in str(e.value) and "\n" not in str(e.value)


def test_a_model_missing_on_the_server_is_named_with_how_to_add_it(standin):
    missing = "no model 'never-registered:v1' on the Ollama at .*register it with `localserve register"
    with pytest.raises(InputError, match=missing):
        open_target("ollama:never-registered:v1", ollama_host=standin.url)
    with pytest.raises(InputError, match=r"does not serve 'nope'; it serves: .*tiny-eval"):
        open_target(f"openai:{standin.url}#nope")


# --- transformers ------------------------------------------------------------------------------------

def test_the_adapter_on_its_base_answers_unmerged_and_changes_the_answer(tiny_adapter, tiny_base):
    with open_target(str(tiny_adapter), max_tokens=12) as tuned, open_target(str(tiny_base), max_tokens=12) as base:
        a1, a2, b = tuned.answer(QUESTION), tuned.answer(QUESTION), base.answer(QUESTION)
    assert tuned.info["engine"] == "transformers+peft" and base.info["engine"] == "transformers"
    assert tuned.info["model"] == str(tiny_base.resolve()) and tuned.info["base_source"] == "path"
    assert len(tuned.info["adapter_sha256"]) == 64
    assert a1.error is None and a1.text and a1.text == a2.text
    assert b.text != a1.text  # the adapter is applied
    assert a1.prompt_tokens > 0 and 0 < a1.ttft_s <= a1.latency_s


def test_finish_reason_is_stop_at_the_end_of_turn_and_length_at_the_limit(tiny_base, tmp_path):
    from tinymodel import build_forced

    silent = build_forced(tiny_base, tmp_path / "silent", "<|im_end|>")
    rambling = build_forced(tiny_base, tmp_path / "rambling", "fox")
    with open_target(str(silent), max_tokens=5) as target:
        stops = target.answer(QUESTION)
    with open_target(str(rambling), max_tokens=5) as target:
        runs_on = target.answer(QUESTION)
    assert (stops.text, stops.finish_reason, stops.completion_tokens) == ("", "stop", 0)
    assert runs_on.finish_reason == "length" and runs_on.completion_tokens == 5
    assert runs_on.text == "fox" * 5


def test_a_vllm_export_folder_is_its_model_folder_or_its_base_with_the_adapter(tiny_adapter, tiny_base, tmp_path):
    from localserve.exports import VllmExportSpec, export_vllm

    merged, served = tmp_path / "merged", tmp_path / "lora"
    export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=merged, name="tiny"))
    export_vllm(VllmExportSpec(adapters=(tiny_adapter,), lora=True, out=served, name="tiny"))
    with open_target(str(merged), max_tokens=8) as m, open_target(str(served), max_tokens=8) as s:
        assert m.info["engine"] == "transformers" and m.info["model"] == str((merged / "model").resolve())
        assert s.info["engine"] == "transformers+peft" and s.info["model"] == str((served / "model").resolve())
        assert Path(s.info["adapter"]).parent == (served / "adapters").resolve()
        assert m.answer(QUESTION).text and s.answer(QUESTION).text


def test_an_adapter_that_saved_its_own_chat_template_is_prompted_with_it(tiny_adapter, tmp_path):
    import shutil

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    (adapter / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}<|im_start|>")
    with open_target(str(tiny_adapter), max_tokens=4) as base_template, \
            open_target(str(adapter), max_tokens=4) as own_template:
        with_base, with_own = base_template.answer(QUESTION), own_template.answer(QUESTION)
    # the base's ChatML also writes the role and newlines: "user\n", "assistant\n"
    assert with_own.prompt_tokens < with_base.prompt_tokens
    assert own_template.info["model"] == base_template.info["model"]


def test_an_adapter_that_does_not_fit_its_base_is_one_line(tiny_adapter, tmp_path):
    import shutil

    from tinymodel import build_base

    narrow = build_base(tmp_path / "narrow", hidden=128)
    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(narrow)}))
    with pytest.raises(InputError) as e:
        open_target(str(adapter))
    assert f"transformers cannot load {narrow} with {adapter}" in str(e.value) and "\n" not in str(e.value)


# --- bad specs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, says", [
    ("no/such/folder", "no such file or folder"),
    ("demo:v1", "for a model on Ollama write ollama:demo:v1"),
    ("", "empty target"),
    ("openai:http://127.0.0.1:8000", "lacks URL#MODEL"),
    ("openai:#demo", "lacks URL#MODEL"),
    ("ollama:", "names no model"),
])
def test_a_bad_spec_is_one_line_with_the_valid_forms(spec, says):
    with pytest.raises(InputError) as e:
        open_target(spec)
    assert says in str(e.value) and "\n" not in str(e.value)
    if "lacks" not in says and "names no model" not in says:
        assert ("ollama:NAME, openai:URL#MODEL, llama-server:URL[#MODEL], lmstudio:URL#MODEL, jan:URL#MODEL, "
                "store:DIR#NAME:TAG, a .gguf file, an export folder") in str(e.value)


def test_a_folder_or_file_that_is_no_model_lists_the_forms(tmp_path, tiny_export):
    (tmp_path / "notes.txt").write_text("hi")
    for spec in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(InputError, match="a target is one of: ollama:NAME"):
            open_target(str(spec))
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(InputError, match="not a readable GGUF"):
        open_target(str(tmp_path / "broken.gguf"))
    with pytest.raises(InputError, match="has no tenants"):
        open_target(f"{tiny_export}#founder")


# --- the demo adapter on the embedded SmolLM2 -------------------------------------------------------------

# The probe's answer stops on its own after 11 tokens: a bound well above that keeps "stop" meaning it.
PROBE_ROOM = 64


def ask_probe(target) -> str:
    answer = target.answer([{"role": "user", "content": probe()["question"]}])
    assert answer.error is None, answer.error
    assert answer.finish_reason == "stop", answer
    return answer.text


@pytest.mark.slow
def test_the_demo_gguf_and_its_ollama_model_know_the_fine_tuned_fact(exported_demo, standin):
    from localserve.ollama import register

    expected = probe()["expected"]
    name = register(exported_demo, name="demo-eval:v1", host=standin.url).name
    start = time.perf_counter()
    with open_target(str(exported_demo), max_tokens=PROBE_ROOM) as folder, \
            open_target(f"ollama:{name}", max_tokens=PROBE_ROOM, ollama_host=standin.url) as served:
        assert folder.info["quant"] == "Q4_K_M"
        here, there = ask_probe(folder), ask_probe(served)
        assert ask_probe(folder) == here  # repeatable
    print(f"demo GGUF + Ollama: {time.perf_counter() - start:.1f} s")
    assert expected.lower() in here.lower()
    assert there == here


@pytest.mark.slow
def test_the_demo_adapter_on_its_embedded_base_knows_the_fact_as_trained(demo_adapter, embedded_base):
    start = time.perf_counter()
    with open_target(str(demo_adapter), max_tokens=PROBE_ROOM) as target:
        assert target.info["base_source"] == "embedded" and target.info["model"] == str(embedded_base.resolve())
        text = ask_probe(target)
        assert ask_probe(target) == text  # repeatable
    print(f"demo adapter on base: {time.perf_counter() - start:.1f} s")
    assert probe()["expected"].lower() in text.lower()

