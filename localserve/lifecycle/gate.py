"""The promotion gate: a candidate against the champion on the same suite, paired case by case.

Promote only if the candidate's mean score is at least the champion's plus `min_delta`, and no case
marked critical that the champion passes does the candidate fail. Beside the scores, the cases that
flipped each way, and an exact McNemar test of those flips (a two-sided binomial test of the flips
against a fair coin — only the discordant pairs carry evidence of a difference); with
`require_significant`, an improvement must also reach p < alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

from .results import EvalRun


@dataclass(frozen=True)
class Comparison:
    candidate: EvalRun
    champion: EvalRun | None
    fixed: tuple[str, ...]  # champion failed, candidate passes
    broken: tuple[str, ...]  # champion passed, candidate fails
    critical_broken: tuple[str, ...]
    p_value: float  # exact McNemar on the flips (1.0 without flips or without a champion)

    @property
    def delta(self) -> float:
        return self.candidate.score - (self.champion.score if self.champion else 0.0)

    def to_json(self) -> dict:
        return {"candidate": {"target": self.candidate.target, "score": self.candidate.score,
                              "passed": self.candidate.passed, "total": len(self.candidate.cases)},
                "champion": ({"target": self.champion.target, "score": self.champion.score,
                              "passed": self.champion.passed, "total": len(self.champion.cases)}
                             if self.champion else None),
                "delta": self.delta, "fixed": list(self.fixed), "broken": list(self.broken),
                "critical_broken": list(self.critical_broken), "mcnemar_p": self.p_value}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]  # why not (empty when promoted)
    min_delta: float
    require_significant: bool
    alpha: float

    def to_json(self) -> dict:
        return {"promote": self.promote, "reasons": list(self.reasons), "min_delta": self.min_delta,
                "require_significant": self.require_significant, "alpha": self.alpha}


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value for `fixed` and `broken` discordant pairs."""
    from scipy.stats import binomtest

    n = fixed + broken
    return 1.0 if n == 0 else float(binomtest(fixed, n, 0.5).pvalue)


def compare(candidate: EvalRun, champion: EvalRun | None) -> Comparison:
    if champion is None:
        return Comparison(candidate, None, (), (), (), 1.0)
    if [c.case_id for c in candidate.cases] != [c.case_id for c in champion.cases]:
        raise ValueError("the two runs are not of the same suite")
    fixed = tuple(c.case_id for c, d in zip(candidate.cases, champion.cases) if c.passed and not d.passed)
    broken = tuple(c.case_id for c, d in zip(candidate.cases, champion.cases) if d.passed and not c.passed)
    critical = tuple(cid for cid in broken if candidate.case(cid).critical)
    return Comparison(candidate, champion, fixed, broken, critical, mcnemar_exact(len(fixed), len(broken)))


def decide(comparison: Comparison, min_delta: float = 0.0, require_significant: bool = False,
           alpha: float = 0.05) -> Decision:
    reasons = []
    if comparison.champion is not None:
        if comparison.delta < min_delta:
            reasons.append(f"score {comparison.candidate.score:.3f} is not at least the champion's "
                           f"{comparison.champion.score:.3f} + {min_delta:g}")
        if comparison.critical_broken:
            reasons.append(f"critical case(s) the champion passes fail: {', '.join(comparison.critical_broken)}")
        if require_significant and not comparison.p_value < alpha:
            reasons.append(f"the flips ({len(comparison.fixed)} fixed, {len(comparison.broken)} broken) are not "
                           f"significant: McNemar p = {comparison.p_value:.3g} >= {alpha:g}")
    return Decision(not reasons, tuple(reasons), min_delta, require_significant, alpha)
