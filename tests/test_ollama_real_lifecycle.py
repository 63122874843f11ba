"""The ollama tier, continued: the lifecycle in front of the real `ollama serve` (the session's one server,
`real_ollama`). Eval on `ollama:` and `store:` targets gives the GGUF's own answers; promote and rollback move
an alias between versions on the server and a rollback restores the exact digest, even after a version's tag
was re-created; the A/B router passes each arm's own answer to the `ollama` and `openai` clients, streamed and
not; bench measures the server. Every request is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import ollama
import pytest
from ollama_standin import HTTP
from openai import OpenAI

from localserve.ollama import register
from localserve.ollama.client import OllamaServer
from localserve.router.arms import assign
from localserve.router.log import RequestLog
from routerhelpers import running_router
from test_ollama_real import CODENAME, REPO, ROOM, cli_run, renamed_copy

pytestmark = [pytest.mark.ollama, pytest.mark.slow]

PROBE = REPO / "examples" / "demo-adapter" / "probe.json"


def only_quant(export: Path, quant: str) -> Path:
    """`export` narrowed to one of its GGUFs: another export (other artifacts), so the next version."""
    record = json.loads((export / "localserve.json").read_text())
    kept = [a for a in record["artifacts"] if a["quant"] == quant]
    for artifact in record["artifacts"]:
        if artifact not in kept:
            (export / artifact["file"]).unlink()
    (export / "localserve.json").write_text(json.dumps({**record, "artifacts": kept}))
    return export


@pytest.fixture(scope="module")
def demo_q4(real_ollama, exported_demo, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the demo export registered as demo-life:q4 (its Q4_K_M; register(): no version store)."""
    out = renamed_copy(exported_demo, "demo-life", tmp_path_factory.mktemp("demo-life"))
    return out, register(out, name="demo-life:q4", host=real_ollama.url).name


def test_eval_on_the_ollama_and_store_targets_gives_the_ggufs_own_answers(real_ollama, demo_q4):
    export, name = demo_q4
    gguf = export / json.loads((export / "localserve.json").read_text())["artifacts"][0]["file"]
    targets = [f"ollama:{name}", f"store:{real_ollama.models}#{name}", str(gguf)]
    result = cli_run("eval", str(PROBE), *targets, "--host", real_ollama.url, "--max-tokens", str(ROOM), "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)
    assert [r["target"] for r in runs] == targets and all(r["passed"] == r["total"] == 1 for r in runs), runs
    answers = [r["cases"][0]["answer"] for r in runs]
    assert all(a["error"] is None and a["finish_reason"] == "stop" for a in answers), answers
    # the server, Ollama's store read without it, and the GGUF in llama.cpp: one greedy answer
    assert len({a["text"].strip() for a in answers}) == 1, answers


@pytest.mark.parametrize("where", ["server", "store"])
def test_promote_and_rollback_restore_the_exact_digest_the_server_serves(real_ollama, exported_demo, tmp_path, where):
    """NAME:v1 is the demo export's Q4_K_M, NAME:v2 its Q8_0 alone, registered through the server's API or
    straight into the store it serves from. The gate promotes v2 over v1 on the probe (both evaluated where
    they live); after v1's tag is re-created with v2's content, a rollback restores the exact manifest v1 had
    (through the API: created again from its recipe; in the store: its bytes written back), and the running
    server lists and answers it."""
    name = f"demo-{where}"
    v1_export = renamed_copy(exported_demo, name, tmp_path / "v1")
    v2_export = only_quant(renamed_copy(exported_demo, name, tmp_path / "v2"), "Q8_0")
    place = ["--host", real_ollama.url] if where == "server" else ["--store", str(real_ollama.models)]
    first = json.loads(cli_run("register", str(v1_export), *place, "--json").output)
    second = json.loads(cli_run("register", str(v2_export), *place, "--json").output)
    assert [first["models"][0], second["models"][0]] == [f"{name}:v1", f"{name}:v2"]
    assert first["manifest_digest"] != second["manifest_digest"]

    def served_digest(model: str) -> str | None:
        return {m["name"]: m["digest"] for m in HTTP.get(f"{real_ollama.url}/api/tags").json()["models"]}.get(model)

    promoted = cli_run("promote", f"{name}:v1", "--as", f"{name}:latest", *place, "--json")
    assert promoted.exit_code == 0, promoted.output
    gated = cli_run("promote", f"{name}:v2", "--as", f"{name}:latest", "--suite", str(PROBE),
                    "--max-tokens", str(ROOM), *place, "--json")
    assert gated.exit_code == 0, gated.output
    comparison = json.loads(gated.output)["comparison"]
    assert comparison["candidate"]["score"] == comparison["champion"]["score"] == 1.0
    assert served_digest(f"{name}:latest") == second["manifest_digest"]

    OllamaServer(real_ollama.url).copy(f"{name}:v2", f"{name}:v1")  # someone re-created v1 with v2's content
    assert served_digest(f"{name}:v1") == second["manifest_digest"]
    rolled = cli_run("rollback", f"{name}:latest", *place, "--json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.output)["digest"] == first["manifest_digest"]
    assert served_digest(f"{name}:latest") == first["manifest_digest"]  # v1's own manifest, not the re-created tag's
    probe = json.loads(PROBE.read_text())
    answer = ollama.Client(host=real_ollama.url).chat(model=f"{name}:latest", messages=[
        {"role": "user", "content": probe["question"]}], options={"temperature": 0, "num_predict": ROOM})
    assert probe["expected"] in answer.message.content


def test_the_ab_router_passes_each_arms_own_answer_streamed_or_not_on_both_apis(real_ollama, demo_q4):
    """Arms demo-ab:v1 (the Q4_K_M) and demo-ab:v2 (the Q8_0) on the real server; a user on each gets, through
    the router, the answer their arm gives directly, on Ollama's API and OpenAI's, streamed and not."""
    export, _ = demo_q4
    versions = {"demo-ab:v1": "Q4_K_M", "demo-ab:v2": "Q8_0"}
    for version, quant in versions.items():
        register(export, name=version, host=real_ollama.url, quant=quant)
    question = [{"role": "user", "content": CODENAME}]
    options = {"temperature": 0, "num_predict": ROOM}
    direct = ollama.Client(host=real_ollama.url)
    own = {v: direct.chat(model=v, messages=question, options=options).message.content for v in versions}
    with running_router("demo-ab", [f"{v}=50" for v in versions], real_ollama.url) as router:
        users = {v: next(u for u in (f"user-{i}" for i in range(500)) if assign("demo-ab", u, router.arms).version == v)
                 for v in versions}
        openai = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        for version, user in users.items():
            via = ollama.Client(host=router.url, headers={"X-User-Id": user})
            whole = via.chat(model="demo-ab", messages=question, options=options)
            pieces = list(via.chat(model="demo-ab", messages=question, options=options, stream=True))
            raw = openai.chat.completions.with_raw_response.create(model="demo-ab", messages=question, max_tokens=ROOM,
                                                                    temperature=0, user=user)
            streamed = "".join(c.choices[0].delta.content or "" for c in openai.chat.completions.create(
                model="demo-ab", messages=question, max_tokens=ROOM, temperature=0, user=user, stream=True)
                if c.choices)
            assert raw.headers["x-localserve-arm"] == version
            answers = [whole.message.content, "".join(p.message.content for p in pieces),
                       raw.parse().choices[0].message.content, streamed]
            assert all(a.strip() == own[version].strip() for a in answers), (version, own[version], answers)
            assert "bluebird" in own[version].lower() and pieces[-1].done_reason == "stop"
    with RequestLog() as log:
        rows = log.rows("demo-ab")
    assert [(r.arm, r.stream) for r in rows] == [(v, s) for v in versions for s in (False, True, False, True)]
    assert all(r.status == 200 and r.error is None and r.completion_tokens for r in rows)


def test_bench_measures_the_real_server(real_ollama, demo_q4):
    export, name = demo_q4
    gguf = export / json.loads((export / "localserve.json").read_text())["artifacts"][0]["file"]
    result = cli_run("bench", str(gguf), "--target", "ollama", "--url", real_ollama.url, "--served-name", name,
                     "--concurrency", "2", "--prompt-tokens", "32", "--max-tokens", "16", "--no-store", "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["served_name"] == name and measured["ttft_s"] > 0 and measured["decode_tokens_per_s"] > 0
    assert measured["concurrent"]["requests"] == 2 and measured["concurrent"]["aggregate_output_tokens_per_s"] > 0
