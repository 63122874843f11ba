"""Per-arm measurements from the request log, and the tests between each candidate and the control.

    r = report("demo")          # since the experiment started
    print(format_report(r))

Rates (errors, runaways = finish reason "length", empty answers) are compared with Fisher's exact
test on the 2x2 table of counts; latencies, time to first token, tokens/s and feedback scores with the
Mann-Whitney U test (two-sided; no assumption of normality, and latencies are far from normal).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .log import RequestLog, RequestRow

METRICS = {
    "requests": "requests",
    "error_rate": "share of requests that failed (HTTP >= 400 or an error in the stream)",
    "p50_latency": "median seconds from request to last byte",
    "p95_latency": "95th percentile of the latency",
    "p50_ttft": "median seconds to the first content (streamed requests)",
    "p95_ttft": "95th percentile of the time to first content",
    "tokens_per_s": "median completion tokens per second of generation",
    "runaway_rate": "share of answers stopped by the token limit (done_reason/finish_reason = length)",
    "empty_rate": "share of answers with no content",
    "feedback": "mean feedback score",
}
# which way is better, for reading a report (decisions use the --success expression)
HIGHER_IS_BETTER = {"tokens_per_s", "feedback"}


@dataclass(frozen=True)
class ArmStats:
    version: str
    weight: float | None
    requests: int
    errors: int
    error_rate: float | None
    p50_latency: float | None
    p95_latency: float | None
    p50_ttft: float | None
    p95_ttft: float | None
    tokens_per_s: float | None
    runaways: int
    runaway_rate: float | None
    empties: int
    empty_rate: float | None
    feedback: float | None
    feedback_n: int

    def metric(self, name: str) -> float | None:
        return float(self.requests) if name == "requests" else getattr(self, name)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Test:
    metric: str
    test: str  # fisher | mannwhitneyu | mannwhitneyu_binned (on histogram buckets, router.sources)
    p_value: float | None  # None: not enough data on one side
    candidate: float | None
    control: float | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    experiment: str
    since: float
    until: float
    control: str
    arms: tuple[ArmStats, ...]
    tests: dict[str, tuple[Test, ...]] = field(default_factory=dict)  # candidate -> tests against the control
    source: str = "the router's log"  # where the numbers come from (router.sources)

    def arm(self, version: str) -> ArmStats:
        return next(a for a in self.arms if a.version == version)

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "since": self.since, "until": self.until, "control": self.control,
                "arms": [a.to_json() for a in self.arms],
                "tests": {c: [t.to_json() for t in ts] for c, ts in self.tests.items()}, "source": self.source}


def percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def tokens_per_s(row: RequestRow) -> float | None:
    """Completion tokens over generation time: after the first content when streamed, else the whole request."""
    if not row.completion_tokens or row.failed:
        return None
    span = row.latency_s - (row.ttft_s or 0.0) if row.stream and row.ttft_s is not None else row.latency_s
    if row.stream and row.completion_tokens > 1:
        return (row.completion_tokens - 1) / span if span > 0 else None
    return row.completion_tokens / row.latency_s if row.latency_s > 0 else None


def arm_stats(version: str, rows: Sequence[RequestRow], weight: float | None = None) -> ArmStats:
    ok = [r for r in rows if not r.failed]
    latencies = [r.latency_s for r in ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    speeds = [s for s in (tokens_per_s(r) for r in ok) if s is not None]
    runaways = sum(r.finish_reason == "length" for r in ok)
    empties = sum(not r.response_chars for r in ok)
    scores = [r.feedback for r in rows if r.feedback is not None]
    n = len(rows)
    errors = n - len(ok)
    return ArmStats(version, weight, n, errors, errors / n if n else None, percentile(latencies, 50),
                    percentile(latencies, 95), percentile(ttfts, 50), percentile(ttfts, 95),
                    percentile(speeds, 50), runaways, runaways / len(ok) if ok else None, empties,
                    empties / len(ok) if ok else None, sum(scores) / len(scores) if scores else None, len(scores))


def fisher(a_hits: int, a_n: int, b_hits: int, b_n: int) -> float | None:
    from scipy.stats import fisher_exact

    if a_n == 0 or b_n == 0:
        return None
    return float(fisher_exact([[a_hits, a_n - a_hits], [b_hits, b_n - b_hits]]).pvalue)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import mannwhitneyu

    if not a or not b:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0  # every value the same: no difference to find (scipy would divide by zero)
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def compare(candidate: str, control: str, rows: dict[str, list[RequestRow]],
            stats: dict[str, ArmStats]) -> tuple[Test, ...]:
    cand, ctrl = rows[candidate], rows[control]
    c_ok, k_ok = [r for r in cand if not r.failed], [r for r in ctrl if not r.failed]
    sc, sk = stats[candidate], stats[control]
    out = [Test("error_rate", "fisher", fisher(sc.errors, sc.requests, sk.errors, sk.requests), sc.error_rate,
                sk.error_rate),
           Test("runaway_rate", "fisher", fisher(sc.runaways, len(c_ok), sk.runaways, len(k_ok)), sc.runaway_rate,
                sk.runaway_rate),
           Test("empty_rate", "fisher", fisher(sc.empties, len(c_ok), sk.empties, len(k_ok)), sc.empty_rate,
                sk.empty_rate),
           Test("p50_latency", "mannwhitneyu", mann_whitney([r.latency_s for r in c_ok], [r.latency_s for r in k_ok]),
                sc.p50_latency, sk.p50_latency),
           Test("p50_ttft", "mannwhitneyu", mann_whitney([r.ttft_s for r in c_ok if r.ttft_s is not None],
                                                         [r.ttft_s for r in k_ok if r.ttft_s is not None]),
                sc.p50_ttft, sk.p50_ttft),
           Test("tokens_per_s", "mannwhitneyu",
                mann_whitney([s for s in map(tokens_per_s, c_ok) if s is not None],
                             [s for s in map(tokens_per_s, k_ok) if s is not None]), sc.tokens_per_s, sk.tokens_per_s),
           Test("feedback", "mannwhitneyu", mann_whitney([r.feedback for r in cand if r.feedback is not None],
                                                         [r.feedback for r in ctrl if r.feedback is not None]),
                sc.feedback, sk.feedback)]
    return tuple(out)


def build_report(experiment: str, control: str, arms: Sequence[str], rows: Sequence[RequestRow], *,
                 weights: dict[str, float] | None = None, since: float = 0.0, until: float | None = None) -> Report:
    """The report of `rows` (one experiment's), per arm in the order of `arms` (arms found only in the log
    come after)."""
    versions = list(arms) + sorted({r.arm for r in rows} - set(arms))
    by_arm: dict[str, list[RequestRow]] = {v: [] for v in versions}
    for r in rows:
        by_arm[r.arm].append(r)
    stats = {v: arm_stats(v, by_arm[v], (weights or {}).get(v)) for v in versions}
    tests = {v: compare(v, control, by_arm, stats) for v in versions if v != control and control in by_arm}
    return Report(experiment, since, until if until is not None else time.time(), control,
                  tuple(stats[v] for v in versions), tests)


def report(name: str, *, since: float | None = None, log: RequestLog | None = None) -> tuple[Report, list[RequestRow]]:
    """The report of experiment `name` since it started (or since `since`), and the rows it is made of."""
    from .experiment import load

    experiment = load(name)
    since = experiment.started_at if since is None else since
    own = log is None
    log = log or RequestLog()
    try:
        rows = log.rows(experiment.name, since=since)
    finally:
        if own:
            log.close()
    return build_report(experiment.name, experiment.control, [a.version for a in experiment.arms], rows,
                        weights=experiment.weights(), since=since), rows


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "rate":
        return f"{value:.1%}"
    if kind == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    if kind == "p":
        return f"{value:.3g}"
    if kind == "1":
        return f"{value:.1f}"
    return f"{value:.2f}"


TEST_NAMES = {"fisher": "Fisher exact", "mannwhitneyu": "Mann-Whitney U",
              "mannwhitneyu_binned": "Mann-Whitney U on buckets"}


def format_report(r: Report) -> str:
    cols = [("arm", 14), ("weight", 7), ("requests", 9), ("errors", 8), ("p50 lat", 9), ("p95 lat", 9),
            ("p50 ttft", 9), ("p95 ttft", 9), ("tok/s", 7), ("runaway", 8), ("empty", 7), ("feedback", 12)]
    lines = [f"{r.experiment}: {sum(a.requests for a in r.arms)} requests, control {r.control}"
             + ("" if r.source == Report.source else f" (from {r.source})"),
             "  ".join(f"{h:<{w}}" for h, w in cols).rstrip()]
    total = sum(a.weight or 0 for a in r.arms)
    for a in r.arms:
        cells = [a.version, f"{(a.weight or 0) / total:.0%}" if total else "-", str(a.requests),
                 _fmt(a.error_rate, "rate"), _fmt(a.p50_latency, "s"), _fmt(a.p95_latency, "s"),
                 _fmt(a.p50_ttft, "s"), _fmt(a.p95_ttft, "s"), _fmt(a.tokens_per_s, "1"), _fmt(a.runaway_rate, "rate"),
                 _fmt(a.empty_rate, "rate"), f"{_fmt(a.feedback, '')} (n={a.feedback_n})"]
        lines.append("  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, cols)).rstrip())
    for candidate, tests in r.tests.items():
        lines.append(f"{candidate} against {r.control}:")
        for t in tests:
            kind = "rate" if t.metric.endswith("_rate") else "s" if "lat" in t.metric or "ttft" in t.metric else ""
            name = TEST_NAMES[t.test]
            lines.append(f"  {t.metric:<13} {_fmt(t.candidate, kind):>9} vs {_fmt(t.control, kind):>9}   "
                         f"{name} p = {_fmt(t.p_value, 'p')}")
    return "\n".join(lines)
