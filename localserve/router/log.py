"""The router's request log: one row per routed request, feedback, and every weight change. One SQLite
file (WAL) in the state directory, beside the version store but apart from it, so that logging traffic
never waits on a promotion and the other way round.

Each row is committed before its response completes (the router writes it before the last line of a
stream), so a client that reads a request id can post feedback for it at once, and a router killed at
any moment leaves every finished request logged. synchronous=NORMAL: in WAL mode a commit survives the
process being killed; only a power cut can lose the last commits.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from ..paths import state_dir
from ..statedb import open_state_db, transaction

DB_FILE = "router.db"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,             -- the request id, returned in X-Request-Id
        experiment TEXT NOT NULL,        -- the model name clients ask for (the alias)
        at REAL NOT NULL,                -- unix time the router received the request
        route TEXT NOT NULL,             -- /api/chat, /api/generate, /v1/chat/completions, /v1/completions
        arm TEXT NOT NULL,               -- the version that answered, NAME:vN
        user_hash TEXT NOT NULL,
        stream INTEGER NOT NULL,
        status INTEGER NOT NULL,         -- the HTTP status the client got
        latency_s REAL NOT NULL,         -- received to last byte
        ttft_s REAL,                     -- received to first content (streamed requests)
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        finish_reason TEXT,              -- done_reason (Ollama) / finish_reason (OpenAI)
        response_chars INTEGER,
        error TEXT                       -- why the request failed, also mid-stream under HTTP 200
    );
    CREATE INDEX requests_experiment_at ON requests (experiment, at);
    CREATE TABLE feedback (
        request_id TEXT PRIMARY KEY REFERENCES requests(id),
        score REAL NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE weights (
        id INTEGER PRIMARY KEY,
        experiment TEXT NOT NULL,
        at REAL NOT NULL,
        weights TEXT NOT NULL,           -- {version: weight}
        reason TEXT NOT NULL
    );
    """,
    # the captures an experiment's router could not write (router.capture): counts, no content
    """
    CREATE TABLE capture_drops (
        id INTEGER PRIMARY KEY,
        experiment TEXT NOT NULL,
        at REAL NOT NULL,
        count INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX capture_drops_experiment_at ON capture_drops (experiment, at);
    """,
)


@dataclass
class RequestRow:
    id: str
    experiment: str
    at: float
    route: str
    arm: str
    user_hash: str
    stream: bool
    status: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    response_chars: int | None = None
    error: str | None = None
    feedback: float | None = field(default=None, compare=False)

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.error is not None

    def to_json(self) -> dict:
        return asdict(self)


COLUMNS = ("id", "experiment", "at", "route", "arm", "user_hash", "stream", "status", "latency_s", "ttft_s",
           "prompt_tokens", "completion_tokens", "finish_reason", "response_chars", "error")


_SELECT = (f"SELECT {', '.join('r.' + c for c in COLUMNS)}, f.score FROM requests r "
           "LEFT JOIN feedback f ON f.request_id = r.id")


def _row(values) -> RequestRow:
    """A row from SELECT COLUMNS, score."""
    row = RequestRow(*values[:-1], feedback=values[-1])
    row.stream = bool(row.stream)
    return row


class UnknownRequest(InputError):
    """Feedback for a request id the log does not have."""


class RequestLog:
    """The log at `path` (default STATE_DIR/router.db), created and migrated on first use."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else state_dir() / DB_FILE
        # shared by the router's worker threads; every write is one statement or one transaction
        self.db = open_state_db(self.path, "the request log", MIGRATIONS, pragmas=("synchronous=NORMAL",),
                                check_same_thread=False)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "RequestLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing (the router) -----------------------------------------------------------------------
    def add(self, row: RequestRow) -> None:
        values = [getattr(row, c) for c in COLUMNS]
        values[COLUMNS.index("stream")] = int(row.stream)
        self.db.execute(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        values)

    def add_many(self, rows: Iterable[RequestRow]) -> None:
        with transaction(self.db):
            for row in rows:
                self.add(row)

    def add_feedback(self, request_id: str, score: float, at: float | None = None) -> None:
        """Record (or replace) the user's score for a request."""
        if self.db.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone() is None:
            raise UnknownRequest(f"no request {request_id!r} in the log",
                                 "post the X-Request-Id header of a response from the router")
        self.db.execute("INSERT OR REPLACE INTO feedback (request_id, score, at) VALUES (?, ?, ?)",
                        (request_id, float(score), at if at is not None else time.time()))

    def add_weights(self, experiment: str, weights: dict[str, float], reason: str, at: float | None = None) -> None:
        self.db.execute("INSERT INTO weights (experiment, at, weights, reason) VALUES (?, ?, ?, ?)",
                        (experiment, at if at is not None else time.time(), json.dumps(weights), reason))

    def add_capture_drops(self, experiment: str, count: int, reason: str, at: float | None = None) -> None:
        self.db.execute("INSERT INTO capture_drops (experiment, at, count, reason) VALUES (?, ?, ?, ?)",
                        (experiment, at if at is not None else time.time(), count, reason))

    # --- reading (report, decide, drift) --------------------------------------------------------------
    def row(self, request_id: str) -> RequestRow | None:
        """One request with its feedback, or None."""
        values = self.db.execute(f"{_SELECT} WHERE r.id = ?", (request_id,)).fetchone()
        return None if values is None else _row(values)

    def capture_drops(self, experiment: str, since: float | None = None) -> dict[str, int]:
        """The captures dropped since `since`, by reason."""
        cur = self.db.execute("SELECT reason, SUM(count) FROM capture_drops WHERE experiment = ? AND at >= ? "
                              "GROUP BY reason ORDER BY MIN(at)", (experiment, since or 0.0))
        return {reason: n for reason, n in cur}

    def rows(self, experiment: str, since: float | None = None, until: float | None = None,
             arm: str | None = None) -> list[RequestRow]:
        clauses, args = ["r.experiment = ?"], [experiment]
        if since is not None:
            clauses.append("r.at >= ?")
            args.append(since)
        if until is not None:
            clauses.append("r.at < ?")
            args.append(until)
        if arm is not None:
            clauses.append("r.arm = ?")
            args.append(arm)
        cur = self.db.execute(f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY r.at", args)
        return [_row(values) for values in cur]

    def count(self, experiment: str, since: float | None = None) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM requests WHERE experiment = ? AND at >= ?",
                               (experiment, since or 0.0)).fetchone()
        return n

    def weight_history(self, experiment: str, since: float | None = None) -> list[dict]:
        cur = self.db.execute("SELECT at, weights, reason FROM weights WHERE experiment = ? AND at >= ? ORDER BY id",
                              (experiment, since or 0.0))
        return [{"at": at, "weights": json.loads(w), "reason": reason} for at, w, reason in cur]
