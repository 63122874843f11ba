"""Where `ab decide` and `drift` read each arm's traffic: the local router's log (the default), what vLLM
publishes on /metrics, or LiteLLM's spend logs — so a split done by a Gateway API route or by LiteLLM is
judged by the same condition, the same tests and the same promote / roll back. `drift --spend-logs` reads
the live version's rows from LiteLLM's spend logs the same way (completion tokens, latency, errors).

    source = VllmMetrics(now=("http://10.0.0.5:8000", "http://10.0.0.6:8000"), before=("before.prom",))
    verdict = decide("demo", "error_rate <= control + 0.01 and p95_latency <= 1.2 * control", source=source)

What each source measures per arm (a metric it lacks is refused in a condition, not waited for):

    metric          router log       vLLM /metrics                              LiteLLM spend logs
    requests        rows             finished requests                          rows
    error_rate      HTTP >= 400      finished_reason "error"                    status "failure"
    p50/p95_latency samples          vllm:e2e_request_latency_seconds           endTime - startTime
    p50/p95_ttft    samples          vllm:time_to_first_token_seconds           completionStartTime (streamed)
    tokens_per_s    samples          1 / median vllm:request_time_per_output_token_seconds   samples
    runaway_rate    finish "length"  finished_reason "length"                   -
    empty_rate      samples          -                                          -
    feedback        POST /feedback   -                                          -

The tests between candidate and control: a rate is counts, and Fisher's exact test on the 2x2 table is
as exact from vLLM's counters as from the log. A distribution from per-request samples (router log,
spend logs) gets Mann-Whitney U. A histogram keeps only how many requests fell in each bucket, so
there each request is its bucket's rank and Mann-Whitney U runs on these ordered categories with its
tie correction (`mannwhitneyu_binned`): the same test on data coarsened to the buckets both arms share —
it loses power inside a bucket, never validity. Quantiles from a histogram are Prometheus'
histogram_quantile (linear inside the bucket), as fine as vLLM's buckets (0.3, 0.5, 0.8, 1, 1.5, 2,
2.5, 5, 10 s... for the latency). vLLM's time per output token of a one-token answer is 0: such
answers count as the fastest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from ..errors import InputError
from .log import RequestRow
from .stats import METRICS, ArmStats, Report, Test, build_report, fisher

LOG_ONLY = frozenset({"empty_rate", "feedback"})
VLLM_METRICS = frozenset(METRICS) - LOG_ONLY
SPEND_LOG_METRICS = frozenset(METRICS) - LOG_ONLY - {"runaway_rate"}
# drift's checks (router.drift.traffic_checks) LiteLLM's spend logs can make: no answer text, no finish reason
SPEND_LOG_DRIFT_CHECKS = frozenset({"completion_tokens", "latency_s", "error_rate"})


class TrafficSource(Protocol):
    """Where an experiment's traffic is read from."""

    label: str  # for reports: where the numbers come from
    metrics: frozenset[str]  # the metrics of stats.METRICS it gives

    def report(self, experiment, since: float | None = None) -> Report:
        """Each arm's measurements and each candidate's tests against the control."""


def check_metrics(metrics: Sequence[str], source: TrafficSource) -> None:
    """InputError when a condition uses a metric `source` does not give."""
    missing = [m for m in dict.fromkeys(metrics) if m not in source.metrics]
    if missing:
        raise InputError(f"{', '.join(missing)} cannot be measured from {source.label}",
                         f"write the condition with {', '.join(m for m in METRICS if m in source.metrics)}")


def arm_names(experiment, names: Mapping[str, str]) -> dict[str, str]:
    """version -> the model name `names` gives it, else the arm's own model on an OpenAI-compatible server,
    else the version as a vLLM export names it (demo:v3 -> demo-v3, see router.render)."""
    unknown = sorted(set(names) - {a.version for a in experiment.arms})
    if unknown:
        experiment.arm(unknown[0])  # UnknownName listing the arms
    return {a.version: names.get(a.version) or (a.model if a.engine == "openai" else a.version.replace(":", "-"))
            for a in experiment.arms}


def parse_arm_names(pairs: Sequence[str]) -> dict[str, str]:
    """('demo:v2=demo-v2', ...) -> {'demo:v2': 'demo-v2'}."""
    out = {}
    for pair in pairs:
        version, sep, model = pair.partition("=")
        if not sep or not version.strip() or not model.strip():
            raise InputError(f"--arm {pair!r} is not VERSION=MODEL",
                             "write e.g. --arm demo:v2=demo-v2 (the name vLLM or LiteLLM knows the arm by)")
        out[version.strip()] = model.strip()
    return out


def make_source(*, metrics: Sequence[str] = (), since_scrape: Sequence[str] = (), over_s: float | None = None,
                spend_logs: Path | None = None, arm_names: Sequence[str] = ()) -> "TrafficSource | None":
    """The source the options name (--metrics / --since-scrape / --over, --spend-logs, --arm), or None: the
    router's log."""
    names = parse_arm_names(arm_names)
    if metrics and spend_logs:
        raise InputError("--metrics and --spend-logs name two sources of the same traffic", "give one of them")
    if (since_scrape or over_s is not None) and not metrics:
        raise InputError("--since-scrape and --over set the window of vLLM's metrics",
                         "add --metrics URL (the vLLM server, or each replica)")
    if names and not (metrics or spend_logs):
        raise InputError("--arm names an arm in vLLM's metrics or LiteLLM's spend logs",
                         "add --metrics URL or --spend-logs FILE")
    if metrics:
        return VllmMetrics(tuple(metrics), tuple(since_scrape), over_s, names)
    if spend_logs is not None:
        return SpendLogs(spend_logs, names)
    return None


@dataclass
class RouterLog:
    """The local router's request log (router.log): every request, as routed."""

    label: str = "the router's log"
    metrics: frozenset[str] = frozenset(METRICS)

    def report(self, experiment, since: float | None = None) -> Report:
        from .stats import report

        return report(experiment.name, since=since)[0]


# --- vLLM's /metrics ---------------------------------------------------------------------------------------

@dataclass
class VllmMetrics:
    """Servers' /metrics (URLs) or saved scrapes (files), summed per served model. The window is the
    traffic since `before` (scrapes saved earlier), or over `over_s` seconds (scraped twice), else
    everything since the servers started. `names`: version -> served model name (see `arm_names`)."""

    now: tuple[str, ...]
    before: tuple[str, ...] = ()
    over_s: float | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    metrics: frozenset[str] = VLLM_METRICS

    def __post_init__(self):
        if not self.now:
            raise InputError("no vLLM server to read metrics from", "give --metrics URL (repeat it for replicas)")
        if self.before and self.over_s is not None:
            raise InputError("--since-scrape and --over both set the window", "give one of them")
        self.label = f"vLLM's metrics at {', '.join(self.now)}"

    def snapshots(self):
        """(the snapshot at the window's start or None, the window's traffic, start time, end time)."""
        from ..vllm.metrics import read

        if self.over_s is not None:
            first, start = read(self.now), time.time()
            time.sleep(self.over_s)
            return first, read(self.now).minus(first), start, time.time()
        now = read(self.now)
        if not self.before:
            return None, now, 0.0, time.time()
        first = read(self.before)
        start = min((Path(p).stat().st_mtime for p in self.before if Path(p).is_file()), default=0.0)
        return first, now.minus(first), start, time.time()

    def report(self, experiment, since: float | None = None) -> Report:
        _, window, start, end = self.snapshots()
        names = arm_names(experiment, self.names)
        traffic = {v: window.model(m) for v, m in names.items()}
        weights = experiment.weights()
        stats = {v: vllm_arm_stats(v, t, weights.get(v)) for v, t in traffic.items()}
        control = experiment.control
        tests = {v: vllm_tests(traffic[v], traffic[control], stats[v], stats[control])
                 for v in traffic if v != control}
        return Report(experiment.name, start, end, control, tuple(stats.values()), tests, self.label)


def vllm_arm_stats(version: str, traffic, weight: float | None = None) -> ArmStats:
    """An arm's stats from one served model's counters and histograms (vllm.metrics.ModelTraffic)."""
    h = traffic.histograms
    n, errors, runaways = traffic.requests, traffic.finished_with("error"), traffic.finished_with("length")
    ok = n - errors

    def q(key, p):
        return h[key].quantile(p) if key in h else None

    per_token = q("time_per_output_token", 0.5)
    return ArmStats(version, weight, n, errors, errors / n if n else None, q("e2e_latency", 0.5),
                    q("e2e_latency", 0.95), q("ttft", 0.5), q("ttft", 0.95),
                    1.0 / per_token if per_token else None, runaways, runaways / ok if ok else None, 0, None,
                    None, 0)


def binned_mann_whitney(a, b) -> float | None:
    """Mann-Whitney U (two-sided) on two histograms (vllm.metrics.Histogram): each observation is the rank
    of its bucket among the bounds both share; ties corrected, asymptotic."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    if a is None or b is None:
        return None
    bounds = tuple(sorted(set(a.bounds) & set(b.bounds)))
    counts = [np.rint(h.at(bounds).counts()).astype(np.int64).clip(min=0) for h in (a, b)]
    if not all(c.sum() for c in counts):
        return None
    x, y = (np.repeat(np.arange(len(bounds), dtype=np.int32), c) for c in counts)
    if len(set(np.unique(x)) | set(np.unique(y))) == 1:
        return 1.0  # every request in one bucket: nothing to tell apart (scipy would divide by zero)
    return float(mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue)


def vllm_tests(cand, ctrl, sc: ArmStats, sk: ArmStats) -> tuple[Test, ...]:
    hc, hk = cand.histograms, ctrl.histograms
    return (Test("error_rate", "fisher", fisher(sc.errors, sc.requests, sk.errors, sk.requests), sc.error_rate,
                 sk.error_rate),
            Test("runaway_rate", "fisher", fisher(sc.runaways, sc.requests - sc.errors, sk.runaways,
                                                  sk.requests - sk.errors), sc.runaway_rate, sk.runaway_rate),
            Test("p50_latency", "mannwhitneyu_binned", binned_mann_whitney(hc.get("e2e_latency"),
                                                                           hk.get("e2e_latency")),
                 sc.p50_latency, sk.p50_latency),
            Test("p50_ttft", "mannwhitneyu_binned", binned_mann_whitney(hc.get("ttft"), hk.get("ttft")),
                 sc.p50_ttft, sk.p50_ttft),
            Test("tokens_per_s", "mannwhitneyu_binned",
                 binned_mann_whitney(hc.get("time_per_output_token"), hk.get("time_per_output_token")),
                 sc.tokens_per_s, sk.tokens_per_s))


# --- LiteLLM's spend logs ---------------------------------------------------------------------------------

@dataclass
class SpendLogs:
    """LiteLLM's spend logs exported to a file: JSON (a list of rows, or /spend/logs/v2's {"data": [...]})
    or JSON Lines, each row as LiteLLM_SpendLogs has it (request_id, model, model_id, model_group,
    startTime, endTime, completionStartTime, prompt_tokens, completion_tokens, status, metadata...).

    A row belongs to the arm whose version is its model_id (`ab set --render` writes each arm's
    model_info.id as its version), or that `names` maps to its model_id or model (with or without the
    provider prefix, hosted_vllm/demo-v2 or demo-v2)."""

    path: Path
    names: Mapping[str, str] = field(default_factory=dict)
    metrics: frozenset[str] = SPEND_LOG_METRICS
    drift_checks: frozenset[str] = SPEND_LOG_DRIFT_CHECKS

    def __post_init__(self):
        self.path = Path(self.path)
        self.label = f"LiteLLM's spend logs {self.path}"

    def rows(self, experiment) -> list[RequestRow]:
        """The rows of the experiment's arms as the router would have logged them."""
        unknown = sorted(set(self.names) - {a.version for a in experiment.arms})
        if unknown:
            experiment.arm(unknown[0])  # UnknownName listing the arms
        return self.rows_of(experiment.name, [a.version for a in experiment.arms])

    def rows_of(self, name: str, versions: Sequence[str]) -> list[RequestRow]:
        """The rows of `versions` (of the model `name`), oldest first; InputError when the file has rows and
        none is one of them."""
        by_name = {v: v for v in versions} | {m: v for v, m in self.names.items() if v in versions}
        raw = read_spend_logs(self.path)
        out, seen = [], set()
        for i, row in enumerate(raw):
            keys = [str(row.get("model_id") or ""), str(row.get("model") or "")]
            keys.append(keys[1].split("/", 1)[1] if "/" in keys[1] else "")
            version = next((by_name[k] for k in keys if k in by_name), None)
            seen.update(k for k in keys[:2] if k)
            if version is not None:
                out.append(spend_row(row, name, version, f"{self.path} row {i + 1}"))
        if raw and not out:
            raise InputError(f"none of the {len(raw)} rows of {self.path} is {' or '.join(versions)} (their "
                             f"model_id / model: {', '.join(sorted(seen)[:6])})",
                             f"map each version to its name there: --arm {versions[0]}=MODEL")
        return sorted(out, key=lambda r: r.at)

    def report(self, experiment, since: float | None = None) -> Report:
        since = experiment.started_at if since is None else since
        rows = [r for r in self.rows(experiment) if r.at >= since]
        report = build_report(experiment.name, experiment.control, [a.version for a in experiment.arms], rows,
                              weights=experiment.weights(), since=since)
        return keep_metrics(report, self.metrics, self.label)


def keep_metrics(report: Report, metrics: frozenset[str], label: str) -> Report:
    """The report with what `metrics` lacks unknown (None) rather than counted from empty fields."""
    blank = {"runaway_rate": {"runaway_rate": None, "runaways": 0}, "empty_rate": {"empty_rate": None, "empties": 0},
             "feedback": {"feedback": None, "feedback_n": 0}}
    changes = {k: v for metric, fields in blank.items() if metric not in metrics for k, v in fields.items()}
    arms = tuple(replace(a, **changes) for a in report.arms)
    tests = {c: tuple(t for t in ts if t.metric in metrics) for c, ts in report.tests.items()}
    return replace(report, arms=arms, tests=tests, source=label)


def read_spend_logs(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"no spend logs file {path}", "export LiteLLM's /spend/logs answer (JSON or JSON Lines) "
                                                        "to a file and pass it")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if data is None:  # JSON Lines
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except ValueError as e:
                    raise InputError(f"{path} line {n} is not JSON ({e.msg})",
                                     "give LiteLLM's spend logs as one JSON document or one row per line") from None
    if isinstance(data, dict):
        data = data.get("data", data.get("logs"))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path} holds no list of spend log rows",
                         "give LiteLLM's /spend/logs answer: a JSON list of rows (or {\"data\": [...]}), or JSON Lines")
    return data


def _time(value, where: str, name: str) -> float | None:
    """A LiteLLM time: ISO 8601 (UTC when it names no zone, as LiteLLM's database stores it) or epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not a time",
                         "give LiteLLM's rows as exported (ISO 8601 times or epoch seconds)") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def spend_row(row: Mapping, experiment: str, arm: str, where: str) -> RequestRow:
    """One LiteLLM_SpendLogs row as a request of the router's log."""
    start, end = _time(row.get("startTime"), where, "startTime"), _time(row.get("endTime"), where, "endTime")
    if start is None or end is None:
        raise InputError(f"{where} has no startTime or endTime", "give LiteLLM's rows as exported")
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {}
    status = str(row.get("status") or metadata.get("status") or "success").lower()
    failed = status not in ("success", "200")
    # LiteLLM sets completionStartTime to endTime for a request that was not streamed: a first token only
    # when it came before the end
    first = _time(row.get("completionStartTime"), where, "completionStartTime")
    ttft = first - start if first is not None and start <= first < end else None
    duration = row.get("request_duration_ms")
    latency = float(duration) / 1000 if isinstance(duration, (int, float)) else end - start
    error = None
    if failed:
        info = metadata.get("error_information") if isinstance(metadata, dict) else None
        error = str((info or {}).get("error_message") or "LiteLLM logged the request as failed")[:300]
    return RequestRow(str(row.get("request_id") or where), experiment, start, str(row.get("call_type") or ""), arm,
                      str(row.get("end_user") or row.get("user") or ""), ttft is not None,
                      status=500 if failed else 200, latency_s=latency, ttft_s=ttft,
                      prompt_tokens=_int(row.get("prompt_tokens")), completion_tokens=_int(row.get("completion_tokens")),
                      error=error)


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None
