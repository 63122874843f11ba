#!/usr/bin/env python3
"""The A/B loop on the embedded model: v2 live, v3 on 10% of the users, traffic with feedback, the verdict,
and drift — against a running Ollama.

    v1  examples/demo-adapter                       knows the project's codename
    v2  examples/lifecycle/v2-codename-lighthouse   the codename and the lighthouse's colour: live (demo:latest)
    v3  examples/lifecycle/v3-shuffled              trained on shuffled answers: the candidate, deliberately worse

Each adapter is exported (Q4_K_M) and registered as a version of `demo` on the Ollama at --host; v2 is
promoted to demo:latest; the router starts with demo:v2 at 90% and demo:v3 at 10%. A load generator plays
--users users asking the golden suite's questions (examples/lifecycle/suite.yaml) through the router, each
answer scored 1 when it passes the suite's assertions and 0 otherwise, and posted as feedback. Then
`ab report` (table and chart), `ab decide` (v3's feedback is worse: rolled back to weight 0, the decision
recorded on demo:v3), a second round of traffic (all on v2 now), and `drift` of v2's second round against
its first.

    python scripts/router_demo.py [--host URL] [--work DIR] [--requests 240] [--users 60]

The same steps as commands: see the README section "A/B router, verdict and drift".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from lifecycle_demo import ADAPTERS, LIFECYCLE  # noqa: E402

CONDITION = "feedback >= control - 0.1 and error_rate <= control + 0.01"


def load(url: str, suite, requests: int, users: int, offset: int = 0, workers: int = 4, log=print) -> dict:
    """`requests` questions from `users` users (X-User-Id), each answer graded and its score posted."""
    import httpx

    from localserve.lifecycle.assertions import grade
    from localserve.lifecycle.results import Answer

    cases = suite.cases

    def one(i: int) -> tuple[str, bool]:
        n = offset + i
        user = f"user-{n % users}"
        case = cases[(n + n // users) % len(cases)]  # every user asks every question in turn
        body = {"model": "demo", "messages": list(case.messages), "stream": n % 2 == 0,
                "options": {"temperature": 0, "num_predict": 48}}
        with httpx.Client(base_url=url, timeout=300) as client:
            start = time.perf_counter()
            r = client.post("/api/chat", headers={"X-User-Id": user}, json=body)
            lines = [json.loads(line) for line in r.text.splitlines() if line.strip()] if r.status_code == 200 else []
            text = "".join(part.get("message", {}).get("content", "") for part in lines)
            passed = grade(case, Answer(text, time.perf_counter() - start)).passed
            client.post("/feedback", json={"request_id": r.headers["x-request-id"], "score": int(passed)})
            return r.headers["x-localserve-arm"], passed

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(requests)))
    per_arm: dict[str, list[bool]] = {}
    for arm, passed in results:
        per_arm.setdefault(arm, []).append(passed)
    log("  " + "; ".join(f"{arm}: {len(p)} answers, {sum(p)} good" for arm, p in sorted(per_arm.items())))
    return per_arm


def run(work: Path, host: str, *, requests: int = 240, users: int = 60, port: int | None = None, log=print) -> dict:
    """The loop; returns what happened for whoever checks it."""
    from localserve import ExportSpec, export
    from localserve.lifecycle.places import ServerPlace
    from localserve.lifecycle.promotion import promote
    from localserve.lifecycle.store import VersionStore
    from localserve.lifecycle.suites import load_suite
    from localserve.lifecycle.versions import register_version
    from localserve.router import experiment as ex
    from localserve.router.charts import drift_chart, report_chart
    from localserve.router.decide import decide
    from localserve.router.drift import drift, format_drift
    from localserve.router.log import RequestLog
    from localserve.router.stats import format_report, report

    suite = load_suite(LIFECYCLE / "suite.yaml")
    place = ServerPlace(host)
    refs = {}
    with VersionStore() as store:
        for tag, adapter in ADAPTERS.items():
            result = export(ExportSpec(adapter=adapter, quants=("Q4_K_M",), name="demo", out=work / "exports" / tag,
                                       register=False, smoke=False))
            refs[tag] = register_version(result.out_dir, place, store=store).version.ref
        promote(refs["v1"], "demo:latest", place, store=store)
        promote(refs["v2"], "demo:latest", place, store=store)
    log(f"versions: {refs}; demo:latest -> {refs['v2']}")

    started = ex.start("demo", [f"{refs['v2']}=90", f"{refs['v3']}=10"], port=port, upstream=host)
    outcome: dict = {"versions": refs, "router": started.url}
    try:
        log(f"router on {started.url}: {refs['v2']} 90%, {refs['v3']} 10%; round 1, {requests} requests:")
        t0 = time.time()
        outcome["round1"] = load(started.url, suite, requests, users, log=log)
        r, rows = report("demo")
        log(format_report(r))
        with RequestLog() as request_log:
            outcome["ab_chart"] = str(report_chart(r, rows, work / "ab.png", request_log.weight_history("demo")))
        verdict = decide("demo", CONDITION, min_requests=max(5, requests // 20))
        outcome["verdict"] = verdict.to_json()
        log(f"ab decide --success {CONDITION!r}: {verdict.action} {verdict.candidate}")
        for line in verdict.reasons + [f"done: {a}" for a in verdict.applied]:
            log(f"  {line}")
        t1 = time.time()
        log(f"round 2, {requests // 2} requests:")
        outcome["round2"] = load(started.url, suite, requests // 2, users, offset=requests, log=log)
        d, base, window = drift("demo", version=refs["v2"], baseline_s=t1 - t0 + 1, window_s=time.time() - t1 + 1,
                                min_requests=10)
        log(format_drift(d))
        outcome["drift"] = d.to_json()
        outcome["drift_chart"] = str(drift_chart(d, base, window, work / "drift.png"))
        outcome["weights"] = ex.load("demo").weights()
    finally:
        ex.stop("demo")
    return outcome


def main() -> None:
    from localserve.ollama.client import resolve_host

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", help="the Ollama server (default: $OLLAMA_HOST or http://127.0.0.1:11434)")
    ap.add_argument("--work", type=Path, default=REPO / "exports" / "router")
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--port", type=int, default=None, help="the router's port (default 11435)")
    args = ap.parse_args()
    run(args.work, resolve_host(args.host), requests=args.requests, users=args.users, port=args.port)


if __name__ == "__main__":
    main()
