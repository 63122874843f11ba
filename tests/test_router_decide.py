"""The verdict: the success condition parsed (never eval'd), and decisions on synthetic request logs whose
outcome is known — promote through the lifecycle (NAME:latest moves on the Ollama stand-in, all traffic to
the candidate), roll back (weight 0), or wait — each recorded on the version with its evidence."""

from __future__ import annotations

import random
import time

import pytest

from localserve.errors import InputError, UnknownName
from localserve.lifecycle.store import VersionStore
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.decide import ConditionError, decide, judge, parse_condition
from localserve.router.log import RequestLog, RequestRow
from localserve.router.stats import build_report
from routerhelpers import V1, V2

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

NAME = V1.split(":")[0]


def rows(arm: str, n: int, *, errors: int = 0, latency: float = 0.2, runaways: int = 0, feedback: float | None = None,
         seed: int = 0, start: float | None = None) -> list[RequestRow]:
    """`n` requests of `arm`: the first `errors` failed, the next `runaways` stopped by the limit, latencies
    spread around `latency`, every answer scored `feedback` (a 0/1 rate: the share of 1s)."""
    rng = random.Random(seed)
    start = start if start is not None else time.time() - 600
    out = []
    for i in range(n):
        failed = i < errors
        out.append(RequestRow(
            f"{arm}-{seed}-{i}", NAME, start + i * 0.5, "/api/chat", arm, f"user{i % 40}", True,
            status=502 if failed else 200, latency_s=latency * rng.uniform(0.8, 1.2), ttft_s=latency / 4,
            prompt_tokens=20, completion_tokens=30,
            finish_reason="length" if errors <= i < errors + runaways else "stop",
            response_chars=0 if failed else 120, error="upstream failed" if failed else None))
    if feedback is not None:
        ones = round(feedback * n)
        for i, row in enumerate(out):
            row.feedback = 1.0 if i < ones else 0.0
    return out


def save_experiment(upstream: str, weights=(90, 10)) -> ex.Experiment:
    experiment = ex.Experiment(NAME, [Arm(V1, weights[0], "ollama", upstream, V1),
                                      Arm(V2, weights[1], "ollama", upstream, V2)], V1, upstream, 1,
                               time.time() - 3600)
    ex.save(experiment)
    return experiment


def log_rows(*groups: list[RequestRow]) -> None:
    with RequestLog() as log:
        for group in groups:
            log.add_many(group)
            for row in group:
                if row.feedback is not None:
                    log.add_feedback(row.id, row.feedback)


# --- the condition --------------------------------------------------------------------------------------

def test_a_condition_parses_into_clauses_on_the_candidate_against_the_control():
    clauses = parse_condition("error_rate <= control + 0.01 and p95_latency <= 1.2 * control "
                              "and feedback >= control.feedback - (0.1 / 2)")
    assert [(c.metric, c.op) for c in clauses] == [("error_rate", "<="), ("p95_latency", "<="), ("feedback", ">=")]
    assert clauses[0].expression == ("+", ("control", "error_rate"), ("num", 0.01))
    assert clauses[1].expression == ("*", ("num", 1.2), ("control", "p95_latency"))
    assert clauses[2].expression == ("-", ("control", "feedback"), ("/", ("num", 0.1), ("num", 2.0)))


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("latency <= control", "unknown metric 'latency'"),
    ("error_rate + control", "'+' is not one of"),
    ("error_rate => control", "cannot read the condition at '=> control'"),
    ("error_rate <= control +", "ends too early"),
    ("error_rate <= (control + 1", "not closed"),
    ("error_rate <= control 2", "unexpected '2'"),
    ("__import__('os').system('true') <= 1", "cannot read"),
    ("error_rate <= control.__class__", "unknown metric '__class__'"),
])
def test_a_bad_condition_is_refused_naming_what_is_wrong(text, needle):
    with pytest.raises((ConditionError, UnknownName)) as e:
        parse_condition(text)
    assert needle in str(e.value)


def test_the_verdict_follows_the_numbers():
    control = rows(V1, 200, errors=2, latency=0.20, feedback=0.8)
    worse = rows(V2, 200, errors=30, latency=0.21, feedback=0.8, seed=1)
    same = rows(V2, 200, errors=2, latency=0.20, feedback=0.8, seed=2)
    slow = rows(V2, 200, errors=2, latency=0.40, feedback=0.8, seed=3)
    cond = "error_rate <= control + 0.01 and p95_latency <= 1.2 * control and feedback >= control"

    def verdict(candidate, min_requests=100):
        report = build_report(NAME, V1, [V1, V2], control + candidate)
        return judge(report, V2, cond, min_requests)

    v = verdict(worse)
    assert v.action == "rollback" and len(v.reasons) == 1
    assert v.reasons[0].startswith("error_rate <= control + 0.01 fails")
    assert [c.holds for c in v.clauses] == [False, True, True]
    tests = {t.metric: t for t in v.report.tests[V2]}
    assert tests["error_rate"].p_value < 1e-4  # 30/200 against 2/200: Fisher is sure
    assert verdict(same).action == "promote" and tests["feedback"].p_value == 1.0
    assert verdict(slow).action == "rollback" and "p95_latency" in verdict(slow).reasons[0]
    assert verdict(slow).report.tests[V2][3].p_value < 1e-10  # Mann-Whitney on latencies twice as long
    assert verdict(same, min_requests=201).action == "wait"
    no_feedback = rows(V2, 200, errors=2, latency=0.2, seed=4)
    waiting = verdict(no_feedback)
    assert waiting.action == "wait" and "no data" in waiting.reasons[0]


# --- acting on it -------------------------------------------------------------------------------------

def test_a_candidate_that_fails_is_rolled_back_to_weight_0_and_the_decision_is_on_the_version(tiny_arms):
    save_experiment(tiny_arms)
    log_rows(rows(V1, 120, errors=1), rows(V2, 120, errors=20, seed=1))
    verdict = decide(NAME, "error_rate <= control + 0.01", min_requests=100)
    assert verdict.action == "rollback"
    assert ex.load(NAME).weights() == {V1: 90.0, V2: 0.0}
    with VersionStore() as store:
        (event,) = store.events(version=V2)
    assert event["action"] == "ab-rollback" and event["alias"] == f"{NAME}:latest"
    evidence = event["payload"]["ab"]
    assert evidence["clauses"][0]["holds"] is False and evidence["candidate"]["errors"] == 20
    assert evidence["control"]["requests"] == 120 and evidence["tests"][0]["metric"] == "error_rate"
    with RequestLog() as log:
        assert log.weight_history(NAME)[-1]["reason"] == f"ab decide: roll back {V2}"
    with pytest.raises(InputError, match="no candidate arm with a weight above 0"):
        decide(NAME, "error_rate <= control + 0.01", min_requests=100)


def test_a_candidate_that_holds_is_promoted_through_the_lifecycle_and_takes_all_traffic(tiny_arms):
    from localserve.ollama.client import OllamaServer

    save_experiment(tiny_arms)
    log_rows(rows(V1, 110, errors=3, feedback=0.6), rows(V2, 105, errors=0, feedback=0.9, seed=1))
    verdict = decide(NAME, "error_rate <= control and feedback >= control", min_requests=100)
    assert verdict.action == "promote", verdict.reasons
    server = OllamaServer(tiny_arms)
    assert server.manifest_digest(f"{NAME}:latest") == server.manifest_digest(V2)
    assert ex.load(NAME).weights() == {V1: 0.0, V2: 100.0}
    with VersionStore() as store:
        (event,) = [e for e in store.events(version=V2) if e["action"] == "promote"]
    assert event["alias"] == f"{NAME}:latest" and event["payload"]["ab"]["action"] == "promote"
    assert event["payload"]["ab"]["candidate"]["feedback"] == pytest.approx(round(0.9 * 105) / 105)


def test_too_few_requests_or_a_dry_run_change_nothing(tiny_arms):
    save_experiment(tiny_arms)
    log_rows(rows(V1, 40), rows(V2, 40, errors=20, seed=1))
    waiting = decide(NAME, "error_rate <= control", min_requests=50)
    assert waiting.action == "wait" and waiting.reasons == [f"{V2} has 40 requests, fewer than the 50 required",
                                                            f"{V1} has 40 requests, fewer than the 50 required"]
    dry = decide(NAME, "error_rate <= control", min_requests=10, apply=False)
    assert dry.action == "rollback" and dry.applied == []
    assert ex.load(NAME).weights() == {V1: 90.0, V2: 10.0}
    with VersionStore() as store:
        assert store.events(version=V2) == []


def test_only_the_rows_since_the_experiment_started_count(tiny_arms):
    experiment = save_experiment(tiny_arms)
    log_rows(rows(V2, 200, errors=100, seed=1, start=experiment.started_at - 7200))  # an earlier experiment
    log_rows(rows(V1, 100), rows(V2, 100, seed=2))
    assert decide(NAME, "error_rate <= control", min_requests=100, apply=False).action == "promote"


def test_with_a_suite_the_gate_evaluates_both_versions_on_the_arms_server_and_decides_too(tiny_arms, tmp_path):
    from localserve.lifecycle.suites import load_suite
    from localserve.ollama.client import OllamaServer

    OllamaServer(tiny_arms).copy(V1, f"{NAME}:latest")  # the control is live
    suite = tmp_path / "suite.yaml"
    suite.write_text("prompts: ['{{q}}']\ntests:\n  - vars: {q: 'the quick brown fox'}\n"
                     "    assert: [{type: not-contains, value: zzzqqq}]\n")
    save_experiment(tiny_arms)
    log_rows(rows(V1, 30), rows(V2, 30, seed=1))
    verdict = decide(NAME, "error_rate <= control", min_requests=30, suite=load_suite(suite))
    assert verdict.action == "promote", verdict.reasons
    with VersionStore() as store:
        (event,) = [e for e in store.events(version=V2) if e["action"] == "promote"]
        evaluated = store.db.execute("SELECT target, passed, total FROM evaluations ORDER BY id").fetchall()
    assert [tuple(e) for e in evaluated] == [(V2, 1, 1), (f"{NAME}:latest (unrecorded)", 1, 1)]
    assert event["payload"]["suite"] == str(suite) and event["payload"]["decision"]["promote"]
    assert event["payload"]["ab"]["clauses"][0]["holds"] is True
