"""Run a suite on targets: `evaluate(suite, "exports/demo/demo-Q4_K_M.gguf")` -> EvalRun."""

from __future__ import annotations

from pathlib import Path

from ..lineage import now
from ..progress import bar
from .results import EvalRun


def evaluate(suite, target_spec: str, *, seed: int = 0, max_tokens: int = 128, ollama_host: str | None = None,
             label: str | None = None) -> EvalRun:
    """Every case of `suite` (lifecycle.suites.Suite) answered by the target and graded."""
    from .assertions import grade
    from .targets import open_target

    started = now()
    results = []
    with open_target(target_spec, seed=seed, max_tokens=max_tokens, ollama_host=ollama_host) as target:
        with bar(len(suite.cases), f"eval {label or target_spec}", unit="case") as progress:
            for case in suite.cases:
                results.append(grade(case, target.answer(list(case.messages), json_schema=case.json_schema)))
                progress.update(1)
        info = dict(target.info)
    return EvalRun(str(Path(suite.path)), suite.sha256, label or target_spec, info, tuple(results), started,
                   {"seed": seed, "temperature": 0, "max_tokens": max_tokens})


def format_runs(runs: list[EvalRun]) -> str:
    """Case by case, side by side: pass/fail per target and the answers, then the totals."""
    width = max([len(c.case_id) for c in runs[0].cases] + [4])
    head = f"{'case':<{width}}  " + "  ".join(f"{r.target[-28:]:<28}" for r in runs)
    lines = [head, "-" * len(head)]
    for i, case in enumerate(runs[0].cases):
        cells = []
        for r in runs:
            c = r.cases[i]
            mark = "pass" if c.passed else ("ERROR" if c.answer.error else "FAIL")
            text = (c.answer.error or c.answer.text).replace("\n", " ")
            cells.append(f"{mark:<5} {text[:22]:<22}")
        lines.append(f"{case.case_id + (' !' if case.critical else ''):<{width}}  " + "  ".join(cells))
    lines.append("-" * len(head))
    lines.append(f"{'score':<{width}}  " + "  ".join(f"{r.passed}/{len(r.cases)} passed, {r.score:.3f}".ljust(28)
                                                   for r in runs))
    return "\n".join(lines)
