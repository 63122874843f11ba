"""What vLLM publishes on /metrics, per served model: finished requests by reason, and the per-request
histograms of latency, time to first token, time per output token and generated tokens.

    now = read(["http://10.0.0.5:8000", "http://10.0.0.6:8000"])       # summed over both servers
    window = now.minus(read(["before.prom"]))                           # `curl URL/metrics > before.prom` earlier
    window.model("demo-v3").histograms["e2e_latency"].quantile(0.95)

Every series carries vLLM's `model_name` label: the server's first --served-model-name. vLLM 0.32
labels nothing per LoRA adapter — a request to an adapter counts under its base's name, and only the
gauge vllm:lora_requests_info lists the adapters running and waiting — so what can be told apart here is
a served model (one vLLM deployment per version, as a Gateway split has it), not an adapter on a shared
base. Replicas serving one name add up.

Counters and histograms count since the server started: the traffic of a window is the difference of
two snapshots. A request vLLM refuses before its engine (400 for a prompt too long, 404 for an unknown
model) reaches none of these series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import InputError, UnknownName

# vLLM 0.32's names (vllm/v1/metrics/loggers.py). The counter family is vllm:request_success (its samples
# vllm:request_success_total), labelled finished_reason: stop | length | abort | error | repetition.
FINISHED = "vllm:request_success"
HISTOGRAMS = {"e2e_latency": "vllm:e2e_request_latency_seconds",
              "ttft": "vllm:time_to_first_token_seconds",
              "time_per_output_token": "vllm:request_time_per_output_token_seconds",
              "generation_tokens": "vllm:request_generation_tokens"}
MODEL_LABEL = "model_name"


class MetricsError(InputError):
    """Metrics text that cannot be read, or two snapshots that cannot be compared."""


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts at each upper bound (ascending, the last +Inf) and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float = 0.0

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def counts(self) -> list[float]:
        """Observations per bucket (not cumulative)."""
        return [c - (self.cumulative[i - 1] if i else 0.0) for i, c in enumerate(self.cumulative)]

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket the rank falls in (from 0 for the first
        bucket); in the +Inf bucket, the largest finite bound. None without observations.

        Written here because no maintained Python package computes it (prometheus_client only parses
        and exposes); the rule is Prometheus' own, so numbers match a PromQL dashboard over the same window.
        """
        if self.count <= 0:
            return None
        rank = q * self.count
        i = next(i for i, c in enumerate(self.cumulative) if c >= rank)
        if self.bounds[i] == float("inf"):
            finite = [b for b in self.bounds if b != float("inf")]
            return finite[-1] if finite else None
        lower = self.bounds[i - 1] if i else 0.0
        below = self.cumulative[i - 1] if i else 0.0
        inside = self.cumulative[i] - below
        return lower + (self.bounds[i] - lower) * ((rank - below) / inside if inside else 1.0)

    def at(self, bounds: Sequence[float]) -> "Histogram":
        """The same observations counted at `bounds` only (a subset of this histogram's bounds)."""
        cumulative = dict(zip(self.bounds, self.cumulative))
        return Histogram(tuple(bounds), tuple(cumulative[b] for b in bounds), self.sum)

    def plus(self, other: "Histogram") -> "Histogram":
        common = _common_bounds(self, other)
        a, b = self.at(common), other.at(common)
        return Histogram(common, tuple(x + y for x, y in zip(a.cumulative, b.cumulative)), self.sum + other.sum)

    def minus(self, before: "Histogram") -> "Histogram":
        common = _common_bounds(self, before)
        a, b = self.at(common), before.at(common)
        return Histogram(common, tuple(x - y for x, y in zip(a.cumulative, b.cumulative)), self.sum - before.sum)


def _common_bounds(a: Histogram, b: Histogram) -> tuple[float, ...]:
    """The bounds both histograms count at (vLLM's defaults are the same everywhere; a server with other
    --custom-histogram-buckets still shares +Inf)."""
    return tuple(sorted(set(a.bounds) & set(b.bounds)))


@dataclass(frozen=True)
class ModelTraffic:
    """One served model's requests: finished by reason, and the per-request histograms (HISTOGRAMS' keys)."""

    model: str
    finished: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return round(sum(self.finished.values()))

    def finished_with(self, reason: str) -> int:
        return round(self.finished.get(reason, 0.0))

    def plus(self, other: "ModelTraffic") -> "ModelTraffic":
        histograms = dict(self.histograms)
        for key, h in other.histograms.items():
            histograms[key] = histograms[key].plus(h) if key in histograms else h
        return ModelTraffic(self.model, _add(self.finished, other.finished, 1), histograms)

    def minus(self, before: "ModelTraffic") -> "ModelTraffic":
        return ModelTraffic(self.model, _add(self.finished, before.finished, -1),
                            {k: h.minus(before.histograms[k]) if k in before.histograms else h
                             for k, h in self.histograms.items()})


def _add(a: Mapping[str, float], b: Mapping[str, float], sign: int) -> dict[str, float]:
    return {k: a.get(k, 0.0) + sign * b.get(k, 0.0) for k in {*a, *b}}


@dataclass(frozen=True)
class Snapshot:
    """Every served model's counts at one moment (or, after `minus`, over a window)."""

    models: Mapping[str, ModelTraffic]
    places: tuple[str, ...] = ()  # where it was read

    def model(self, name: str) -> ModelTraffic:
        if name not in self.models:
            raise UnknownName("served model in vLLM's metrics", name, sorted(self.models) or ["(none)"],
                              "name the model vLLM serves for each arm: --arm NAME:vN=SERVED_NAME (vLLM labels "
                              "its metrics with the server's first --served-model-name)")
        return self.models[name]

    def plus(self, other: "Snapshot") -> "Snapshot":
        models = dict(self.models)
        for name, traffic in other.models.items():
            models[name] = models[name].plus(traffic) if name in models else traffic
        return Snapshot(models, self.places + other.places)

    def minus(self, before: "Snapshot") -> "Snapshot":
        """The traffic between `before` and this snapshot; MetricsError when a count went down (a server
        restarted in between: its counters began again from 0)."""
        window = {}
        for name, traffic in self.models.items():
            window[name] = traffic.minus(before.models[name]) if name in before.models else traffic
            counts = [*window[name].finished.values(), *(c for h in window[name].histograms.values()
                                                         for c in h.cumulative)]
            if any(c < 0 for c in counts):
                raise MetricsError(f"the counts of {name} went down between {', '.join(before.places) or 'the first'}"
                                   f" and {', '.join(self.places) or 'the second'} snapshot (a server restarted?)",
                                   "compare two snapshots of the same servers without a restart between them")
        gone = sorted(set(before.models) - set(self.models))
        if gone:
            raise MetricsError(f"{', '.join(gone)} is in the earlier snapshot and not in the later one "
                               "(a server restarted or stopped?)", "compare two snapshots of the same servers")
        return Snapshot(window, self.places)


def parse(text: str, place: str = "") -> Snapshot:
    """The per-model traffic in Prometheus text (vLLM's /metrics), summed over every other label (engine)."""
    from prometheus_client.parser import text_string_to_metric_families

    finished: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[str, dict[float, float]]] = {}
    sums: dict[str, dict[str, float]] = {}
    wanted = {name: key for key, name in HISTOGRAMS.items()}
    try:
        for family in text_string_to_metric_families(text):
            if family.name == FINISHED:
                for s in family.samples:
                    if s.name == FINISHED + "_total" and MODEL_LABEL in s.labels:
                        reasons = finished.setdefault(s.labels[MODEL_LABEL], {})
                        reason = s.labels.get("finished_reason", "")
                        reasons[reason] = reasons.get(reason, 0.0) + s.value
            elif family.name in wanted:
                key = wanted[family.name]
                for s in family.samples:
                    model = s.labels.get(MODEL_LABEL)
                    if model is None:
                        continue
                    if s.name == family.name + "_bucket":
                        at = buckets.setdefault(model, {}).setdefault(key, {})
                        bound = float(s.labels["le"])
                        at[bound] = at.get(bound, 0.0) + s.value
                    elif s.name == family.name + "_sum":
                        total = sums.setdefault(model, {})
                        total[key] = total.get(key, 0.0) + s.value
    except (ValueError, KeyError, IndexError) as e:
        raise MetricsError(f"{place or 'the text'} is not Prometheus metrics text ({e})",
                           "give a vLLM server's root URL, or a file saved with `curl URL/metrics > FILE`") from None
    models = {}
    for model in {*finished, *buckets}:
        histograms = {key: Histogram(tuple(sorted(at)), tuple(at[b] for b in sorted(at)),
                                     sums.get(model, {}).get(key, 0.0))
                      for key, at in buckets.get(model, {}).items()}
        models[model] = ModelTraffic(model, finished.get(model, {}), histograms)
    return Snapshot(models, (place,) if place else ())


def sample_totals(text: str) -> dict[str, float]:
    """Every sample of Prometheus text summed over its labels: sample name (with _total, _bucket...) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[s.name] = values.get(s.name, 0.0) + s.value
    return values


def read_text(place: str) -> str:
    """The metrics text at `place`: a server's URL (its /metrics is read) or a file of Prometheus text."""
    if place.startswith(("http://", "https://")):
        from ..errors import VllmError
        from .client import VllmClient

        try:
            return VllmClient(place.rstrip("/").removesuffix("/metrics")).metrics_text()
        except VllmError as e:
            raise type(e)(e.message, f"check --metrics {place}: a running vLLM server's root URL, or a saved scrape "
                                     "(`curl URL/metrics > FILE`)") from None
    path = Path(place)
    if not path.is_file():
        raise InputError(f"no metrics file {place}", "give a vLLM server's URL (http://HOST:PORT) or a file saved with "
                                                     "`curl URL/metrics > FILE`")
    return path.read_text(encoding="utf-8", errors="replace")


def read(places: Sequence[str]) -> Snapshot:
    """One snapshot of every server (URL) or saved scrape (file) in `places`, summed per served model."""
    total = Snapshot({})
    for place in places:
        total = total.plus(parse(read_text(place), place))
    return total
