"""What the router's capture gives the loop: feedback from the shell, and the captured conversations with
everything the request log knows of them.

    feedback("3f2a…", score=-1, correction="Paris is the capital of France.")
    for c in conversations("demo", since=time.time() - 7 * 86400): ...

`feedback` writes to the state directory itself, with the same checks and the same redaction as the
router's POST /feedback (router.capture.record_feedback): it works whether the router runs or not, needs
no token and no network, and SQLite (WAL) lets it write beside a running router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..router.capture import Captured, CaptureStore, capture_path, record_feedback
from ..router.log import RequestLog, RequestRow, UnknownRequest

CHAT_ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system turn


def feedback(request_id: str, score: float, correction: str | None = None, label: str | None = None) -> dict:
    """Record the feedback on a request the router answered (which experiment's, the request log says)."""
    from ..router.experiment import load

    if not math.isfinite(score):
        raise InputError(f"--score {score} is not a finite number", "e.g. --score 1 (good), 0 or -1 (bad), or 1-5")
    for key, value in (("--correction", correction), ("--label", label)):
        if value is not None and not value.strip():
            raise InputError(f"{key} is empty", f"give the text, or leave {key} out")
    with RequestLog() as log:
        row = log.row(request_id)
        if row is None:
            raise UnknownRequest(f"no request {request_id!r} in the request log",
                                 "give the X-Request-Id header of a response from the router")
        experiment = load(row.experiment)
        record_feedback(experiment, log, request_id, score, correction, label)
    return {"request_id": request_id, "experiment": experiment.name, "score": score, "correction": correction,
            "label": label}


@dataclass(frozen=True)
class Conversation:
    """One captured request: what was asked and answered, and its request log row (None if it is gone)."""

    captured: Captured
    logged: RequestRow | None

    def fields(self) -> dict:
        """The fields `harvest --where` reads (loop.where.FIELDS)."""
        r, c = self.logged, self.captured
        return {"feedback": r.feedback if r else None, "latency": r.latency_s if r else None,
                "ttft": r.ttft_s if r else None, "status": r.status if r else None,
                "prompt_tokens": r.prompt_tokens if r else None, "completion_tokens": r.completion_tokens if r else None,
                "response_chars": r.response_chars if r else None, "finish_reason": r.finish_reason if r else None,
                "error": r.error if r else None, "arm": c.arm, "route": c.route, "correction": c.correction,
                "label": c.label}

    def prompt(self) -> list[dict] | None:
        """The request as chat messages (a generate request's system and prompt become a system and a user
        turn); None when it is not a chat of system, user and assistant turns ending with the user's."""
        c = self.captured
        if c.messages is not None:
            messages = [{"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"]} for m in c.messages]
        elif c.prompt is not None:
            messages = ([{"role": "system", "content": c.system}] if c.system else []) + \
                [{"role": "user", "content": c.prompt}]
        else:
            return None
        if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            return None
        if any(m["role"] not in CHAT_ROLES for m in messages):
            return None
        return messages


def conversations(name: str, since: float | None = None) -> list[Conversation]:
    """The conversations experiment `name` captured since `since` (all that retention kept by default)."""
    from ..router.experiment import check_name, load

    experiment = load(check_name(name))
    path = capture_path(experiment.name)
    if not path.exists():
        if experiment.capture is None:
            raise InputError(f"{experiment.name} has captured no conversations (capture is off)",
                             f"start it with capture on: localserve ab start {experiment.name} --capture")
        return []
    with CaptureStore(path) as store:
        captured = store.rows(since)
    with RequestLog() as log:
        logged = {r.id: r for r in log.rows(experiment.name, since=since)}
    return [Conversation(c, logged.get(c.request_id)) for c in captured]
