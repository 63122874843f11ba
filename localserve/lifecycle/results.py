"""What an evaluation produces, shared by suites, targets, the gate and the reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..runtimes.chat import Answer  # noqa: F401  (one answer type for every engine; it lives with them)


@dataclass(frozen=True)
class AssertionResult:
    type: str
    passed: bool
    score: float  # 0..1
    reason: str  # one line: what was expected and what came
    weight: float = 1.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    answer: Answer
    results: tuple[AssertionResult, ...]
    critical: bool = False

    @property
    def passed(self) -> bool:
        return self.answer.error is None and all(r.passed for r in self.results)

    @property
    def score(self) -> float:
        """The weighted mean of the assertions' scores (0 when the engine failed)."""
        if self.answer.error is not None:
            return 0.0
        total = sum(r.weight for r in self.results)
        return sum(r.score * r.weight for r in self.results) / total if total else float(self.passed)

    def to_json(self) -> dict:
        return {"case_id": self.case_id, "passed": self.passed, "score": self.score, "critical": self.critical,
                "answer": self.answer.to_json(), "results": [r.to_json() for r in self.results]}


@dataclass(frozen=True)
class EvalRun:
    """One suite on one target."""

    suite: str  # the suite file
    suite_sha256: str
    target: str  # as the user named it
    target_info: dict[str, Any]  # what it resolved to: engine, file, digest, version...
    cases: tuple[CaseResult, ...]
    started_at: str
    settings: dict[str, Any] = field(default_factory=dict)  # seed, temperature, max_tokens

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def score(self) -> float:
        return sum(c.score for c in self.cases) / len(self.cases) if self.cases else 0.0

    def case(self, case_id: str) -> CaseResult:
        return next(c for c in self.cases if c.case_id == case_id)

    def to_json(self) -> dict:
        return {"suite": self.suite, "suite_sha256": self.suite_sha256, "target": self.target,
                "target_info": self.target_info, "started_at": self.started_at, "settings": self.settings,
                "passed": self.passed, "total": len(self.cases), "score": self.score,
                "cases": [c.to_json() for c in self.cases]}
