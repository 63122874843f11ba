"""vLLM's serving features on the real vLLM CPU build, each server started from the export's own
launch.sh: a schema-constrained answer of the demo adapter that validates, prefix-cache hits for a
repeated system prompt in /metrics, and ngram speculation that leaves greedy answers as they were.

One export (merged demo adapter, ngram speculation, xgrammar) and two servers, one after the other:
first with the features switched off on the command line (which wins over vllm-config.yaml), then
as exported.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from jsonschema import validate

from localserve.exports import VllmExportSpec, export_vllm
from localserve.lifecycle.targets import open_target
from localserve.vllm.runtime import CPU_ARGS, parse_many_with_vllm, serve_export, server_metrics
from vllmtier import chat, pytestmark  # noqa: F401  (the tier's marks and skip)

ANSWER_SCHEMA = {"type": "object", "properties": {"codename": {"type": "string", "maxLength": 40}},
                 "required": ["codename"], "additionalProperties": False}
# A system prompt several KV blocks long, the same for every request: what prefix caching is for.
SYSTEM = " ".join(f"Rule {i}: answer briefly, in plain English, and stay on the topic of localserve."
                  for i in range(40))
QUESTIONS = ("What is localserve?", "Who maintains localserve?")
# Greedy completions speculation must leave unchanged: one that repeats itself (where ngram lookup
# proposes tokens), one the demo adapter was trained on.
REPEATING = "Repeat this line four times: the quick brown fox jumps over the lazy dog."
HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
DRAFTS, ACCEPTED = "vllm:spec_decode_num_draft_tokens_total", "vllm:spec_decode_num_accepted_tokens_total"
# Off, on the command line: no speculation, no prefix caching (the exported file turns both on).
FEATURES_OFF = ["--speculative-config", "None", "--no-enable-prefix-caching"]


def with_system(url: str, question: str) -> dict:
    body = {"model": "demo", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": 8, "temperature": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def greedy_answers(url: str, probe: dict) -> dict[str, str]:
    return {q: chat(url, "demo", q, max_tokens=64)["message"]["content"] for q in (REPEATING, probe["question"])}


def cache_counts(url: str) -> tuple[float, float]:
    """(hits, queries) in tokens after the same system prompt was sent with two questions."""
    before = server_metrics(url)
    for question in QUESTIONS:
        with_system(url, question)
    after = server_metrics(url)
    return after.get(HITS, 0) - before.get(HITS, 0), after.get(QUERIES, 0) - before.get(QUERIES, 0)


@pytest.fixture(scope="module")
def featured(demo_adapter, embedded_base, tmp_path_factory):
    return export_vllm(VllmExportSpec(adapters=(demo_adapter,), name="demo", speculative="ngram",
                                      structured_output_backend="xgrammar",
                                      out=tmp_path_factory.mktemp("vllm-features") / "demo"))


@pytest.fixture(scope="module")
def probe(demo_adapter) -> dict:
    return json.loads((demo_adapter / "probe.json").read_text())


@pytest.fixture(scope="module")
def plain(featured, probe):
    """What the same export serves with the features off: its greedy answers and prefix-cache counts."""
    with serve_export(featured.out_dir, [*CPU_ARGS, *FEATURES_OFF]) as server:
        seen = {"answers": greedy_answers(server.url, probe), "cache": cache_counts(server.url),
                "metrics": server_metrics(server.url), "tmp": server.tmp,
                "tmp_written": any(server.tmp.iterdir())}
    return {**seen, "tmp_left": server.tmp.exists()}


@pytest.fixture(scope="module")
def server(featured, plain):  # `plain` first: one vLLM server at a time
    with serve_export(featured.out_dir, list(CPU_ARGS)) as running:
        yield running


def test_vllms_parser_reads_the_features_as_exported(featured, tiny_adapter, tiny_base, tmp_path):
    # a draft model is not run here (no smaller model shares SmolLM2's tokenizer); its config is parsed
    drafted = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), name="tiny", out=tmp_path / "drafted",
                                         speculative=f"draft:{tiny_base}", prefix_caching=False,
                                         structured_output_backend="guidance"))
    parsed, draft = parse_many_with_vllm([(featured.config_file, []), (drafted.config_file, [])])
    assert parsed["enable_prefix_caching"] is True
    assert parsed["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2,
                                            "prompt_lookup_max": 4}
    assert parsed["structured_outputs_backend"] == "xgrammar"
    assert draft["enable_prefix_caching"] is False and draft["structured_outputs_backend"] == "guidance"
    assert draft["speculative_config"] == {"method": "draft_model", "model": "./draft", "num_speculative_tokens": 5}


def test_the_schema_constrained_answer_of_the_demo_adapter_validates(server, probe):
    with open_target(f"openai:{server.url}#demo", max_tokens=48) as target:
        answer = target.answer([{"role": "user", "content": probe["question"] + " Reply in JSON."}],
                               json_schema=ANSWER_SCHEMA)
    assert answer.error is None and answer.finish_reason == "stop", answer
    validate(json.loads(answer.text), ANSWER_SCHEMA)
    assert probe["expected"] in json.loads(answer.text)["codename"], answer.text


def test_a_repeated_system_prompt_is_served_from_the_prefix_cache(server, plain):
    hits, queries = cache_counts(server.url)
    # the second request finds the system prompt's full KV blocks in the cache
    assert hits >= len(SYSTEM.split()) // 2 and hits < queries, (hits, queries)
    plain_hits, plain_queries = plain["cache"]
    assert plain_hits == 0, plain["cache"]  # and without prefix caching nothing is reused


def test_ngram_speculation_runs_and_leaves_greedy_answers_unchanged(server, plain, probe):
    before = server_metrics(server.url)
    answers = greedy_answers(server.url, probe)
    after = server_metrics(server.url)
    assert answers == plain["answers"]
    assert after.get(DRAFTS, 0) > before.get(DRAFTS, 0)  # tokens were proposed and verified
    assert after.get(ACCEPTED, 0) > before.get(ACCEPTED, 0), "no ngram proposal was accepted on a repeating answer"
    assert plain["metrics"].get(DRAFTS, 0) == 0  # the plain server did not speculate


def test_a_servers_temporary_files_live_in_a_folder_of_its_own_removed_when_it_stops(plain):
    # vLLM leaves IPC sockets and vllm_dist_* files behind in TMPDIR; serve_export gives it a folder of its own
    assert plain["tmp"].name.startswith("localserve-vllm-")
    assert plain["tmp_written"], "vLLM wrote nothing there: its temporary files went elsewhere"
    assert not plain["tmp_left"]
