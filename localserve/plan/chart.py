"""The cost chart: monthly cost against tokens per day for each option, crossover marked (PNG).

What each option costs at a volume is cost.py's; this module only draws the curves it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..fsutil import atomic_path


@dataclass(frozen=True)
class Curve:
    label: str
    monthly: Callable[[float], float]  # USD per month at a volume in tokens per day
    up_to: float | None = None  # drawn only up to this volume (a machine's measured capacity)


def write_chart(curves: Sequence[Curve], dest: Path, *, volume: float, crossover: tuple[float, float] | None,
                title: str) -> Path:
    """Draw `curves` on log axes with `volume` (tokens/day) marked and the crossover (tokens/day,
    USD/month) annotated; written atomically to `dest`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    marks = [v for v in (volume, crossover[0] if crossover else None) if v]
    top = max(marks + [1e7]) * 10
    volumes = np.logspace(4, np.log10(top), 400)
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=110)
    for curve in curves:
        drawn = volumes if curve.up_to is None else volumes[volumes <= curve.up_to]
        ax.plot(drawn, [curve.monthly(v) for v in drawn], label=curve.label)
    if crossover:
        x, y = crossover
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"crossover\n{x:,.0f} tokens/day", xy=(x, y), xytext=(10, -30), textcoords="offset points",
                    fontsize=9)
    ax.axvline(volume, color="grey", linestyle=":", linewidth=1, label="your volume")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per day")
    ax.set_ylabel("USD per month")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest
