"""The commands as a user types them: ab start, set, report (table, JSON, PNG), decide (once and --auto),
stop — and bad input, one clear line each."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from clihelpers import assert_one_line_error, invoke
from localserve.lifecycle.store import VersionStore
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.decide import decide_auto
from localserve.router.log import RequestLog
from routerhelpers import NAME, SHORT, V1, V2, free_port

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def stopped_at_the_end():
    yield
    for name in (NAME,):
        try:
            if ex.is_running(ex.load(name)):
                ex.stop(name)
        except ex.NoExperiment:
            pass


def traffic(url: str, users: int, per_user: int, good_arm: str) -> None:
    """Requests from `users` users; every answer of `good_arm` gets feedback 1, the others 0."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(users * per_user):
            r = client.post("/api/chat", headers={"X-User-Id": f"user-{i % users}"},
                            json={"model": NAME, "messages": [{"role": "user", "content": f"question {i}"}],
                                  "options": {"num_predict": 3},
                                  "stream": i % 2 == 0})
            assert r.status_code == 200
            score = 1 if r.headers["x-localserve-arm"] == good_arm else 0
            assert client.post("/feedback", json={"request_id": r.headers["x-request-id"], "score": score}).is_success


def test_start_report_decide_stop(tiny_arms, tmp_path, stopped_at_the_end):
    port = free_port()
    started = invoke("ab", "start", NAME, "--arm", f"{V1}=50", "--arm", f"{V2}=50", "--upstream", tiny_arms,
                     "--port", port)
    assert started.exit_code == 0, started.output
    assert f"router of {NAME} on http://127.0.0.1:{port}" in started.output and f"{V2}=50%" in started.output
    assert_one_line_error(invoke("ab", "start", NAME, "--arm", f"{V1}=1", "--upstream", tiny_arms),
                          f"the router of {NAME} already runs on http://127.0.0.1:{port}")

    traffic(f"http://127.0.0.1:{port}", users=8, per_user=2, good_arm=V2)
    table = invoke("ab", "report", NAME, "--chart", tmp_path / "ab.png")
    assert table.exit_code == 0, table.output
    assert f"{V2} against {V1}:" in table.output and "Fisher exact p =" in table.output
    assert (tmp_path / "ab.png").read_bytes()[:8] == PNG
    report = json.loads(invoke("ab", "report", NAME, "--json").stdout)
    arms = {a["version"]: a for a in report["arms"]}
    assert arms[V1]["requests"] + arms[V2]["requests"] == 16 and arms[V2]["feedback"] == 1.0
    assert arms[V1]["feedback"] == 0.0 and arms[V1]["feedback_n"] == arms[V1]["requests"]

    condition = "feedback >= control and error_rate <= control"
    dry = invoke("ab", "decide", NAME, "--success", condition, "--min-requests", 4, "--dry-run")
    assert dry.exit_code == 0 and f"{NAME}: promote {V2} [dry run]" in dry.output
    assert ex.load(NAME).weights() == {V1: 50.0, V2: 50.0}
    done = invoke("ab", "decide", NAME, "--success", condition, "--min-requests", 4, "--json")
    verdict = json.loads(done.stdout)
    assert verdict["action"] == "promote" and verdict["applied"][-1] == f"all traffic to {V2}"
    assert ex.load(NAME).weights() == {V1: 0.0, V2: 100.0}
    r = httpx.post(f"http://127.0.0.1:{port}/api/generate", headers={"X-User-Id": "anyone"},
                   json={"model": NAME, "prompt": "hi", "stream": False, "options": SHORT})
    assert r.headers["x-localserve-arm"] == V2
    with VersionStore() as store:
        assert [e["action"] for e in store.events(version=V2)] == ["promote"]

    stopped = invoke("ab", "stop", NAME)
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert_one_line_error(invoke("ab", "stop", NAME), f"the router of {NAME} is not running")


def test_decide_auto_judges_every_n_requests_until_a_verdict(tiny_arms, stopped_at_the_end):
    ex.start(NAME, [f"{V1}=50", f"{V2}=50"], port=free_port(), upstream=tiny_arms)
    verdicts = []
    judge = threading.Thread(target=decide_auto, args=(NAME, "feedback >= control"),
                             kwargs=dict(every=6, min_requests=5, poll_s=0.1, timeout_s=120,
                                         on_verdict=verdicts.append))
    judge.start()
    traffic(ex.load(NAME).url, users=8, per_user=3, good_arm=V1)  # v2 answers worse: rolled back
    judge.join(60)
    assert not judge.is_alive()
    assert [v.action for v in verdicts][-1] == "rollback" and all(v.action == "wait" for v in verdicts[:-1])
    assert ex.load(NAME).weights() == {V1: 50.0, V2: 0.0}
    with RequestLog() as log:
        assert log.weight_history(NAME)[-1]["reason"] == f"ab decide: roll back {V2}"


def test_bad_input_is_one_clear_line(tiny_arms):
    port = free_port()
    assert_one_line_error(invoke("ab", "start", "nothere", "--arm", "nothere:v1=1", "--upstream", tiny_arms,
                                 "--port", port), f"nothere:v1 is not registered on {tiny_arms}", "localserve register")
    assert_one_line_error(invoke("ab", "start", NAME, "--arm", f"{V1}=0", "--arm", f"{V2}=0", "--upstream", tiny_arms,
                                 "--port", port), "do not sum to a positive number")
    assert_one_line_error(invoke("ab", "start", NAME, "--arm", "other:v1=1", "--port", port),
                          f"arm other:v1 is not a version of {NAME}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert_one_line_error(invoke("ab", "start", NAME, "--arm", f"{V1}=1", "--upstream", tiny_arms, "--port", port),
                              f"port {port} on 127.0.0.1 is in use")
    assert_one_line_error(invoke("ab", "start", NAME, "--arm", f"{V1}=1", "--upstream", "http://127.0.0.1:9",
                                 "--port", port), "does not answer /api/tags")
    assert_one_line_error(invoke("ab", "start", NAME), f"no A/B experiment named {NAME!r}", "ab start")
    assert_one_line_error(invoke("ab", "report", "nope"), "no A/B experiment named 'nope'")
    assert_one_line_error(invoke("ab", "stop", "nope"), "no A/B experiment named 'nope'")
    ex.save(ex.Experiment(NAME, [Arm(V1, 1, "ollama", tiny_arms, V1), Arm(V2, 1, "ollama", tiny_arms, V2)], V1,
                          tiny_arms, port, 0.0))
    assert_one_line_error(invoke("ab", "decide", NAME, "--success", "latency < 1"), "unknown metric 'latency'")
    assert_one_line_error(invoke("ab", "decide", NAME, "--success", "feedback >= control", "--candidate", "tiny-ab:v7"),
                          "unknown arm 'tiny-ab:v7'")
    assert_one_line_error(invoke("ab", "decide", NAME, "--success", "feedback >= control", "--candidate", V1),
                          f"{V1} is the control")
    assert_one_line_error(invoke("drift", NAME, "--window", "3x"), "'3x' is not a duration")
    assert_one_line_error(invoke("drift", NAME, "--version", "tiny-ab-latest"), "is not a version")
