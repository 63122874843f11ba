"""Drift of the live version: its recent traffic against a baseline window, and its golden suite over time.

    d = drift("demo", baseline_s=7 * 86400, window_s=86400)    # the last day against the 7 days before it

From the router's log, for the version that takes most of the traffic (or the one named): the
distributions of response length and completion tokens and of latency (two-sample Kolmogorov-Smirnov),
the shares of runaways (stopped by the token limit), empty answers and errors (Fisher's exact test),
and the feedback scores (Mann-Whitney U). A check is flagged when p < alpha and both windows have at
least `min_requests` requests.

From the version store, every recorded evaluation of the name's versions (`eval --record`, and the
gate's) as a time series; for the live version, each suite's latest run against its first: decoding
is greedy with a fixed seed, so the same model answers the same, and any case that flipped means
something changed under it (the model, the engine, the template) — flagged, with an exact McNemar p.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..errors import InputError
from .log import RequestLog, RequestRow

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'7d' -> 604800.0; units s, m, h, d, w."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"{text!r} is not a duration", "write a number and a unit: 90s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Check:
    metric: str
    test: str  # ks | fisher | mannwhitneyu
    baseline: float | None
    window: float | None
    p_value: float | None
    flagged: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalPoint:
    at: str
    version: str
    suite: str
    score: float
    passed: int
    total: int


@dataclass(frozen=True)
class EvalChange:
    suite: str
    first_at: str
    latest_at: str
    first_score: float
    latest_score: float
    broken: tuple[str, ...]  # passed at first, fail now
    fixed: tuple[str, ...]
    p_value: float
    flagged: bool


@dataclass
class DriftReport:
    name: str
    version: str
    baseline: tuple[float, float]
    window: tuple[float, float]
    n_baseline: int
    n_window: int
    alpha: float
    checks: list[Check]
    evals: list[EvalPoint] = field(default_factory=list)
    eval_changes: list[EvalChange] = field(default_factory=list)
    source: str = "the router's log"  # where the traffic was read (router.sources)

    @property
    def flagged(self) -> bool:
        return any(c.flagged for c in self.checks) or any(e.flagged for e in self.eval_changes)

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "baseline": list(self.baseline),
                "window": list(self.window), "n_baseline": self.n_baseline, "n_window": self.n_window,
                "alpha": self.alpha, "flagged": self.flagged, "checks": [c.to_json() for c in self.checks],
                "evals": [asdict(e) for e in self.evals], "eval_changes": [asdict(e) for e in self.eval_changes],
                "source": self.source}


def ks(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).pvalue) if len(a) and len(b) else None


def _median(values: Sequence[float]) -> float | None:
    import numpy as np

    return float(np.median(values)) if len(values) else None


def traffic_checks(baseline: Sequence[RequestRow], window: Sequence[RequestRow], alpha: float,
                   min_requests: int) -> list[Check]:
    from .stats import fisher, mann_whitney

    enough = len(baseline) >= min_requests and len(window) >= min_requests
    b_ok, w_ok = [r for r in baseline if not r.failed], [r for r in window if not r.failed]
    checks = []

    def add(metric, test, b_value, w_value, p):
        checks.append(Check(metric, test, b_value, w_value, p, bool(enough and p is not None and p < alpha)))

    for metric, get in (("response_chars", lambda r: r.response_chars),
                        ("completion_tokens", lambda r: r.completion_tokens), ("latency_s", lambda r: r.latency_s)):
        b = [get(r) for r in b_ok if get(r) is not None]
        w = [get(r) for r in w_ok if get(r) is not None]
        add(metric, "ks", _median(b), _median(w), ks(b, w))
    for metric, hit, b_pool, w_pool in (("runaway_rate", lambda r: r.finish_reason == "length", b_ok, w_ok),
                                        ("empty_rate", lambda r: not r.response_chars, b_ok, w_ok),
                                        ("error_rate", lambda r: r.failed, baseline, window)):
        bh, wh = sum(map(hit, b_pool)), sum(map(hit, w_pool))
        add(metric, "fisher", bh / len(b_pool) if b_pool else None, wh / len(w_pool) if w_pool else None,
            fisher(wh, len(w_pool), bh, len(b_pool)))
    b = [r.feedback for r in baseline if r.feedback is not None]
    w = [r.feedback for r in window if r.feedback is not None]
    add("feedback", "mannwhitneyu", sum(b) / len(b) if b else None, sum(w) / len(w) if w else None,
        mann_whitney(b, w))
    return checks


def eval_history(store, name: str, live: str, alpha: float) -> tuple[list[EvalPoint], list[EvalChange]]:
    from ..lifecycle.gate import mcnemar_exact

    points, live_runs = [], {}
    for v in store.versions(name):
        for e in store.evaluations(v):
            points.append(EvalPoint(e["at"], v.ref, e["suite"], e["score"], e["passed"], e["total"]))
            if v.ref == live:
                live_runs.setdefault(e["suite"], []).append(e)
    points.sort(key=lambda p: p.at)
    changes = []
    for suite, runs in live_runs.items():
        if len(runs) < 2:
            continue
        first, latest = runs[0], runs[-1]
        a = {c["case_id"]: c["passed"] for c in store.evaluation_run(first["id"]).get("cases", [])}
        b = {c["case_id"]: c["passed"] for c in store.evaluation_run(latest["id"]).get("cases", [])}
        broken = tuple(k for k in a if a[k] and k in b and not b[k])
        fixed = tuple(k for k in a if not a[k] and b.get(k))
        changes.append(EvalChange(suite, first["at"], latest["at"], first["score"], latest["score"], broken, fixed,
                                  mcnemar_exact(len(fixed), len(broken)), bool(broken or fixed)))
    return points, changes


def live_version(name: str, store=None) -> str:
    """The version taking most of the experiment's traffic, else the last one promoted to NAME:latest."""
    from . import experiment as ex

    try:
        exp = ex.load(name)
        return max(exp.arms, key=lambda a: a.weight).version
    except ex.NoExperiment:
        pass
    if store is not None:
        promoted = [e for e in store.events(alias=f"{name}:latest") if e["action"] == "promote"
                    and not e["rolled_back_at"]]
        if promoted:
            return promoted[-1]["version"]
    raise InputError(f"no live version of {name}: no experiment and no promotion of {name}:latest",
                     "name one with --version NAME:vN")


def drift(name: str, *, version: str | None = None, baseline_s: float = 7 * 86400, window_s: float = 86400,
          now: float | None = None, alpha: float = 0.01, min_requests: int = 30, log: RequestLog | None = None,
          store=None, source=None) -> tuple[DriftReport, list[RequestRow], list[RequestRow]]:
    """The drift report of `name`'s live version, and the baseline and window rows it compared.

    `source`: LiteLLM's spend logs (router.sources.SpendLogs) instead of the router's log; the checks that
    need what only the router logs (response length, empty answers, runaways, feedback) are left out."""
    from ..lifecycle.store import VersionStore, parse_version_ref

    if not 0 < alpha < 1:
        raise InputError(f"alpha {alpha} is not between 0 and 1", "e.g. --alpha 0.01")
    own_store, own_log = store is None, log is None
    store = store or VersionStore()
    log = log or RequestLog()
    try:
        if version:
            parse_version_ref(version)
        live = version or live_version(name, store)
        end = now if now is not None else time.time()
        w0 = end - window_s
        b0 = w0 - baseline_s
        if source is None:
            baseline = log.rows(name, since=b0, until=w0, arm=live)
            window = log.rows(name, since=w0, until=end, arm=live)
        else:
            rows = source.rows_of(name, [live])
            baseline = [r for r in rows if b0 <= r.at < w0]
            window = [r for r in rows if w0 <= r.at < end]
        checks = traffic_checks(baseline, window, alpha, min_requests)
        if source is not None:
            checks = [c for c in checks if c.metric in source.drift_checks]
        evals, changes = eval_history(store, name, live, alpha)
        report = DriftReport(name, live, (b0, w0), (w0, end), len(baseline), len(window), alpha, checks, evals,
                             changes, **({"source": source.label} if source is not None else {}))
        return report, baseline, window
    finally:
        if own_store:
            store.close()
        if own_log:
            log.close()


def format_drift(d: DriftReport) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3g}"

    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    lines = [f"{d.name}: live version {d.version}; baseline {stamp(d.baseline[0])} .. {stamp(d.baseline[1])} "
             f"({d.n_baseline} requests), window .. {stamp(d.window[1])} ({d.n_window} requests)"
             + ("" if d.source == DriftReport.source else f" from {d.source}"),
             f"{'check':<18} {'test':<13} {'baseline':>10} {'window':>10} {'p':>10}"]
    for c in d.checks:
        lines.append(f"{c.metric:<18} {c.test:<13} {fmt(c.baseline):>10} {fmt(c.window):>10} {fmt(c.p_value):>10}"
                     + ("  DRIFT" if c.flagged else ""))
    if d.evals:
        lines.append(f"golden suite runs ({len(d.evals)}):")
        for e in d.evals[-8:]:
            lines.append(f"  {e.at[:19]}  {e.version:<14} {e.passed}/{e.total} ({e.score:.3f})  {e.suite}")
    for e in d.eval_changes:
        lines.append(f"{e.suite} on {d.version}: {e.first_score:.3f} at {e.first_at[:19]} -> {e.latest_score:.3f} at "
                     f"{e.latest_at[:19]}; broken {', '.join(e.broken) or '-'}, fixed {', '.join(e.fixed) or '-'} "
                     f"(McNemar p = {e.p_value:.3g})" + ("  CHANGED" if e.flagged else ""))
    lines.append("drift flagged" if d.flagged else f"no drift at alpha {d.alpha:g}")
    return "\n".join(lines)
