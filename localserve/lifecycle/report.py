"""A static HTML report of evaluation runs: the answers of the targets side by side, case by case,
with the failing assertions marked — one file, no scripts, to open in any browser or attach to a review."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import write_text
from .results import EvalRun

TEMPLATE = Path(__file__).with_name("report.html.j2")


def render_report(runs: list[EvalRun], title: str | None = None) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    rows = []
    for i, case in enumerate(runs[0].cases):
        cells = [r.cases[i] for r in runs]
        rows.append({"id": case.case_id, "critical": case.critical, "cells": cells,
                     "differs": len({c.passed for c in cells}) > 1})
    return template.render(title=title or f"{Path(runs[0].suite).name}: " + " vs ".join(r.target for r in runs),
                           runs=runs, rows=rows)


def write_report(runs: list[EvalRun], path: Path, title: str | None = None) -> Path:
    return write_text(path, render_report(runs, title))
