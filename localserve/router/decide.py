"""The verdict of an experiment: does the candidate meet the success condition against the control?

    verdict = decide("demo", "error_rate <= control + 0.01 and p95_latency <= 1.2 * control "
                             "and feedback >= control", min_requests=100)

The condition is clauses `METRIC OP EXPRESSION` joined by `and`, like an Argo Rollouts analysis: the
metric on the left is the candidate's; in the expression, `control` is the control's value of that
same metric, `control.METRIC` any of the control's, a bare metric the candidate's, with numbers,
+ - * / and parentheses. It is parsed here — never handed to eval(). Metrics: see stats.METRICS.

    both arms below `min_requests`, or a clause without data   -> wait (nothing changes)
    every clause holds                                         -> promote: NAME:latest -> candidate through
                                                                  lifecycle.promotion.promote (its gate runs the
                                                                  golden suite when given), all traffic to it
    a clause fails (or the gate refuses)                       -> roll back: the candidate's weight to 0

Every promote or roll-back is an event on the candidate version in the version store, with the
condition, each clause's values, both arms' measurements and the tests between them.
"""

from __future__ import annotations

import operator
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InputError, UnknownName
from .stats import METRICS, ArmStats, Report

# --- the success condition ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<op><=|>=|==|!=|<|>|[-+*/()])"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?))")
COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
               "!=": operator.ne}
ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
FORM = "METRIC OP EXPRESSION [and ...], e.g. \"error_rate <= control + 0.01 and p95_latency <= 1.2 * control\""


class ConditionError(InputError):
    """A --success condition that does not parse."""


@dataclass(frozen=True)
class Clause:
    text: str
    metric: str
    op: str
    expression: tuple  # a small tree: ("num", x) | ("control", metric) | ("metric", metric) | (op, a, b) | ("neg", a)


class Token(tuple):
    """(kind, value), and `pos`: where it starts in the text (for errors that name the place)."""

    def __new__(cls, kind: str, value: str, pos: int):
        token = super().__new__(cls, (kind, value))
        token.pos = pos
        return token


def _tokens(text: str, pattern: re.Pattern = _TOKEN, unreadable=None) -> list[Token]:
    """The tokens of `text`; `unreadable(pos)` makes the error for text that is no token (default: decide's)."""
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = pattern.match(text, pos)
        if not m or m.end() == pos:
            if unreadable is not None:
                raise unreadable(pos + len(text[pos:]) - len(text[pos:].lstrip()))
            raise ConditionError(f"cannot read the condition at {text[pos:].strip()[:20]!r}", f"write {FORM}")
        kind = m.lastgroup
        out.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _metric(name: str) -> str:
    if name not in METRICS:
        raise UnknownName("metric", name, list(METRICS), f"write {FORM}")
    return name


class _Parser:
    """The arithmetic of an expression (numbers, names, + - * /, parentheses). A subclass may name what a
    name means (`name`) and say where an error is (`error`)."""

    def __init__(self, tokens: list[Token], metric: str):
        self.tokens, self.i, self.metric = tokens, 0, metric

    def error(self, message: str, token: Token | None = None) -> ConditionError:
        return ConditionError(message, f"write {FORM}")

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error("the condition ends too early")
        self.i += 1
        return tok

    def name(self, value: str) -> tuple:
        if value == "control":
            return ("control", self.metric)
        if value.startswith("control."):
            return ("control", _metric(value.split(".", 1)[1]))
        if value == "and":
            raise ConditionError("an expression is missing before 'and'", f"write {FORM}")
        return ("metric", _metric(value))

    def expression(self) -> tuple:
        node = self.term()
        while (tok := self.peek()) and tok[1] in "+-" and tok[0] == "op":
            self.take()
            node = (tok[1], node, self.term())
        return node

    def term(self) -> tuple:
        node = self.factor()
        while (tok := self.peek()) and tok[1] in "*/" and tok[0] == "op":
            self.take()
            node = (tok[1], node, self.factor())
        return node

    def factor(self) -> tuple:
        token = self.take()
        kind, value = token
        if kind == "num":
            return ("num", float(value))
        if kind == "op" and value == "-":
            return ("neg", self.factor())
        if kind == "op" and value == "(":
            node = self.expression()
            if self.peek() != ("op", ")"):
                raise self.error("a '(' is not closed", token)
            self.take()
            return node
        if kind == "name":
            return self.name(value)
        raise self.error(f"unexpected {value!r} in the condition", token)


def parse_condition(text: str) -> tuple[Clause, ...]:
    """'error_rate <= control + 0.01 and feedback >= control' -> its clauses."""
    if not text or not text.strip():
        raise ConditionError("the success condition is empty", f"write {FORM}")
    parts = re.split(r"\s+and\s+", text.strip())
    clauses = []
    for part in parts:
        tokens = _tokens(part)
        if len(tokens) < 3 or tokens[0][0] != "name":
            raise ConditionError(f"{part!r} is not METRIC OP EXPRESSION", f"write {FORM}")
        metric = _metric(tokens[0][1])
        op = tokens[1][1]
        if op not in COMPARISONS:
            raise ConditionError(f"{part!r}: {op!r} is not one of {', '.join(COMPARISONS)}", f"write {FORM}")
        parser = _Parser(tokens[2:], metric)
        tree = parser.expression()
        if parser.peek() is not None:
            raise ConditionError(f"{part!r}: unexpected {parser.peek()[1]!r}", f"write {FORM}")
        clauses.append(Clause(part, metric, op, tree))
    return tuple(clauses)


def value_of(node: tuple, leaf: Callable[[tuple], float | None]) -> float | None:
    """The number an expression tree stands for; `leaf` gives a name's ((kind, name) node's) value.
    None when a value it needs is unknown, or on a division by zero."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "neg":
        v = value_of(node[1], leaf)
        return None if v is None else -v
    if kind not in ARITHMETIC:
        return leaf(node)
    a, b = value_of(node[1], leaf), value_of(node[2], leaf)
    if a is None or b is None or (kind == "/" and b == 0):
        return None
    return ARITHMETIC[kind](a, b)


def _value(node: tuple, candidate: ArmStats, control: ArmStats) -> float | None:
    return value_of(node, lambda leaf: (control if leaf[0] == "control" else candidate).metric(leaf[1]))


@dataclass(frozen=True)
class ClauseResult:
    clause: str
    metric: str
    candidate: float | None
    bound: float | None
    holds: bool | None  # None: no data to tell

    def to_json(self) -> dict:
        return {"clause": self.clause, "metric": self.metric, "candidate": self.candidate, "bound": self.bound,
                "holds": self.holds}


def evaluate_condition(clauses: tuple[Clause, ...], candidate: ArmStats, control: ArmStats) -> list[ClauseResult]:
    out = []
    for c in clauses:
        left, right = candidate.metric(c.metric), _value(c.expression, candidate, control)
        holds = None if left is None or right is None else bool(COMPARISONS[c.op](left, right))
        out.append(ClauseResult(c.text, c.metric, left, right, holds))
    return out


# --- the verdict -------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    action: str  # promote | rollback | wait
    experiment: str
    candidate: str
    control: str
    condition: str
    min_requests: int
    clauses: list[ClauseResult]
    reasons: list[str]
    report: Report
    at: float = field(default_factory=time.time)
    applied: list[str] = field(default_factory=list)  # what was done: promoted, weights set, event ids

    def evidence(self) -> dict:
        cand, ctrl = self.report.arm(self.candidate), self.report.arm(self.control)
        return {"ab": {"experiment": self.experiment, "action": self.action, "condition": self.condition,
                       "min_requests": self.min_requests, "clauses": [c.to_json() for c in self.clauses],
                       "reasons": self.reasons, "candidate": cand.to_json(), "control": ctrl.to_json(),
                       "tests": [t.to_json() for t in self.report.tests.get(self.candidate, ())],
                       "window": [self.report.since, self.report.until], "source": self.report.source}}

    def to_json(self) -> dict:
        return {**self.evidence()["ab"], "candidate_version": self.candidate, "control_version": self.control,
                "applied": self.applied, "at": self.at}


def choose_candidate(experiment, candidate: str | None) -> str:
    if candidate:
        experiment.arm(candidate)  # refuses an unknown arm
        if candidate == experiment.control:
            raise InputError(f"{candidate} is the control of {experiment.name}", "name another arm as --candidate")
        return candidate
    live = [a.version for a in experiment.arms if a.version != experiment.control and a.weight > 0]
    if not live:
        raise InputError(f"{experiment.name} has no candidate arm with a weight above 0 (the last verdict may "
                         "have been taken already)", f"see `localserve ab report {experiment.name}`")
    if len(live) > 1:
        raise InputError(f"{experiment.name} has several candidate arms ({', '.join(live)})",
                         "name one with --candidate")
    return live[0]


def judge(report: Report, candidate: str, condition: str, min_requests: int) -> Verdict:
    """The verdict on a report, without acting on it."""
    clauses = parse_condition(condition)
    cand, ctrl = report.arm(candidate), report.arm(report.control)
    results = evaluate_condition(clauses, cand, ctrl)
    reasons = []
    short = [a for a in (cand, ctrl) if a.requests < min_requests]
    if short:
        reasons = [f"{a.version} has {a.requests} requests, fewer than the {min_requests} required" for a in short]
        action = "wait"
    elif any(r.holds is False for r in results):
        action = "rollback"
        reasons = [f"{r.clause} fails: {r.candidate:.4g} against {r.bound:.4g}" for r in results if r.holds is False]
    elif any(r.holds is None for r in results):
        action = "wait"
        reasons = [f"{r.clause}: no data yet ({r.metric} is unknown on one arm)" for r in results if r.holds is None]
    else:
        action = "promote"
        reasons = [f"{r.clause} holds: {r.candidate:.4g} against {r.bound:.4g}" for r in results]
    return Verdict(action, report.experiment, candidate, report.control, condition, min_requests, results, reasons,
                   report)


def condition_metrics(clauses: tuple[Clause, ...]) -> list[str]:
    """Every metric a condition reads, on either arm."""
    def names(node: tuple):
        if node[0] in ("control", "metric"):
            yield node[1]
        elif node[0] != "num":
            for child in node[1:]:
                yield from names(child)

    return [m for c in clauses for m in (c.metric, *names(c.expression))]


def decide(name: str, condition: str, *, candidate: str | None = None, min_requests: int = 100, suite=None,
           apply: bool = True, store=None, since: float | None = None, source=None) -> Verdict:
    """Judge experiment `name` and, with `apply`, act: promote (through the gate) or roll back.

    `source` (router.sources): where the arms' traffic is read; default the local router's log."""
    from . import experiment as ex
    from .sources import RouterLog, check_metrics

    exp = ex.load(ex.check_name(name))
    source = source or RouterLog()
    check_metrics(condition_metrics(parse_condition(condition)), source)  # refused before anything is read
    chosen = choose_candidate(exp, candidate)
    report = source.report(exp, since=since)
    verdict = judge(report, chosen, condition, min_requests)
    if apply and verdict.action != "wait":
        act(exp, verdict, suite=suite, store=store)
    return verdict


def act(exp, verdict: Verdict, *, suite=None, store=None) -> None:
    from ..lifecycle.places import ServerPlace
    from ..lifecycle.promotion import PromotionRefused, promote
    from ..lifecycle.store import VersionStore
    from . import experiment as ex

    own = store is None
    store = store or VersionStore()
    try:
        arm = exp.arm(verdict.candidate)
        alias = f"{exp.name}:latest"
        if verdict.action == "promote":
            if arm.engine == "ollama":
                place = ServerPlace(arm.url)
                try:
                    promote(verdict.candidate, alias, place, store=store, suite=suite, evidence=verdict.evidence(),
                            note=f"ab decide: {verdict.condition}")
                    verdict.applied.append(f"{alias} -> {verdict.candidate} on {place.id}")
                except PromotionRefused as e:
                    verdict.action = "rollback"
                    verdict.reasons.append("the golden-suite gate refused: " + e.message.splitlines()[0])
                    verdict.applied.append(f"the gate refused {verdict.candidate} (event recorded)")
            else:  # a model on an OpenAI-compatible server has no alias to move: the traffic is the promotion
                store.add_event(arm.url, alias, "ab-promote", verdict.candidate, previous=verdict.control,
                                payload=verdict.evidence())
                verdict.applied.append(f"ab-promote event for {verdict.candidate}")
        if verdict.action == "promote":
            weights = {a.version: (100.0 if a.version == verdict.candidate else 0.0) for a in exp.arms}
            ex.set_weights(exp.name, weights, reason=f"ab decide: promote {verdict.candidate}")
            verdict.applied.append(f"all traffic to {verdict.candidate}")
        else:
            target = ServerPlace(arm.url).id if arm.engine == "ollama" else arm.url
            store.add_event(target, alias, "ab-rollback", verdict.candidate, previous=verdict.control,
                            payload=verdict.evidence())
            ex.set_weights(exp.name, {verdict.candidate: 0.0}, reason=f"ab decide: roll back {verdict.candidate}")
            verdict.applied.append(f"{verdict.candidate} weight 0 (ab-rollback event recorded)")
    finally:
        if own:
            store.close()


def decide_auto(name: str, condition: str, *, every: int, on_verdict: Callable[[Verdict], None] | None = None,
                poll_s: float = 1.0, timeout_s: float | None = None, **kw) -> Verdict | None:
    """Judge after every `every` requests until a verdict other than wait is taken (and applied), the
    router stops, or `timeout_s` passes. Returns the last verdict."""
    from . import experiment as ex
    from .log import RequestLog

    if every < 1:
        raise InputError("--auto needs a number of requests >= 1", "e.g. --auto 50")
    if kw.get("source") is not None:
        raise InputError("--auto counts the requests of the local router; vLLM's metrics and LiteLLM's spend "
                         "logs are read when ab decide runs", "run ab decide from a cron job instead of --auto")
    exp = ex.load(ex.check_name(name))
    parse_condition(condition)
    choose_candidate(exp, kw.get("candidate"))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    with RequestLog() as log:
        next_at = (log.count(exp.name, since=exp.started_at) // every + 1) * every
        while True:
            n = log.count(exp.name, since=exp.started_at)
            if n >= next_at:
                last = decide(exp.name, condition, **kw)
                if on_verdict:
                    on_verdict(last)
                if last.action != "wait":
                    return last
                next_at = (n // every + 1) * every
            if not ex.is_running(ex.load(exp.name)) or (deadline is not None and time.monotonic() > deadline):
                return last
            time.sleep(poll_s)
