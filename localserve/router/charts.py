"""PNG charts of an experiment (per arm) and of drift (baseline against window), with matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..fsutil import atomic_path
from .log import RequestRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def _buckets(rows: Sequence[RequestRow], n: int = 20) -> tuple[float, float]:
    start, end = rows[0].at, rows[-1].at
    return start, max((end - start) / n, 1e-3)


def report_chart(report, rows: Sequence[RequestRow], path: Path, weights: Sequence[dict] = ()) -> Path:
    """Latency distributions and rates per arm, and requests and median latency over time."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    versions = [a.version for a in report.arms]
    by_arm = {v: [r for r in rows if r.arm == v] for v in versions}

    ax = axes[0][0]
    data = [[r.latency_s * 1000 for r in by_arm[v] if not r.failed] for v in versions]
    shown = [(v, d) for v, d in zip(versions, data) if d]
    if shown:
        ax.boxplot([d for _, d in shown], tick_labels=[v for v, _ in shown], showfliers=True)
    ax.set_title("latency per arm (ms)")
    ax.set_ylabel("ms")

    ax = axes[0][1]
    rates = ("error_rate", "runaway_rate", "empty_rate")
    x = np.arange(len(versions))
    width = 0.8 / (len(rates) + 1)
    for i, rate in enumerate(rates):
        ax.bar(x + i * width, [(getattr(a, rate) or 0) * 100 for a in report.arms], width, label=rate.replace("_", " "))
    scores = [a.feedback for a in report.arms]
    if any(s is not None for s in scores):
        ax.bar(x + len(rates) * width, [(s or 0) * 100 for s in scores], width, label="feedback mean x100")
    ax.set_xticks(x + width * len(rates) / 2, versions)
    ax.set_title("rates per arm (%)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    ax2 = axes[1][1]
    if rows:
        start, step = _buckets(rows)
        for v in versions:
            arm_rows = by_arm[v]
            if not arm_rows:
                continue
            idx = np.array([int((r.at - start) / step) for r in arm_rows])
            counts = np.bincount(np.minimum(idx, 19), minlength=20)
            ax.plot((np.arange(20) * step) / 60, counts, marker=".", label=v)
            medians = []
            for b in range(20):
                lat = [r.latency_s * 1000 for r, i in zip(arm_rows, idx) if min(i, 19) == b and not r.failed]
                medians.append(np.median(lat) if lat else np.nan)
            ax2.plot((np.arange(20) * step) / 60, medians, marker=".", label=v)
        for change in weights:
            for a in (ax, ax2):
                a.axvline((change["at"] - start) / 60, color="grey", linestyle=":", linewidth=1)
    ax.set_title("requests over time (dotted: weight changes)")
    ax.set_xlabel("minutes since the first request")
    ax.legend(fontsize=8)
    ax2.set_title("median latency over time (ms)")
    ax2.set_xlabel("minutes since the first request")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{report.experiment}: {len(rows)} requests, control {report.control}")
    fig.tight_layout()
    return _save(fig, path)


def drift_chart(d, baseline: Sequence[RequestRow], window: Sequence[RequestRow], path: Path) -> Path:
    """Response lengths and latencies, baseline against window; shares over time; the golden suite over time."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ok_b = [r for r in baseline if not r.failed]
    ok_w = [r for r in window if not r.failed]

    ax = axes[0][0]
    lengths = [[r.response_chars or 0 for r in ok_b], [r.response_chars or 0 for r in ok_w]]
    if any(lengths):
        bins = np.histogram_bin_edges(lengths[0] + lengths[1], bins=30)
        for values, label in zip(lengths, ("baseline", "window")):
            if values:
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{label} (n={len(values)})")
    ax.set_title("response length (characters)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    for rows_, label in ((ok_b, "baseline"), (ok_w, "window")):
        lat = np.sort([r.latency_s * 1000 for r in rows_])
        if len(lat):
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label)
    ax.set_title("latency CDF (ms)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    rows = list(baseline) + list(window)
    if rows:
        start, step = _buckets(rows)
        idx = [min(int((r.at - start) / step), 19) for r in rows]
        for name, hit in (("runaway", lambda r: r.finish_reason == "length"), ("empty", lambda r: not r.response_chars),
                          ("error", lambda r: r.failed)):
            share = []
            for b in range(20):
                members = [r for r, i in zip(rows, idx) if i == b]
                share.append(100 * sum(map(hit, members)) / len(members) if members else np.nan)
            ax.plot((np.arange(20) * step) / 3600, share, marker=".", label=name)
        ax.axvline((d.window[0] - start) / 3600, color="grey", linestyle=":", label="window starts")
    ax.set_title("shares over time (%)")
    ax.set_xlabel("hours since the first request")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    suites = sorted({e.suite for e in d.evals})
    for suite in suites:
        points = [e for e in d.evals if e.suite == suite]
        ax.plot(range(len(points)), [e.score for e in points], marker="o", label=Path(suite).name)
        for i, e in enumerate(points):
            ax.annotate(e.version.rsplit(":", 1)[-1], (i, e.score), fontsize=7, textcoords="offset points",
                        xytext=(0, 4))
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("golden suite score, run after run")
    if suites:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no recorded runs (localserve eval SUITE NAME:vN --record)", ha="center",
                transform=ax.transAxes, fontsize=9)
    flags = [c.metric for c in d.checks if c.flagged]
    fig.suptitle(f"{d.name} {d.version}: " + (f"drift in {', '.join(flags)}" if flags else "no drift flagged"))
    fig.tight_layout()
    return _save(fig, path)
