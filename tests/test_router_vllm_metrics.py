"""vllm tier: a split done outside localserve (two vLLM deployments, as a Gateway API route splits them) judged
from what vLLM publishes alone. demo:v1 is the base served as "smol", demo:v2 the demo adapter's merged export
served as "demo": bounded requests to each, /metrics scraped before and after, and `ab decide --metrics`
reaches its verdict from the two scrapes with exactly the requests sent."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from clihelpers import invoke
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.decide import decide
from localserve.router.sources import VllmMetrics
from localserve.vllm.metrics import read
from vllmtier import chat, pytestmark  # noqa: F401  (the tier's marks and skip)

NAME = "demo"
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"
QUESTIONS = ("What is the codename of the localserve project?", "Name one colour of the sky.",
             "What is two plus two?", "Say hello in French.")
PER_ARM = 12  # requests each served model gets
MAX_TOKENS = 24


def scrape_to(url: str, path) -> None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        path.write_bytes(response.read())


@pytest.fixture(scope="module")
def split(demo_on_vllm, smol_tenants_on_vllm, tmp_path_factory):
    """The experiment (never started: the split is someone else's), the two servers' scrapes before and after
    the requests, and each arm's answers as the client saw them."""
    control_url, candidate_url = smol_tenants_on_vllm[1].url, demo_on_vllm[1].url
    experiment = ex.Experiment(NAME, [Arm(V1, 50, "openai", control_url, "smol"),
                                      Arm(V2, 50, "openai", candidate_url, "demo")], V1, "http://127.0.0.1:11434",
                               11435, time.time())
    folder = tmp_path_factory.mktemp("scrapes")
    scrape_to(control_url, folder / "smol.before.prom")
    scrape_to(candidate_url, folder / "demo.before.prom")
    answers = {V1: [], V2: []}
    for i in range(PER_ARM):
        for version, url, model in ((V1, control_url, "smol"), (V2, candidate_url, "demo")):
            started = time.monotonic()
            choice = chat(url, model, QUESTIONS[i % len(QUESTIONS)], max_tokens=MAX_TOKENS)
            answers[version].append((choice["finish_reason"], time.monotonic() - started))
    scrape_to(control_url, folder / "smol.after.prom")
    scrape_to(candidate_url, folder / "demo.after.prom")
    return experiment, folder, answers


@pytest.fixture
def saved(split):
    """The experiment saved in this test's own state folder (state is per test)."""
    ex.save(split[0])
    return split


def window(folder) -> VllmMetrics:
    return VllmMetrics(now=(str(folder / "smol.after.prom"), str(folder / "demo.after.prom")),
                       before=(str(folder / "smol.before.prom"), str(folder / "demo.before.prom")))


def test_the_window_between_two_scrapes_holds_exactly_the_requests_sent(split):
    _, folder, answers = split
    before = read([str(folder / "smol.before.prom"), str(folder / "demo.before.prom")])
    traffic = read([str(folder / "smol.after.prom"), str(folder / "demo.after.prom")]).minus(before)
    for version, model in ((V1, "smol"), (V2, "demo")):
        served = traffic.model(model)
        sent = answers[version]
        assert served.requests == PER_ARM
        assert served.finished_with("length") == sum(reason == "length" for reason, _ in sent)
        assert served.finished_with("stop") == sum(reason == "stop" for reason, _ in sent)
        latency = served.histograms["e2e_latency"]
        assert latency.count == PER_ARM
        # vLLM times a request from its arrival to its last token: never more than the client waited
        assert 0 < latency.sum <= sum(took for _, took in sent)
        assert served.histograms["generation_tokens"].sum <= PER_ARM * MAX_TOKENS


def test_ab_decide_reaches_its_verdict_from_vllms_metrics_alone(saved):
    _, folder, answers = saved
    verdict = decide(NAME, "error_rate <= control + 0.01 and runaway_rate <= control", min_requests=PER_ARM,
                     apply=False, source=window(folder))
    control, candidate = verdict.report.arm(V1), verdict.report.arm(V2)
    assert (control.requests, candidate.requests, control.errors, candidate.errors) == (PER_ARM, PER_ARM, 0, 0)
    runaways = {v: sum(reason == "length" for reason, _ in answers[v]) for v in (V1, V2)}
    assert (control.runaways, candidate.runaways) == (runaways[V1], runaways[V2])
    expected = "promote" if runaways[V2] <= runaways[V1] else "rollback"
    assert verdict.action == expected, verdict.reasons
    assert control.p50_latency > 0 and candidate.p95_latency >= candidate.p50_latency
    tests = {t.metric: t for t in verdict.report.tests[V2]}
    assert tests["error_rate"].test == "fisher" and tests["p50_latency"].test == "mannwhitneyu_binned"
    assert 0 <= tests["p50_latency"].p_value <= 1
    waiting = decide(NAME, "error_rate <= control + 0.01", min_requests=PER_ARM + 1, apply=False,
                     source=window(folder))
    assert waiting.action == "wait"


def test_the_command_reads_the_live_servers_since_the_saved_scrapes(saved, demo_on_vllm, smol_tenants_on_vllm):
    _, folder, answers = saved
    result = invoke("ab", "decide", NAME, "--success", "error_rate <= control + 0.01", "--min-requests", PER_ARM,
                    "--metrics", smol_tenants_on_vllm[1].url, "--metrics", demo_on_vllm[1].url,
                    "--since-scrape", folder / "smol.before.prom", "--since-scrape", folder / "demo.before.prom",
                    "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["action"] == "promote" and verdict["source"].startswith("vLLM's metrics at http://")
    # the servers answer nothing else meanwhile: the live counts are the saved window's
    assert (verdict["control"]["requests"], verdict["candidate"]["requests"]) == (PER_ARM, PER_ARM)
    assert ex.load(NAME).weights() == {V1: 50.0, V2: 50.0}
