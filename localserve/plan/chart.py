"""The cost chart: monthly cost against tokens per day for each option, crossover marked (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fsutil import atomic_path
from .cost import DAYS_PER_MONTH, CostReport, api_monthly, self_hosted_monthly


def write_chart(report: CostReport, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    spec = report.spec
    a = spec.assumptions
    marks = [v for v in (spec.tokens_per_day, report.crossover_tokens_per_day) if v]
    top = max(marks + [1e7]) * 10
    volumes = np.logspace(4, np.log10(top), 400)
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=110)
    by_name = {o.name: o for o in report.options}
    api = by_name["api"]
    ax.plot(volumes, [api_monthly(v, api.per_1m) for v in volumes], label=f"{api.label} (prices of {report.api.date})")
    vllm = by_name.get("vllm")
    if vllm is not None:
        hourly = spec.price_per_hour * spec.gpus_per_replica
        ax.plot(volumes, [self_hosted_monthly(v, hourly, vllm.capacity_per_day, a.eng_monthly) for v in volumes],
                label=f"{vllm.label} @ ${spec.price_per_hour:.2f}/h, {a.utilisation:.0%} util., "
                      f"+{a.eng_hours_per_month:g} h eng/month")
    local = by_name.get("ollama")
    if local is not None and local.capacity_per_day:
        inside = volumes[volumes <= local.capacity_per_day]
        per_token = (local.per_1m or 0) / 1e6 * DAYS_PER_MONTH
        # a log axis cannot show $0: a zero-cost local option is drawn at one cent
        ax.plot(inside, [max(v * per_token, 0.01) for v in inside],
                label=f"{local.label} (up to its measured {local.capacity_per_day:,.0f} tokens/day"
                      + ("; no marginal cost, drawn at $0.01)" if not per_token else ")"))
    if report.crossover_tokens_per_day:
        x = report.crossover_tokens_per_day
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"crossover\n{x:,.0f} tokens/day", xy=(x, api_monthly(x, api.per_1m)),
                    xytext=(10, -30), textcoords="offset points", fontsize=9)
    ax.axvline(spec.tokens_per_day, color="grey", linestyle=":", linewidth=1, label="your volume")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per day")
    ax.set_ylabel("USD per month")
    ax.set_title(f"Monthly cost vs volume — decision at {spec.tokens_per_day:,.0f} tokens/day: {report.decision_label}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest
