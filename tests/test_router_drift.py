"""Drift on synthetic logs with a known answer: answers that got shorter and more often cut off are flagged
(KS, Fisher), the same traffic is not; the golden suite's runs over time are read from the version store and
a case that flipped on the live version is flagged; the command prints it, charts it, and --check fails."""

from __future__ import annotations

import json
import random
import time

import pytest

from clihelpers import invoke
from localserve.lifecycle.results import Answer, AssertionResult, CaseResult, EvalRun
from localserve.lifecycle.store import VersionStore
from localserve.lineage import read_record
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.drift import drift, parse_duration
from localserve.router.log import RequestLog, RequestRow

NAME = "drifty"
LIVE, OTHER = f"{NAME}:v2", f"{NAME}:v1"
DAY = 86400.0
PNG = b"\x89PNG\r\n\x1a\n"


def traffic(arm: str, n: int, start: float, span: float, *, chars: float, runaway: float,
            seed: int) -> list[RequestRow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = max(0, int(rng.gauss(chars, chars / 5)))
        out.append(RequestRow(f"{arm}-{seed}-{i}", NAME, start + span * i / n, "/api/chat", arm, f"u{i % 30}", True,
                              status=200, latency_s=rng.uniform(0.2, 0.3), ttft_s=0.05, prompt_tokens=20,
                              completion_tokens=max(1, length // 4),
                              finish_reason="length" if rng.random() < runaway else "stop", response_chars=length))
    return out


@pytest.fixture
def logged():
    """A week of baseline and a day of recent traffic on the live arm (and some on the other)."""
    now = time.time()
    ex.save(ex.Experiment(NAME, [Arm(OTHER, 0, "ollama", "http://127.0.0.1:9", OTHER),
                                 Arm(LIVE, 100, "ollama", "http://127.0.0.1:9", LIVE)], OTHER, "http://127.0.0.1:9",
                          1, now - 10 * DAY))
    with RequestLog() as log:
        log.add_many(traffic(LIVE, 300, now - 8 * DAY, 7 * DAY, chars=400, runaway=0.02, seed=1))
        log.add_many(traffic(OTHER, 100, now - 8 * DAY, 7 * DAY, chars=50, runaway=0.5, seed=2))
    return now


def test_durations():
    assert parse_duration("7d") == 7 * DAY and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    for bad in ("", "7", "d", "-1d", "0h", "3x"):
        with pytest.raises(Exception, match="is not a duration"):
            parse_duration(bad)


def test_the_same_traffic_does_not_drift(logged):
    with RequestLog() as log:
        log.add_many(traffic(LIVE, 60, logged - DAY, DAY - 1, chars=400, runaway=0.02, seed=3))
    report, baseline, window = drift(NAME, now=logged)
    assert report.version == LIVE and (report.n_baseline, report.n_window) == (300, 60) == (len(baseline), len(window))
    assert not report.flagged, [c for c in report.checks if c.flagged]
    assert all(r.arm == LIVE for r in baseline + window)


def test_shorter_answers_cut_off_more_often_are_flagged(logged):
    with RequestLog() as log:
        log.add_many(traffic(LIVE, 60, logged - DAY, DAY - 1, chars=250, runaway=0.3, seed=4))
    report, _, _ = drift(NAME, now=logged)
    flagged = {c.metric for c in report.checks if c.flagged}
    assert {"response_chars", "completion_tokens", "runaway_rate"} <= flagged
    assert "latency_s" not in flagged and "error_rate" not in flagged
    chars = next(c for c in report.checks if c.metric == "response_chars")
    assert chars.test == "ks" and chars.p_value < 1e-6 and chars.window < chars.baseline
    few, _, _ = drift(NAME, now=logged, min_requests=61)  # too few recent requests to flag anything
    assert not few.flagged


def test_the_golden_suite_over_time_and_a_flipped_case_on_the_live_version(logged, tiny_export, tmp_path):
    record = read_record(tiny_export)

    def run(passes: dict[str, bool]) -> EvalRun:
        cases = tuple(CaseResult(case, Answer("x", 0.1), (AssertionResult("equals", ok, float(ok), "r"),))
                      for case, ok in passes.items())
        return EvalRun("suite.yaml", "0" * 64, LIVE, {}, cases, "2026-01-01T00:00:00")

    with VersionStore() as store:
        v1, _ = store.add_version(NAME, record, tiny_export)
        v2, _ = store.add_version(NAME, record.replace(artifacts=record.artifacts[:1]), tiny_export)
        assert (v1.ref, v2.ref) == (OTHER, LIVE)
        store.add_evaluation(run({"codename": True, "lighthouse": False}), v1)
        store.add_evaluation(run({"codename": True, "lighthouse": True}), v2)
        store.add_evaluation(run({"codename": True, "lighthouse": True}), v2)
    report, _, _ = drift(NAME, now=logged)
    assert [(e.version, e.passed) for e in report.evals] == [(OTHER, 1), (LIVE, 2), (LIVE, 2)]
    assert [(e.broken, e.flagged) for e in report.eval_changes] == [((), False)]

    with VersionStore() as store:
        store.add_evaluation(run({"codename": False, "lighthouse": True}), v2)
    changed = drift(NAME, now=logged)[0]
    assert [(e.broken, e.fixed, e.flagged) for e in changed.eval_changes] == [(("codename",), (), True)]
    assert changed.flagged

    result = invoke("drift", NAME, "--chart", tmp_path / "drift.png", "--check")
    assert result.exit_code == 1 and "codename" in result.output and "CHANGED" in result.output
    assert (tmp_path / "drift.png").read_bytes()[:8] == PNG
    data = json.loads(invoke("drift", NAME, "--json").stdout)
    assert data["version"] == LIVE and data["n_baseline"] > 290 and data["flagged"] is True  # now is later


def test_without_an_experiment_the_live_version_is_the_last_promoted(logged):
    ex.experiment_path(NAME).unlink()
    with VersionStore() as store:
        store.add_event("http://127.0.0.1:11434", f"{NAME}:latest", "promote", OTHER)
    assert drift(NAME, now=logged)[0].version == OTHER
    assert drift(NAME, now=logged, version=LIVE)[0].version == LIVE
    with pytest.raises(Exception, match="no live version of nobody"):
        drift("nobody")
