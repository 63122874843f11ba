"""Harvest: captured failures become training data, cases for review, and golden-suite cases.

    result = harvest(HarvestSpec("demo", data=Path("new.jsonl"), review=Path("review.jsonl"),
                                 suite=Path("cases.yaml"), since_s=7 * 86400))

Of the conversations the router captured (router.capture), those the --where condition picks
(loop.where; by default a correction, negative feedback, an answer cut by the token limit, or an error):

- with a correction: one line of chat JSONL, `{"messages": [...]}` as TRL, Unsloth and Axolotl read it
  — the request's turns (a system prompt stays a system turn), then the correction as the assistant's.
  Requests whose prompts are the same once case-folded and whitespace-collapsed give one line: the latest
  correction's.
- without one: a line of the review file (the prompt, the answer given, what went wrong), for a person
  to correct (`localserve feedback ID --score ... --correction ...`) — never silently training data.
- with --suite, each harvested example also as a promptfoo test case (vars.messages, an assertion built
  from the correction, metadata {source: harvest, request_id}); an existing suite file grows.

Every file is written to a temporary name and renamed once all are complete.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..errors import InputError
from ..fsutil import atomic_path
from .capture import Conversation, conversations
from .where import parse_where

DEFAULT_WHERE = "correction or feedback < 0 or finish_reason = length or error"
SHORT_CORRECTION = 80  # characters: a correction this short must appear in the answer (icontains)


@dataclass(frozen=True)
class HarvestSpec:
    name: str
    data: Path
    review: Path | None = None  # default: DATA with .review.jsonl beside it
    suite: Path | None = None
    since_s: float | None = None  # default: every capture retention kept
    where: str = DEFAULT_WHERE

    @property
    def review_path(self) -> Path:
        return self.review or self.data.with_name(self.data.name.removesuffix(".jsonl") + ".review.jsonl")


@dataclass
class HarvestResult:
    name: str
    where: str
    considered: int = 0  # captured conversations in the window
    matched: int = 0  # of which --where picked
    harvested: int = 0  # lines of training data
    deduplicated: int = 0  # picked conversations left out because another had the same prompt
    to_review: int = 0
    skipped: int = 0  # picked, but not a chat that ends with a user turn (no prompt to train on)
    suite_cases: int = 0  # cases added to the suite
    files: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def normalized(messages: list[dict]) -> tuple:
    """What makes two prompts the same: each turn's role and its text, case-folded, whitespace collapsed."""
    return tuple((m["role"], " ".join(m["content"].casefold().split())) for m in messages)


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, timezone.utc).isoformat()


def review_line(c: Conversation, prompt: list[dict]) -> dict:
    f = c.fields()
    return {"request_id": c.captured.request_id, "at": _iso(c.captured.at), "arm": c.captured.arm,
            "messages": prompt, "answer": c.captured.answer, "feedback": f["feedback"],
            "finish_reason": f["finish_reason"], "error": f["error"], "label": f["label"]}


def assertion_for(correction: str) -> dict:
    """The check a harvested case makes: a short correction must appear in the answer (case ignored); a longer
    one must be within an edit distance of a fifth of its length (localserve runs no model-graded checks)."""
    text = correction.strip()
    # promptfoo and localserve render assertion values as templates: keep the correction's braces literal
    value = f"{{% raw %}}{text}{{% endraw %}}" if any(t in text for t in ("{{", "{%", "{#")) else text
    if len(text) <= SHORT_CORRECTION and "\n" not in text:
        return {"type": "icontains", "value": value}
    return {"type": "levenshtein", "value": value, "threshold": max(5, len(text) // 5)}


def suite_case(request_id: str, messages: list[dict], correction: str) -> dict:
    return {"description": f"harvested: request {request_id}", "vars": {"messages": messages},
            "assert": [assertion_for(correction)], "metadata": {"source": "harvest", "request_id": request_id}}


def _grown_suite(path: Path, cases: list[dict]) -> tuple[dict | list, int]:
    """The suite at `path` (if any) with the cases it does not hold yet (by request id); how many were added."""
    if not path.exists():
        return {"description": f"harvested cases ({path.stem})", "tests": cases}, len(cases)
    try:
        existing = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"the suite {path} cannot be read ({' '.join(str(e).split())})",
                         "fix it, or give --suite a new file") from None
    tests = existing if isinstance(existing, list) else existing.get("tests") if isinstance(existing, dict) else None
    if not isinstance(tests, list):
        raise InputError(f"the suite {path} has no `tests:` list to add cases to",
                         "give --suite a promptfoo test file or a new file")
    known = {(t.get("metadata") or {}).get("request_id") for t in tests if isinstance(t, dict)
             and isinstance(t.get("metadata"), dict)}
    new = [c for c in cases if c["metadata"]["request_id"] not in known]
    tests.extend(new)
    return existing, len(new)


def _check_suite(text: str, name: str) -> None:
    """The suite must load where the golden-suite gate reads it."""
    from ..lifecycle.suites import load_suite

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / name
        probe.write_text(text, encoding="utf-8")
        load_suite(probe)


def harvest(spec: HarvestSpec) -> HarvestResult:
    where = parse_where(spec.where)  # refused before anything is read
    if spec.suite is not None and spec.suite.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"--suite {spec.suite} is not a .yaml file", "name the suite file.yaml")
    outputs = [p for p in (spec.data, spec.review_path, spec.suite) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise InputError("--data, --review and --suite name the same file", "give each its own file")
    since = None if spec.since_s is None else time.time() - spec.since_s
    found = conversations(spec.name, since)
    result = HarvestResult(spec.name, spec.where, considered=len(found))

    corrected: dict[tuple, tuple[Conversation, list[dict]]] = {}
    uncorrected: dict[tuple, tuple[Conversation, list[dict]]] = {}
    for c in found:
        if not where(c.fields()):
            continue
        result.matched += 1
        prompt = c.prompt()
        if prompt is None:
            result.skipped += 1
            continue
        key = normalized(prompt)
        if c.captured.correction and c.captured.correction.strip():
            held = corrected.get(key)
            if held is not None:
                result.deduplicated += 1
            if held is None or (c.captured.corrected_at or 0) >= (held[0].captured.corrected_at or 0):
                corrected[key] = (c, prompt)
        else:
            if key in uncorrected:
                result.deduplicated += 1
            uncorrected[key] = (c, prompt)  # the latest capture (they come oldest first)
    for key in [k for k in uncorrected if k in corrected]:  # a correction of the same prompt covers it
        del uncorrected[key]
        result.deduplicated += 1

    examples = sorted(corrected.values(), key=lambda e: e[0].captured.at)
    reviews = sorted(uncorrected.values(), key=lambda e: e[0].captured.at)
    result.harvested, result.to_review = len(examples), len(reviews)
    data_text = "".join(json.dumps({"messages": [*prompt, {"role": "assistant", "content": c.captured.correction}]},
                                   ensure_ascii=False) + "\n" for c, prompt in examples)
    review_text = "".join(json.dumps(review_line(c, prompt), ensure_ascii=False) + "\n" for c, prompt in reviews)
    texts = {spec.data: data_text, spec.review_path: review_text}
    if spec.suite is not None:
        cases = [suite_case(c.captured.request_id, prompt, c.captured.correction) for c, prompt in examples]
        suite, result.suite_cases = _grown_suite(spec.suite, cases)
        if result.suite_cases:  # nothing new: the file stays as it is (or absent)
            suite_text = yaml.safe_dump(suite, sort_keys=False, allow_unicode=True, width=100)
            _check_suite(suite_text, spec.suite.name)
            texts[spec.suite] = suite_text
    with contextlib.ExitStack() as stack:  # every file complete before any is renamed into place
        for path, text in texts.items():
            tmp = stack.enter_context(atomic_path(path))
            tmp.write_text(text, encoding="utf-8")
    result.files = {"data": str(spec.data), "review": str(spec.review_path),
                    "suite": str(spec.suite) if spec.suite else None}
    return result
