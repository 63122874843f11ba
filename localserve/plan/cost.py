"""`localserve cost`: API vs self-hosted vLLM vs local Ollama, per 1M tokens and per month.

Self-hosted cost per 1M tokens = hourly price / (tokens/s x utilisation x 3600) x 1e6, at the
measured (bench) or user-given throughput. Everything not measured is an assumption with a default
that the report states: utilisation, the input/output token mix, engineering time, electricity.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .bench import Measurement, measured
from .memory import gib
from .tables import ApiPrice, Device, api_price, device

DAYS_PER_MONTH = 365.25 / 12
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH
_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_volume(text: str | float | int) -> float:
    """'20M' -> 2e7; plain numbers pass through. Negative volumes are refused."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
        if not m:
            raise InputError(f"cannot read the volume {text!r}", "write tokens per day like 20M, 500K or 1.5B")
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value < 0 or math.isnan(value):
        raise InputError(f"tokens per day must not be negative, not {text}", "pass a volume like --tokens-per-day 20M")
    return value


def parse_hourly(text: str | float | int) -> float:
    """'1.10/h', '$1.10', '1.1' -> 1.1 USD per GPU-hour."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*\$?\s*([0-9]*\.?[0-9]+)\s*(?:/\s*h(?:our|r)?)?\s*", str(text))
        if not m:
            raise InputError(f"cannot read the price {text!r}", "write the GPU's hourly price like 1.10/h")
        value = float(m.group(1))
    if value <= 0:
        raise InputError(f"the GPU price must be positive, not {text}")
    return value


@dataclass(frozen=True)
class Assumptions:
    """What the numbers rest on besides the data tables; all stated in every report."""

    utilisation: float = 0.5  # share of the hours a rented GPU is busy at its measured rate
    input_share: float = 0.75  # share of tokens that are prompt (input) tokens: 3 in per 1 out
    eng_hours_per_month: float = 8.0  # running vLLM yourself: upgrades, monitoring, incidents
    eng_rate_per_hour: float = 100.0
    local_watts: float = 0.0  # this machine's draw under load; 0 = electricity not counted
    kwh_price: float = 0.0

    def __post_init__(self):
        if not 0 < self.utilisation <= 1:
            raise InputError(f"--utilisation must be in (0, 1], not {self.utilisation}")
        if not 0 <= self.input_share <= 1:
            raise InputError(f"--input-share must be in [0, 1], not {self.input_share}")
        for name in ("eng_hours_per_month", "eng_rate_per_hour", "local_watts", "kwh_price"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative")

    @property
    def eng_monthly(self) -> float:
        return self.eng_hours_per_month * self.eng_rate_per_hour


@dataclass(frozen=True)
class CostSpec:
    tokens_per_day: float = 20e6
    gpu: str | None = None
    price_per_hour: float | None = None
    gpus_per_replica: int = 1
    api: str = "gpt-4o-mini"
    api_input_price: float | None = None
    api_output_price: float | None = None
    tokens_per_s: float | None = None  # self-hosted throughput per replica; default: measured
    model: Path | None = None  # a GGUF with a .bench.json, or an export folder
    assumptions: Assumptions = Assumptions()
    private: bool = False
    air_gapped: bool = False
    frontier: bool = False
    development: bool = False
    tenants: int = 1
    adapter: Path | None = None
    devices_file: Path | None = None
    prices_file: Path | None = None
    chart: Path | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("tokens_per_day", parse_volume(self.tokens_per_day))
        if self.price_per_hour is not None:
            set_("price_per_hour", parse_hourly(self.price_per_hour))
        for key in ("model", "adapter", "chart", "devices_file", "prices_file"):
            if getattr(self, key) is not None:
                set_(key, Path(getattr(self, key)))
        if self.tokens_per_s is not None and self.tokens_per_s <= 0:
            raise InputError(f"--tokens-per-s must be positive, not {self.tokens_per_s}")
        if self.gpus_per_replica < 1 or self.tenants < 1:
            raise InputError("--gpus and --tenants must be at least 1")
        for label, v in (("--api-input-price", self.api_input_price), ("--api-output-price", self.api_output_price)):
            if v is not None and v < 0:
                raise InputError(f"{label} must not be negative, not {v}")
        if self.adapter is not None and not self.adapter.exists():
            raise InputError(f"adapter {self.adapter} does not exist", "pass the adapter folder or file")
        if self.gpu is not None:
            device(self.gpu, self.devices_file)  # unknown GPU: one clear line now, not later


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # all tokens (input + output) one replica processes per second at full load
    how: str


@dataclass(frozen=True)
class Option:
    name: str  # "api" | "vllm" | "ollama"
    label: str
    per_1m: float | None
    monthly: float | None
    capacity_per_day: float | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostReport:
    spec: CostSpec
    api: ApiPrice
    options: tuple[Option, ...]
    crossover_tokens_per_day: float | None
    crossover_note: str
    decision: str
    reasons: tuple[str, ...]
    assumptions: tuple[str, ...]
    tenancy: dict[str, Any] | None = None
    chart: str | None = None
    gpu: Device | None = None
    throughput: Measurement | None = None  # the stored bench result the self-hosted figures rest on
    local: Measurement | None = None  # the one the local (Ollama / llama.cpp) figures rest on
    series: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def decision_label(self) -> str:
        labels = {"api": f"API ({self.api.name})", "vllm": "self-hosted vLLM", "ollama": "Ollama / llama.cpp, local"}
        return labels[self.decision]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens_per_day": self.spec.tokens_per_day,
            "api": asdict(self.api),
            "options": [asdict(o) for o in self.options],
            "crossover_tokens_per_day": self.crossover_tokens_per_day,
            "crossover_note": self.crossover_note,
            "decision": self.decision,
            "decision_label": self.decision_label,
            "reasons": list(self.reasons),
            "assumptions": list(self.assumptions),
            "multi_tenant_lora": self.tenancy,
            "chart": self.chart,
            "gpu": None if self.gpu is None else {
                "name": self.gpu.name, "memory_bytes": self.gpu.memory_bytes, "date": self.gpu.date,
                "source": self.gpu.source, "price_per_hour": self.spec.price_per_hour,
                "price_source": "given (--price)"},
            "throughput": None if self.throughput is None else self.throughput.to_json(),
            "local_throughput": None if self.local is None else self.local.to_json(),
            "data_dates": self.data_dates,
        }

    @property
    def data_dates(self) -> dict[str, str]:
        """The date of every table figure this report used."""
        dates = {"api_prices": f"{self.api.name}: {self.api.date} ({self.api.source})"}
        if self.gpu is not None:
            dates["devices"] = f"{self.gpu.name}: {self.gpu.date} ({self.gpu.source})"
        return dates


# ------------------------------------------------------------------------------------ arithmetic

def self_hosted_per_1m(price_per_hour: float, tokens_per_s: float, utilisation: float) -> float:
    """USD per 1M tokens = hourly price / (tokens/s x utilisation x 3600) x 1e6."""
    return price_per_hour / (tokens_per_s * utilisation * 3600) * 1e6


def api_monthly(tokens_per_day: float, per_1m: float) -> float:
    return tokens_per_day * DAYS_PER_MONTH * per_1m / 1e6


def self_hosted_monthly(tokens_per_day: float, hourly_per_replica: float, capacity_per_day: float,
                        fixed_monthly: float = 0.0) -> float:
    """Replicas rented around the clock, as many as the volume needs (at least one), plus fixed costs."""
    replicas = max(1, math.ceil(tokens_per_day / capacity_per_day - 1e-9))
    return replicas * hourly_per_replica * HOURS_PER_MONTH + fixed_monthly


def crossover(hourly_per_replica: float, capacity_per_day: float, api_per_1m: float,
              fixed_monthly: float = 0.0) -> float | None:
    """The lowest tokens/day from which self-hosting costs no more than the API; None if never.

    With k replicas the self-hosted bill is k x F + E (F a replica-month, E fixed) and the API's is
    a x V; within the k-th replica's range the break-even volume is (kF + E) / a.
    """
    a = api_per_1m / 1e6 * DAYS_PER_MONTH  # USD per month for each token/day
    f = hourly_per_replica * HOURS_PER_MONTH
    c = capacity_per_day
    if a <= 0 or a * c <= f:
        return None
    k = max(1, math.ceil(fixed_monthly / (a * c - f) - 1e-12)) if fixed_monthly > 0 else 1
    return max((k * f + fixed_monthly) / a, (k - 1) * c)


def blended_throughput(bench: dict[str, Any], input_share: float) -> float | None:
    """Tokens/s over all tokens from measured prompt and decode rates: 1 / (s/pp + (1-s)/decode)."""
    conc = bench.get("concurrent") or {}
    decode = conc.get("aggregate_output_tokens_per_s") or bench.get("decode_tokens_per_s")
    pp = bench.get("prompt_tokens_per_s")
    if not decode:
        return None
    if not pp:
        return decode
    return 1 / (input_share / pp + (1 - input_share) / decode)


def adapter_bytes(path: Path) -> int:
    """Size of the adapter weights on disk: the file, or a folder's safetensors/GGUF/bin files."""
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".gguf", ".bin", ".pt")]
    if not files:
        raise InputError(f"{path} holds no adapter weights (.safetensors, .gguf)", "pass the adapter folder")
    return sum(p.stat().st_size for p in files)


# -------------------------------------------------------------------------------------- the report

def _money(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.2f}"


def _tokens(x: float | None) -> str:
    if x is None:
        return "n/a"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def cost(spec: CostSpec) -> CostReport:
    a = spec.assumptions
    api = api_price(spec.api, spec.prices_file)
    if spec.api_input_price is not None or spec.api_output_price is not None:
        api = ApiPrice(name=api.name, provider=api.provider, frontier=api.frontier,
                       input_per_1m=api.input_per_1m if spec.api_input_price is None else spec.api_input_price,
                       output_per_1m=api.output_per_1m if spec.api_output_price is None else spec.api_output_price,
                       date="given", source="--api-input-price/--api-output-price")
    api_per_1m = api.blended_per_1m(a.input_share)
    volume = spec.tokens_per_day
    assumptions = [
        f"API {api.name}: ${api.input_per_1m}/1M input, ${api.output_per_1m}/1M output "
        f"(price dated {api.date}, {api.source}); {a.input_share:.0%} of tokens are input, so "
        f"${api_per_1m:.4g} per 1M tokens",
        f"a month is {DAYS_PER_MONTH:.2f} days ({HOURS_PER_MONTH:.0f} GPU-hours per rented GPU)",
    ]
    options = [Option("api", f"API ({api.name})", api_per_1m, api_monthly(volume, api_per_1m), None)]

    # self-hosted vLLM on rented GPUs
    vllm_hourly = vllm_capacity = cross = None
    cross_note = "no GPU price given (--gpu NAME --price 1.10/h): no self-hosted option to compare"
    gpu = device(spec.gpu, spec.devices_file) if spec.gpu is not None else None
    if gpu is not None:
        assumptions.append(f"GPU {gpu.name}: {gib(gpu.memory_bytes)} (device table dated {gpu.date}, {gpu.source}); "
                           + (f"its ${spec.price_per_hour:.2f}/h is your price (--price), not from a table"
                              if spec.price_per_hour is not None else "no hourly price given"))
    used = None
    if spec.price_per_hour is not None:
        used = measured(spec.model, ("vllm", "ollama", "llama.cpp")) if spec.tokens_per_s is None else None
        if spec.tokens_per_s is not None:
            tp = Throughput(spec.tokens_per_s, f"{spec.tokens_per_s:g} tokens/s per replica (given)")
        elif used and blended_throughput(used.result, a.input_share):
            tps = blended_throughput(used.result, a.input_share)
            tp = Throughput(tps, f"{tps:.1f} tokens/s per replica, measured by {used.describe()} on "
                                 f"{used.result.get('machine', {}).get('cpu', 'this machine')}; "
                                 "a rented GPU may be faster: pass --tokens-per-s to use its rate")
        elif spec.model is not None:
            ggufs = [spec.model] if spec.model.is_file() else sorted(spec.model.glob("*.gguf"))
            target = ggufs[0] if ggufs else spec.model / "MODEL.gguf"
            raise InputError(f"no throughput to price the GPU with: {spec.model} has no `localserve bench` "
                             "measurement", f"run `localserve bench {target}` first, or pass --tokens-per-s N")
        else:
            raise InputError("no throughput to price the GPU with (it is measured, never guessed)",
                             "pass --model EXPORT_DIR (an export measured by `localserve bench`) or --tokens-per-s N")
        gpu_name = spec.gpu or "GPU"
        vllm_hourly = spec.price_per_hour * spec.gpus_per_replica
        vllm_capacity = tp.tokens_per_s * a.utilisation * 86400
        per_1m = self_hosted_per_1m(vllm_hourly, tp.tokens_per_s, a.utilisation)
        monthly = self_hosted_monthly(volume, vllm_hourly, vllm_capacity, a.eng_monthly)
        replicas = max(1, math.ceil(volume / vllm_capacity - 1e-9))
        options.append(Option("vllm", f"vLLM on {spec.gpus_per_replica} x {gpu_name}", per_1m, monthly, vllm_capacity, (
            f"{replicas} replica(s) of {spec.gpus_per_replica} x {gpu_name} at ${spec.price_per_hour:.2f}/h each",
            f"per 1M tokens: ${vllm_hourly:.2f}/h / ({tp.tokens_per_s:.1f} tokens/s x {a.utilisation:.0%} x 3600) x 1e6 = ${per_1m:.4g}",
        )))
        assumptions += [f"throughput: {tp.how}",
                        f"utilisation {a.utilisation:.0%} (share of rented hours the GPU is busy; --utilisation)",
                        f"engineering time for self-hosting: {a.eng_hours_per_month:g} h/month x "
                        f"${a.eng_rate_per_hour:g}/h = {_money(a.eng_monthly)}/month (--eng-hours, --eng-rate)"]
        cross = crossover(vllm_hourly, vllm_capacity, api_per_1m, a.eng_monthly)
        cross_note = (f"self-hosting becomes cheaper from {_tokens(cross)} tokens/day" if cross is not None else
                      f"self-hosting never breaks even: at {a.utilisation:.0%} utilisation a GPU token costs "
                      f"${per_1m:.4g}/1M, the API ${api_per_1m:.4g}/1M")

    # local: Ollama / llama.cpp on this machine, hardware already owned
    local = measured(spec.model, ("ollama", "llama.cpp"))
    local_capacity = None
    if local and blended_throughput(local.result, a.input_share):
        local_tps = blended_throughput(local.result, a.input_share)
        local_capacity = local_tps * 86400
        busy_hours = volume / local_tps / 3600
        power = a.local_watts / 1000 * min(busy_hours, 24) * DAYS_PER_MONTH * a.kwh_price
        notes = (f"measured {local_tps:.1f} tokens/s by {local.describe()}: "
                 f"at most {_tokens(local_capacity)} tokens/day on this machine",
                 "hardware already owned; electricity " + (f"{a.local_watts:g} W x ${a.kwh_price:g}/kWh"
                                                           if a.local_watts and a.kwh_price else "not counted (--local-watts, --kwh-price)"))
        options.append(Option("ollama", "Ollama / llama.cpp on this machine",
                              (a.local_watts / 1000 * a.kwh_price / (local_tps * 3600) * 1e6) if local_tps else None,
                              power if volume <= local_capacity else None, local_capacity, notes))

    decision, reasons = _decide(spec, api, cross, local_capacity, options)
    tenancy = _tenancy(spec, vllm_hourly, vllm_capacity) if spec.tenants > 1 or spec.adapter else None
    report = CostReport(spec, api, tuple(options), cross, cross_note, decision, tuple(reasons), tuple(assumptions),
                        tenancy, gpu=gpu, throughput=used, local=local)
    if spec.chart is not None:
        report = CostReport(**{**report.__dict__, "chart": str(_write_chart(report, spec.chart))})
    return report


def _write_chart(report: CostReport, dest: Path) -> Path:
    """Each option's monthly cost as a curve over volume, drawn by chart.py."""
    from .chart import Curve, write_chart

    spec = report.spec
    a = spec.assumptions
    by_name = {o.name: o for o in report.options}
    api = by_name["api"]
    curves = [Curve(f"{api.label} (prices of {report.api.date})", lambda v: api_monthly(v, api.per_1m))]
    vllm = by_name.get("vllm")
    if vllm is not None:
        hourly = spec.price_per_hour * spec.gpus_per_replica
        curves.append(Curve(f"{vllm.label} @ ${spec.price_per_hour:.2f}/h, {a.utilisation:.0%} util., "
                            f"+{a.eng_hours_per_month:g} h eng/month",
                            lambda v: self_hosted_monthly(v, hourly, vllm.capacity_per_day, a.eng_monthly)))
    local = by_name.get("ollama")
    if local is not None and local.capacity_per_day:
        per_token = (local.per_1m or 0) / 1e6 * DAYS_PER_MONTH
        # a log axis cannot show $0: a zero-cost local option is drawn at one cent
        curves.append(Curve(f"{local.label} (up to its measured {local.capacity_per_day:,.0f} tokens/day"
                            + ("; no marginal cost, drawn at $0.01)" if not per_token else ")"),
                            lambda v: max(v * per_token, 0.01), up_to=local.capacity_per_day))
    x = report.crossover_tokens_per_day
    return write_chart(curves, dest, volume=spec.tokens_per_day,
                       crossover=(x, api_monthly(x, api.per_1m)) if x else None,
                       title=f"Monthly cost vs volume — decision at {spec.tokens_per_day:,.0f} tokens/day: "
                             f"{report.decision_label}")


def _decide(spec: CostSpec, api: ApiPrice, cross: float | None, local_capacity: float | None,
            options: list[Option]) -> tuple[str, list[str]]:
    volume = spec.tokens_per_day
    by_name = {o.name: o for o in options}
    reasons: list[str] = []
    if cross is None:
        cheaper = "api"
        reasons.append("cost: " + ("no GPU price to compare" if "vllm" not in by_name else
                                   "the API is cheaper at every volume with these figures"))
    elif volume >= cross:
        cheaper = "vllm"
        reasons.append(f"cost: {_tokens(volume)} tokens/day is above the {_tokens(cross)} crossover: "
                       f"vLLM {_money(by_name['vllm'].monthly)}/month vs API {_money(by_name['api'].monthly)}/month")
    else:
        cheaper = "api"
        reasons.append(f"cost: {_tokens(volume)} tokens/day is below the {_tokens(cross)} crossover: "
                       f"API {_money(by_name['api'].monthly)}/month vs vLLM {_money(by_name['vllm'].monthly)}/month")
    if "vllm" in by_name:
        reasons.append(f"the vLLM figure includes {spec.assumptions.eng_hours_per_month:g} h/month of engineering "
                       "time (an assumption: --eng-hours)")
    local_fits = local_capacity is not None and volume <= local_capacity
    if spec.development:
        choice = "ollama"
        reasons.append("development: Ollama on your own machine has zero marginal cost per token")
    elif spec.air_gapped:
        choice = "ollama" if local_fits or local_capacity is None else "vllm"
        reasons.append("air-gapped: no hosted API; " + ("this machine's measured capacity covers the volume"
                                                       if choice == "ollama" else "the volume needs GPUs on premises (vLLM)"))
    elif spec.frontier:
        choice = "api"
        reasons.append(f"frontier quality needed: a hosted frontier model{' such as ' + api.name if api.frontier else ''}; "
                       "a small self-hosted fine-tune does not replace it")
    elif spec.private:
        choice = "vllm" if not local_fits else "ollama"
        reasons.append("privacy: prompts must not leave your infrastructure, which rules out the API"
                       + (" although it is cheaper at this volume" if cheaper == "api" else ""))
        if local_fits:
            reasons.append(f"this machine's measured capacity ({_tokens(local_capacity)} tokens/day) covers the "
                           "volume: serve it locally with Ollama, no GPU to rent")
    else:
        choice = cheaper
        if spec.tenants > 1 and cheaper == "vllm":
            reasons.append(f"{spec.tenants} tenants: vLLM serves their LoRA adapters on one base (multi-LoRA)")
        if local_fits and cheaper == "api":
            reasons.append(f"this machine's measured capacity ({_tokens(local_capacity)} tokens/day) also covers the "
                           "volume at zero marginal cost: Ollama is the cheapest if a local machine may serve it")
    if spec.model is not None:
        reasons.append(f"{spec.model.name} is your own (fine-tuned) model: the API prices a different model, an "
                       "acceptable substitute only if its quality is")
    return choice, reasons


def _tenancy(spec: CostSpec, hourly: float | None, capacity: float | None) -> dict[str, Any]:
    """N tenants on one base with adapters vs N separate deployments."""
    n = spec.tenants
    out: dict[str, Any] = {"tenants": n}
    size = adapter_bytes(spec.adapter) if spec.adapter else None
    out["adapter_bytes"] = size
    out["adapter_source"] = str(spec.adapter) if spec.adapter else None
    base = None
    if spec.model is not None:
        from .model import load_model

        from .layout import VLLM_DTYPE_BYTES

        planned = load_model(spec.model)
        n_params = sum(t.n for t in planned.tensors)
        base = n_params * VLLM_DTYPE_BYTES
        out["base_weights_bytes"] = base
        out["base_weights_how"] = f"{n_params:,} parameters x {VLLM_DTYPE_BYTES} bytes (16-bit, as vLLM serves them)"
    if base is not None and size is not None:
        out["memory_separate_bytes"] = n * (base + size)
        out["memory_shared_bytes"] = base + n * size
        out["memory_saved_bytes"] = (n - 1) * base
    if hourly is not None and capacity is not None:
        eng = spec.assumptions.eng_monthly
        volume = spec.tokens_per_day
        shared = self_hosted_monthly(volume, hourly, capacity, eng)
        separate = n * self_hosted_monthly(volume / n, hourly, capacity, eng)
        out.update({
            "monthly_shared": shared, "monthly_separate": separate,
            "how": (f"shared: one deployment serves all {n} tenants' {_tokens(volume)} tokens/day; separate: {n} "
                    f"deployments of {_tokens(volume / n)} tokens/day each, each with its own GPUs and engineering "
                    "time; both at the measured throughput (LoRA adds a few percent of compute, not counted)"),
        })
    if size is None:
        out["note"] = "pass --adapter PATH to size each tenant's adapter from its real file"
    return out
