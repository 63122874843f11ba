"""The quality chart: file size against mean KL per quant, with llama.cpp's published band.

Sizes of different models are not comparable, bits per weight are: the published Llama-3-8B
numbers (llama3_8b_kld.json, source inside) are placed on this model's size axis at the same bits
per weight, so "your Q4_K_M" sits next to "Llama-3-8B's Q4_K_M" on both axes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..fsutil import atomic_path

PUBLISHED = Path(__file__).resolve().parent / "llama3_8b_kld.json"

# KL 0 (an F16 file against itself) cannot sit on a log axis; it is drawn at this floor.
KL_FLOOR = 1e-6


@lru_cache(maxsize=1)
def published_reference() -> dict:
    """llama.cpp's published Llama-3-8B KL divergences, with bits per weight computed from size."""
    data = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    for row in data["rows"]:
        row["bpw"] = row["size_gib"] * 2**30 * 8 / data["n_params"]
    return data


def write_chart(rows: Sequence, path: Path, title: str) -> Path:
    """Write the chart of a quality table's rows (QualityRow: size, bpw, kl_mean, quant, imatrix,
    runtime) as PNG to `path` (atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [r for r in rows if r.bpw > 0]
    if not rows:
        raise ValueError("the table has no rows to chart")
    # bytes per bit-per-weight of this model: size = bpw * scale (file header overhead aside)
    scale = sum(r.size / r.bpw for r in rows) / len(rows)
    mb = 1e6

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    pub = published_reference()
    for imatrix, style in ((False, "-"), (True, "--")):
        pts = sorted((r["bpw"] * scale / mb, r["kl_mean"]) for r in pub["rows"] if r["imatrix"] == imatrix)
        if pts:
            ax.plot(*zip(*pts), style, color="0.6", lw=1, zorder=1,
                    label=f"{pub['model']} (llama.cpp, published){' + imatrix' if imatrix else ''}")
    plain = sorted((r["bpw"] * scale / mb, r["kl_mean"]) for r in pub["rows"] if not r["imatrix"])
    if plain:
        xs, ys = zip(*plain)
        # The band: the published curve within a factor of 2 either way — a quant of this model
        # outside it behaves unlike the usual case (a small or unusual model, or a problem).
        ax.fill_between(xs, [y / 2 for y in ys], [y * 2 for y in ys], color="0.85", zorder=0,
                        label="published ±2x band")

    series = (("this model, GGUF", lambda r: r.runtime != "vllm" and not r.imatrix, "o", "tab:blue", 4),
              ("this model, GGUF + imatrix", lambda r: r.runtime != "vllm" and r.imatrix, "s", "tab:orange", -10),
              ("this model, GPU format (vLLM)", lambda r: r.runtime == "vllm", "^", "tab:green", 4))
    for label, belongs, marker, color, dy in series:
        pts = [r for r in rows if belongs(r)]
        if not pts:
            continue
        ax.scatter([r.size / mb for r in pts], [max(r.kl_mean, KL_FLOOR) for r in pts], marker=marker,
                   color=color, zorder=3, label=label)
        # Some types fall back to the same tensor formats on small models (SmolLM2's Q2_K and
        # Q3_K_S are the same file): one point, one label naming all of them.
        labels: dict[tuple[int, float], list[str]] = {}
        for r in pts:
            names = labels.setdefault((r.size, round(r.kl_mean, 8)), [])
            if r.quant not in names:
                names.append(r.quant)
        for (size, kl), names in labels.items():
            ax.annotate(" / ".join(names), (size / mb, max(kl, KL_FLOOR)), textcoords="offset points",
                        xytext=(5, dy), fontsize=8, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL divergence vs reference (nats, log)")
    ax.set_title(title)
    bpw_axis = ax.secondary_xaxis("top", functions=(lambda x: x * mb / scale, lambda b: b * scale / mb))
    bpw_axis.set_xlabel("bits per weight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
