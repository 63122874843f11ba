"""ab decide judges a split it did not route: from LiteLLM's spend logs (rows as LiteLLM_SpendLogs stores them)
and from vLLM's /metrics (real scrapes of vLLM 0.32's CPU build, tests/data/vllm-metrics/) — the same
condition, the same tests, one line for what a source cannot measure."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clihelpers import assert_one_line_error, invoke
from localserve.errors import InputError
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.decide import decide
from localserve.router.sources import SpendLogs, VllmMetrics, binned_mann_whitney, make_source
from localserve.vllm.metrics import Histogram, MetricsError, read

NAME = "demo"
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"
SCRAPES = Path(__file__).parent / "data" / "vllm-metrics"


def save_experiment(arms=None) -> ex.Experiment:
    """demo: v1 the control (90), v2 the candidate (10), as `ab start` saves it; never started here."""
    arms = arms or [Arm(V1, 90, "openai", "http://127.0.0.1:8001", "demo-v1"),
                    Arm(V2, 10, "openai", "http://127.0.0.1:8002", "demo-v2")]
    experiment = ex.Experiment(NAME, arms, V1, "http://127.0.0.1:11434", 11435, time.time() - 3600)
    ex.save(experiment)
    return experiment


def _iso(at: float) -> str:
    """As LiteLLM's /spend/logs writes a time: ISO 8601, UTC, no zone."""
    return datetime.fromtimestamp(at, timezone.utc).replace(tzinfo=None).isoformat()


def spend_rows(version: str, n: int, *, latency: float, failures: int = 0, streamed: bool = True,
               model_id: str | None = None, seed: int = 0, start: float | None = None) -> list[dict]:
    """`n` LiteLLM_SpendLogs rows of one arm (its model_info.id is `version`, as `ab set --render` writes it)."""
    rng = random.Random(seed)
    start = start if start is not None else time.time() - 600
    rows = []
    for i in range(n):
        begin = start + i
        took = latency * rng.uniform(0.8, 1.2)
        failed = i < failures
        rows.append({
            "request_id": f"chatcmpl-{version}-{seed}-{i}", "call_type": "acompletion",
            "api_key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b", "spend": 0.0,
            "total_tokens": 0 if failed else 52, "prompt_tokens": 0 if failed else 20,
            "completion_tokens": 0 if failed else 32, "startTime": _iso(begin), "endTime": _iso(begin + took),
            "request_duration_ms": round(took * 1000),
            # streamed: the first chunk's time; otherwise LiteLLM stores the end time here
            "completionStartTime": _iso(begin + (took / 4 if streamed else took)),
            "model": f"hosted_vllm/{version.replace(':', '-')}", "model_id": model_id or version,
            "model_group": NAME, "custom_llm_provider": "hosted_vllm", "api_base": "http://127.0.0.1:8000/v1",
            "user": "", "end_user": f"user{i % 30}", "cache_hit": "False", "cache_key": "", "request_tags": [],
            "metadata": {"status": "failure" if failed else "success", "user_api_key_alias": None,
                         **({"error_information": {"error_code": "500", "error_class": "APIConnectionError",
                                                   "error_message": "litellm.APIConnectionError: Connection refused"}}
                            if failed else {})},
            "status": "failure" if failed else "success"})
    return rows


# --- LiteLLM's spend logs ---------------------------------------------------------------------------------

def test_a_litellm_split_is_judged_from_its_spend_logs(tmp_path):
    save_experiment()
    logs = tmp_path / "spend.json"
    logs.write_text(json.dumps(spend_rows(V1, 150, latency=0.4, failures=1)
                               + spend_rows(V2, 150, latency=0.8, failures=1, seed=1)))
    verdict = decide(NAME, "error_rate <= control + 0.01 and p95_latency <= 1.2 * control", min_requests=100,
                     apply=False, source=SpendLogs(logs))
    assert verdict.action == "rollback" and "p95_latency" in verdict.reasons[0]
    control, candidate = verdict.report.arm(V1), verdict.report.arm(V2)
    assert (control.requests, control.errors, candidate.requests, candidate.errors) == (150, 1, 150, 1)
    assert candidate.p50_latency == pytest.approx(0.8, rel=0.1) and control.p50_ttft == pytest.approx(0.1, rel=0.2)
    tests = {t.metric: t for t in verdict.report.tests[V2]}
    assert tests["p50_latency"].test == "mannwhitneyu" and tests["p50_latency"].p_value < 1e-10
    assert "runaway_rate" not in tests and candidate.runaway_rate is None  # spend logs keep no finish reason
    assert verdict.report.source == f"LiteLLM's spend logs {logs}"
    assert ex.load(NAME).weights() == {V1: 90.0, V2: 10.0}  # judged, not applied


def test_spend_logs_as_json_lines_or_the_v2_endpoints_pages_give_the_same_verdict(tmp_path):
    save_experiment()
    rows = spend_rows(V1, 120, latency=0.4) + spend_rows(V2, 120, latency=0.41, seed=1)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "page.json").write_text(json.dumps({"data": rows, "total": len(rows), "page": 1, "page_size": 500,
                                                    "total_pages": 1}))
    verdicts = [decide(NAME, "error_rate <= control + 0.01 and p95_latency <= 1.2 * control", min_requests=100,
                       apply=False, source=SpendLogs(tmp_path / f)) for f in ("rows.json", "rows.jsonl", "page.json")]
    assert {v.action for v in verdicts} == {"promote"}
    assert len({json.dumps([a.to_json() for a in v.report.arms]) for v in verdicts}) == 1


def test_failures_count_as_errors_and_only_a_streamed_answer_has_a_first_token(tmp_path):
    save_experiment()
    logs = tmp_path / "spend.json"
    logs.write_text(json.dumps(spend_rows(V1, 100, latency=0.4, streamed=False)
                               + spend_rows(V2, 100, latency=0.4, failures=25, seed=1)))
    verdict = decide(NAME, "error_rate <= control + 0.01", min_requests=50, apply=False, source=SpendLogs(logs))
    assert verdict.action == "rollback"
    assert verdict.report.arm(V2).errors == 25 and verdict.report.arm(V1).p50_ttft is None


def test_arms_without_their_version_as_model_id_are_named_by_their_model(tmp_path):
    """LiteLLM gives a deployment without model_info.id a generated id: --arm VERSION=MODEL names it (with or
    without the provider prefix)."""
    save_experiment()
    logs = tmp_path / "spend.json"
    logs.write_text(json.dumps(spend_rows(V1, 110, latency=0.4, model_id="6f2b0c1e")
                               + spend_rows(V2, 110, latency=0.4, model_id="9d41aa07", seed=1)))
    with pytest.raises(InputError, match=r"none of the 220 rows .* is demo:v1 or demo:v2 .*6f2b0c1e"):
        decide(NAME, "error_rate <= control", apply=False, source=SpendLogs(logs))
    source = make_source(spend_logs=logs, arm_names=(f"{V1}=hosted_vllm/demo-v1", f"{V2}=demo-v2"))
    verdict = decide(NAME, "error_rate <= control", min_requests=100, apply=False, source=source)
    assert verdict.action == "promote" and [a.requests for a in verdict.report.arms] == [110, 110]


def test_a_metric_the_spend_logs_do_not_hold_is_refused_before_anything_is_read(tmp_path):
    save_experiment()
    with pytest.raises(InputError, match="empty_rate cannot be measured from LiteLLM's spend logs"):
        decide(NAME, "empty_rate <= control", apply=False, source=SpendLogs(tmp_path / "not-read.json"))


def test_drift_reads_the_live_versions_latency_tokens_and_errors_from_spend_logs(tmp_path):
    from localserve.router.drift import drift

    save_experiment()  # demo:v1 takes 90%: the live version
    now = time.time()
    logs = tmp_path / "spend.json"
    logs.write_text(json.dumps(spend_rows(V1, 80, latency=0.4, start=now - 7200)
                               + spend_rows(V1, 80, latency=0.9, failures=2, seed=1, start=now - 1800)
                               + spend_rows(V2, 80, latency=5.0, seed=2, start=now - 1800)))
    report, baseline, window = drift(NAME, baseline_s=3600 * 2, window_s=3600, source=SpendLogs(logs))
    assert report.version == V1 and (report.n_baseline, report.n_window) == (80, 80)
    checks = {c.metric: c for c in report.checks}
    assert set(checks) == {"completion_tokens", "latency_s", "error_rate"}  # what spend logs can tell
    assert checks["latency_s"].flagged and checks["latency_s"].window == pytest.approx(0.9, rel=0.1)
    assert not checks["error_rate"].flagged and report.source == f"LiteLLM's spend logs {logs}"


def test_drift_command_on_spend_logs_flags_and_draws(tmp_path):
    save_experiment()
    now = time.time()
    logs = tmp_path / "spend.jsonl"
    rows = spend_rows(V1, 60, latency=0.4, start=now - 7000) + spend_rows(V1, 60, latency=1.2, seed=1, start=now - 900)
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("drift", NAME, "--spend-logs", logs, "--baseline", "2h", "--window", "1h", "--check",
                    "--chart", tmp_path / "drift.png")
    assert result.exit_code == 1, result.output
    assert f"from LiteLLM's spend logs {logs}" in result.output.splitlines()[0]
    assert any(line.startswith("latency_s") and line.endswith("DRIFT") for line in result.output.splitlines())
    assert (tmp_path / "drift.png").read_bytes().startswith(b"\x89PNG")


# --- vLLM's /metrics, from real scrapes ---------------------------------------------------------------------

def scrape(name: str) -> str:
    return str(SCRAPES / name)


def saved_window() -> VllmMetrics:
    """smol (the base, demo:v1) and demo (the fine-tune, demo:v2), 12 requests each between the scrapes."""
    return VllmMetrics(now=(scrape("smol.after.prom"), scrape("demo.after.prom")),
                       before=(scrape("smol.before.prom"), scrape("demo.before.prom")),
                       names={V1: "smol", V2: "demo"})


def test_a_real_scrape_gives_each_served_models_finished_requests_and_histograms():
    after = read([scrape("smol.after.prom"), scrape("demo.after.prom")])
    smol, demo = after.model("smol"), after.model("demo")
    assert (smol.requests, smol.finished_with("stop"), smol.finished_with("length")) == (12, 6, 6)
    assert (demo.requests, demo.finished_with("stop"), demo.finished_with("length")) == (12, 12, 0)
    for served in (smol, demo):
        assert set(served.histograms) == {"e2e_latency", "ttft", "time_per_output_token", "generation_tokens"}
        assert all(h.count == 12 and h.bounds[-1] == float("inf") for h in served.histograms.values())
    assert read([scrape("smol.before.prom")]).model("smol").requests == 0


def test_replicas_add_up_and_a_count_that_went_down_is_refused():
    twice = read([scrape("demo.after.prom"), scrape("demo.after.prom")]).model("demo")
    assert twice.requests == 24 and twice.histograms["e2e_latency"].count == 24
    with pytest.raises(MetricsError, match="counts of demo went down .*a server restarted"):
        read([scrape("demo.before.prom")]).minus(read([scrape("demo.after.prom")]))
    with pytest.raises(MetricsError, match="smol is in the earlier snapshot and not in the later one"):
        read([scrape("demo.after.prom")]).minus(read([scrape("smol.before.prom"), scrape("demo.before.prom")]))


def test_the_verdict_from_saved_scrapes_counts_the_window_with_vllms_own_finish_reasons():
    save_experiment()
    verdict = decide(NAME, "error_rate <= control + 0.01 and runaway_rate <= control", min_requests=12,
                     apply=False, source=saved_window())
    assert verdict.action == "promote"
    control, candidate = verdict.report.arm(V1), verdict.report.arm(V2)
    assert (control.runaway_rate, candidate.runaway_rate) == (0.5, 0.0)
    tests = {t.metric: t for t in verdict.report.tests[V2]}
    assert tests["runaway_rate"].p_value == pytest.approx(0.0137, abs=1e-4)  # Fisher on 0/12 against 6/12
    assert control.p50_latency == pytest.approx(1.0833, abs=1e-4)  # histogram_quantile on vLLM's buckets
    assert decide(NAME, "runaway_rate <= control - 0.6", min_requests=12, apply=False,
                  source=saved_window()).action == "rollback"


def test_ab_decide_reads_saved_scrapes_and_names_where_it_measured():
    save_experiment()
    result = invoke("ab", "decide", NAME, "--success", "error_rate <= control + 0.01 and runaway_rate <= control",
                    "--min-requests", "12", "--dry-run", "--arm", f"{V1}=smol", "--arm", f"{V2}=demo",
                    "--metrics", scrape("smol.after.prom"), "--metrics", scrape("demo.after.prom"),
                    "--since-scrape", scrape("smol.before.prom"), "--since-scrape", scrape("demo.before.prom"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{NAME}: promote {V2} [dry run]"
    assert lines[1] == f"  measured from vLLM's metrics at {scrape('smol.after.prom')}, {scrape('demo.after.prom')}"
    assert lines[2].startswith("  error_rate <= control + 0.01 holds")


def test_a_served_name_missing_from_the_metrics_or_a_metric_vllm_lacks_is_one_line():
    save_experiment()  # the arms' own models are demo-v1 and demo-v2: no such served names in the scrapes
    base = ["ab", "decide", NAME, "--metrics", scrape("smol.after.prom"), "--metrics", scrape("demo.after.prom")]
    assert_one_line_error(invoke(*base, "--success", "error_rate <= control"), "demo-v1", "demo, smol")
    assert_one_line_error(invoke(*base, "--success", "empty_rate <= control"),
                          "empty_rate cannot be measured from vLLM's metrics")


def test_a_vllm_histogram_gives_prometheus_quantiles():
    h = Histogram((0.1, 0.5, 1.0, float("inf")), (10, 30, 40, 40), 15.0)
    assert h.count == 40 and h.counts() == [10, 20, 10, 0]
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)  # histogram_quantile's interpolation
    assert h.quantile(0.25) == pytest.approx(0.1)
    assert Histogram((1.0, float("inf")), (0, 3)).quantile(0.9) == 1.0  # in +Inf: the largest finite bound
    assert Histogram((1.0, float("inf")), (0, 0)).quantile(0.5) is None


def test_binned_mann_whitney_tells_shifted_histograms_apart_and_not_equal_ones():
    fast = Histogram((0.1, 0.2, 0.5, 1.0, float("inf")), (60, 100, 100, 100, 100))
    slow = Histogram((0.1, 0.2, 0.5, 1.0, float("inf")), (0, 10, 60, 100, 100))
    assert binned_mann_whitney(fast, slow) < 1e-20
    assert binned_mann_whitney(fast, fast) == pytest.approx(1.0)
    assert binned_mann_whitney(fast, Histogram(fast.bounds, (0,) * 5)) is None


def test_a_bad_metrics_place_or_text_is_refused_in_one_line(tmp_path):
    from localserve.errors import LocalserveError
    from routerhelpers import free_port

    (tmp_path / "bad.prom").write_text('vllm:request_success_total{model_name="x" 1\n')
    nobody = f"http://127.0.0.1:{free_port()}"
    for place, needle in ((str(tmp_path / "none.prom"), "no metrics file"),
                          (str(tmp_path / "bad.prom"), "is not Prometheus metrics text"),
                          (nobody, "not reachable")):
        with pytest.raises(LocalserveError, match=needle) as e:
            VllmMetrics((place,)).snapshots()
        assert "\n" not in str(e.value)
    assert e.value.hint.startswith(f"check --metrics {nobody}")


# --- the command ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--metrics", "a.prom", "--spend-logs", "s.json"], "name two sources of the same traffic"),
    (["--since-scrape", "a.prom"], "add --metrics URL"),
    (["--over", "10m"], "add --metrics URL"),
    (["--arm", f"{V1}=demo-v1"], "add --metrics URL or --spend-logs FILE"),
    (["--metrics", "a.prom", "--arm", "demo-v1"], "is not VERSION=MODEL"),
    (["--metrics", "a.prom", "--since-scrape", "b.prom", "--over", "1m"], "both set the window"),
    (["--metrics", "a.prom", "--over", "soon"], "is not a duration"),
    (["--metrics", "a.prom", "--auto", "5"], "--auto counts the requests of the local router"),
])
def test_ab_decide_refuses_sources_it_cannot_combine_in_one_line(args, needle):
    save_experiment()
    assert_one_line_error(invoke("ab", "decide", NAME, "--success", "error_rate <= control", *args), needle)


def test_ab_decide_names_an_arm_the_experiment_lacks(tmp_path):
    save_experiment()
    logs = tmp_path / "spend.json"
    logs.write_text("[]")
    result = invoke("ab", "decide", NAME, "--success", "error_rate <= control", "--spend-logs", logs,
                    "--arm", f"{NAME}:v9=demo-v9")
    assert_one_line_error(result, f"{NAME}:v9")
