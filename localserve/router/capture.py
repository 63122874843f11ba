"""Opt-in capture of what an experiment's router was asked and what it answered.

    settings = CaptureSettings.parse(sample=0.5, redact=[r"sk-[A-Za-z0-9]+"], retain="30d")
    writer = CaptureWriter("demo", settings)      # the router's: a thread and a bounded queue
    writer.submit(Capture(...))                     # never blocks, never raises: a full queue is a drop

Off unless `ab start NAME --capture`. Each routed request is kept with probability `sample`, decided
from its request id alone (so the decision can be told again later, e.g. when a correction arrives).
What is kept: the request's messages (chat routes) or prompt and system (generate, completions), the
answer text as it was streamed to the client, the arm, the request id and the time — redacted first:
every match of every --redact pattern is replaced before the capture is queued, so no unredacted text
reaches the queue, the file or its WAL. Corrections and labels posted as feedback are content too: they
are redacted alike and kept in the same file, never in the request log (which stays free of content).

One SQLite file per experiment (STATE/captures/NAME.db), beside the request log: what an experiment
captured can be deleted, kept or handed over as one file, each experiment keeps its own retention,
and a damaged file costs one experiment its captures, not every experiment's.

A capture is written by a background thread, never on the request path: a file that cannot be opened or
written, a lock held too long or a full queue drops the capture, and the request is answered all the
same. Drops are counted in the request log (`ab report` shows them). Retention deletes rows older than
`retain` when the writer starts and every hour after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from ..errors import InputError
from ..paths import state_dir
from ..statedb import open_state_db, transaction

REDACTED = "[REDACTED]"
DEFAULT_RETAIN = "30d"
PRUNE_EVERY_S = 3600.0
QUEUE_SIZE = 1024
BATCH = 256
WRITE_TIMEOUT_MS = 2000  # how long the writer waits for a lock before the batch counts as dropped
REOPEN_AFTER_S = 5.0  # a file that could not be opened is tried again after this long

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE captures (
        request_id TEXT PRIMARY KEY,     -- X-Request-Id, the request log's id
        at REAL NOT NULL,                -- unix time the router received the request
        route TEXT NOT NULL,
        arm TEXT NOT NULL,               -- NAME:vN
        messages TEXT,                   -- JSON [{role, content}] of a chat request (redacted)
        system TEXT,                     -- of a generate request (redacted)
        prompt TEXT,                     -- of a generate or completions request (redacted)
        answer TEXT NOT NULL             -- the answer text as the client received it (redacted)
    );
    CREATE INDEX captures_at ON captures (at);
    CREATE TABLE corrections (
        request_id TEXT PRIMARY KEY,
        at REAL NOT NULL,
        correction TEXT,                 -- the answer that should have been given (redacted)
        label TEXT
    );
    """,
)


def capture_path(name: str) -> Path:
    return state_dir() / "captures" / f"{quote(name, safe='')}.db"


# --- the settings --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptureSettings:
    sample: float = 1.0  # the share of requests kept
    redact: tuple[str, ...] = ()  # regular expressions; every match becomes [REDACTED]
    retain_s: float = 30 * 86400.0

    @classmethod
    def parse(cls, sample: float = 1.0, redact: Iterable[str] = (), retain: str | None = None) -> "CaptureSettings":
        """Checked settings; a bad sample, pattern or duration is one line naming it."""
        from .drift import parse_duration

        if not 0.0 <= sample <= 1.0:
            raise InputError(f"--capture-sample {sample:g} is not a share between 0 and 1", "e.g. --capture-sample 0.1")
        patterns = tuple(redact)
        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as e:
                raise InputError(f"--redact {pattern!r} is not a regular expression ({e.msg} at position {e.pos})",
                                 "fix it; a character with a meaning in regular expressions is escaped with \\") \
                    from None
            if compiled.search(""):
                raise InputError(f"--redact {pattern!r} matches empty text, so it would redact between every character",
                                 "make it match at least one character (+ instead of *)")
        return cls(float(sample), patterns, parse_duration(retain or DEFAULT_RETAIN))

    def to_json(self) -> dict:
        return {"sample": self.sample, "redact": list(self.redact), "retain_s": self.retain_s}

    @classmethod
    def from_json(cls, data: Mapping) -> "CaptureSettings":
        return cls(float(data["sample"]), tuple(data.get("redact") or ()), float(data["retain_s"]))

    def sampled(self, request_id: str) -> bool:
        """Whether the request `request_id` is captured: the same answer for the same id, every time."""
        if self.sample >= 1.0:
            return True
        digest = hashlib.sha256(f"capture\0{request_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < self.sample

    def redactor(self) -> "Redactor":
        return Redactor(self.redact)


class Redactor:
    def __init__(self, patterns: Sequence[str]):
        self.patterns = [re.compile(p) for p in patterns]

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text


# --- what is kept ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capture:
    request_id: str
    at: float
    route: str
    arm: str
    messages: tuple[dict, ...] | None  # [{role, content}] of a chat request
    system: str | None
    prompt: str | None
    answer: str


def _text(content: Any) -> str:
    """A message's text: a string, or OpenAI's content parts (their text parts; images are not kept)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def conversation(route: str, body: Mapping) -> tuple[tuple[dict, ...] | None, str | None, str | None]:
    """(messages, system, prompt) of a routed request's body, text only."""
    if route in ("/api/chat", "/v1/chat/completions"):
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        return tuple({"role": str(m.get("role")), "content": _text(m.get("content"))}
                     for m in messages if isinstance(m, dict)), None, None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:  # /v1/completions takes a batch of one as a list
        prompt = prompt[0]
    system = body.get("system") if isinstance(body.get("system"), str) else None
    return None, system, prompt if isinstance(prompt, str) else None


def make_capture(redact: Redactor, request_id: str, at: float, route: str, arm: str, body: Mapping,
                 answer: str) -> Capture:
    """The capture of one request, redacted."""
    messages, system, prompt = conversation(route, body)
    if messages is not None:
        messages = tuple({**m, "content": redact(m["content"])} for m in messages)
    return Capture(request_id, at, route, arm, messages, redact(system), redact(prompt), redact(answer))


@dataclass(frozen=True)
class Captured:
    """A capture read back, with its correction if one was posted."""

    request_id: str
    at: float
    route: str
    arm: str
    messages: tuple[dict, ...] | None
    system: str | None
    prompt: str | None
    answer: str
    correction: str | None = None
    label: str | None = None
    corrected_at: float | None = None


# --- the file ---------------------------------------------------------------------------------------------

class CaptureStore:
    """The capture file of one experiment, created and migrated on first use."""

    def __init__(self, path: Path, busy_timeout_ms: int | None = None):
        self.path = Path(path)
        pragmas = ("synchronous=NORMAL",) + ((f"busy_timeout={busy_timeout_ms}",) if busy_timeout_ms else ())
        self.db = open_state_db(self.path, "the capture database", MIGRATIONS, pragmas=pragmas)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "CaptureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _damaged(self, e: sqlite3.DatabaseError) -> InputError:
        return InputError(f"the capture database {self.path} cannot be read ({e})",
                          "move the file away to start a new one; it is only written by localserve")

    def add_many(self, captures: Iterable[Capture]) -> None:
        with transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO captures (request_id, at, route, arm, messages, system, prompt, answer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.request_id, c.at, c.route, c.arm, None if c.messages is None else json.dumps(c.messages),
                  c.system, c.prompt, c.answer) for c in captures])

    def correct(self, request_id: str, correction: str | None, label: str | None, at: float | None = None) -> None:
        """Record (or replace) the correction and label of a request."""
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO corrections (request_id, at, correction, label) VALUES (?, ?, ?, ?)",
                            (request_id, time.time() if at is None else at, correction, label))

    def prune(self, before: float) -> int:
        """Delete the captures received before `before`, and corrections of nothing kept; returns how many."""
        with transaction(self.db):
            n = self.db.execute("DELETE FROM captures WHERE at < ?", (before,)).rowcount
            self.db.execute("DELETE FROM corrections WHERE at < ? AND request_id NOT IN "
                            "(SELECT request_id FROM captures)", (before,))
        return n

    def count(self) -> int:
        try:
            return self.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def rows(self, since: float | None = None) -> list[Captured]:
        """The captures received since `since`, oldest first, each with its correction."""
        try:
            cur = self.db.execute(
                "SELECT c.request_id, c.at, c.route, c.arm, c.messages, c.system, c.prompt, c.answer, "
                "k.correction, k.label, k.at FROM captures c LEFT JOIN corrections k ON k.request_id = c.request_id "
                "WHERE c.at >= ? ORDER BY c.at, c.request_id", (since or 0.0,))
            return [Captured(rid, at, route, arm, None if messages is None else tuple(json.loads(messages)), system,
                             prompt, answer, correction, label, corrected_at)
                    for rid, at, route, arm, messages, system, prompt, answer, correction, label, corrected_at in cur]
        except (sqlite3.DatabaseError, ValueError) as e:
            raise self._damaged(e) from None


# --- the router's writer ---------------------------------------------------------------------------------------

@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0
    pruned: int = 0
    last_error: str | None = None

    def to_json(self) -> dict:
        return {"written": self.written, "dropped": self.dropped, "pruned": self.pruned, "last_error": self.last_error}


_STOP = object()


class CaptureWriter:
    """The router's capture: `submit` queues a capture and returns at once; a thread writes them in batches.

    Whatever goes wrong on the way to the file (it cannot be opened, a write fails or waits too long, the
    queue is full) drops the capture and counts it; the count goes into the request log."""

    def __init__(self, experiment: str, settings: CaptureSettings, path: Path | None = None,
                 queue_size: int = QUEUE_SIZE, log_path: Path | None = None):
        self.experiment = experiment
        self.settings = settings
        self.redact = settings.redactor()
        self.path = path or capture_path(experiment)
        self.log_path = log_path
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._unreported: dict[str, int] = {}  # reason -> drops not yet in the request log
        self._thread = threading.Thread(target=self._run, name=f"capture {experiment}", daemon=True)
        self._thread.start()

    # --- the request path: never blocks, never raises ---------------------------------------------------
    def wants(self, request_id: str) -> bool:
        return self.settings.sampled(request_id)

    def submit(self, request_id: str, at: float, route: str, arm: str, body: Mapping, answer: str) -> None:
        try:
            capture = make_capture(self.redact, request_id, at, route, arm, body, answer)
            self._queue.put_nowait(capture)
        except queue.Full:
            self._drop(1, "the capture queue was full")
        except Exception as e:  # a capture must never fail the request it records
            self._drop(1, f"{type(e).__name__}: {e}")

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for at most `timeout_s`), then stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    # --- the thread -----------------------------------------------------------------------------------------
    def _drop(self, n: int, reason: str) -> None:
        with self._lock:
            self.stats.dropped += n
            self.stats.last_error = reason
            self._unreported[reason] = self._unreported.get(reason, 0) + n

    def _run(self) -> None:
        store: CaptureStore | None = None
        log = None
        failed_at = reported_at = -REOPEN_AFTER_S
        next_prune = 0.0
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                first = None
            batch = [] if first is None else [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if store is None and time.monotonic() - failed_at >= REOPEN_AFTER_S:
                try:
                    store = CaptureStore(self.path, busy_timeout_ms=WRITE_TIMEOUT_MS)
                except Exception as e:
                    failed_at = time.monotonic()
                    with self._lock:
                        self.stats.last_error = str(e)
            if store is not None and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                try:
                    n = store.prune(time.time() - self.settings.retain_s)
                    with self._lock:
                        self.stats.pruned += n
                except sqlite3.Error as e:
                    with self._lock:
                        self.stats.last_error = f"retention failed: {e}"
            if batch:
                if store is None:
                    self._drop(len(batch), f"the capture database {self.path} cannot be opened")
                else:
                    try:
                        store.add_many(batch)
                        with self._lock:
                            self.stats.written += len(batch)
                    except Exception as e:  # a lock held too long, a full disk, a damaged page: the next batch tries
                        self._drop(len(batch), f"the capture database {self.path} cannot be written ({e})")
            if stopping or time.monotonic() - reported_at >= 1.0:
                reported_at = time.monotonic()
                log = self._report_drops(log)
        for resource in (store, log):
            if resource is not None:
                with contextlib.suppress(Exception):
                    resource.close()

    def _report_drops(self, log):
        """Move the drops counted so far into the request log; returns its connection (None after a failure)."""
        from .log import RequestLog

        with self._lock:
            unreported, self._unreported = self._unreported, {}
        if not unreported:
            return log
        try:
            log = log or RequestLog(self.log_path)
            with transaction(log.db):
                for reason, n in unreported.items():
                    log.add_capture_drops(self.experiment, n, reason)
            return log
        except Exception:  # counted again next time; the live count is in the router's health meanwhile
            with self._lock:
                for reason, n in unreported.items():
                    self._unreported[reason] = self._unreported.get(reason, 0) + n
            with contextlib.suppress(Exception):
                log and log.close()
            return None


# --- corrections, from the router's /feedback or the shell -----------------------------------------------

class NotCaptured(InputError):
    """A correction for a request whose conversation was not captured."""


def check_correctable(experiment, request_id: str) -> None:
    """A correction needs the conversation it corrects: refuse one that could teach nothing."""
    settings: CaptureSettings | None = experiment.capture
    if settings is None:
        raise NotCaptured(f"{experiment.name} does not capture conversations, so a correction would have no "
                          "question to go with", f"start the experiment with capture on: "
                                                 f"localserve ab start {experiment.name} --capture")
    if not settings.sampled(request_id):
        raise NotCaptured(f"request {request_id} was not captured (the capture sample is {settings.sample:g})",
                          "post corrections for captured requests; a larger --capture-sample captures more")


def check_feedback(experiment, log, request_id: str, correction: str | None, label: str | None) -> None:
    """Refuse feedback that cannot be recorded whole: an unknown request, or a correction that could teach
    nothing (capture off, or this request not captured)."""
    from .log import UnknownRequest

    row = log.row(request_id)
    if row is None or row.experiment != experiment.name:
        raise UnknownRequest(f"no request {request_id!r} of {experiment.name} in the log",
                             "post the X-Request-Id header of a response from the router")
    if correction is not None or label is not None:
        check_correctable(experiment, request_id)


def write_correction(experiment, request_id: str, correction: str | None, label: str | None) -> None:
    """The correction and label, redacted with the experiment's patterns, into its capture file."""
    redact = experiment.capture.redactor()
    with CaptureStore(capture_path(experiment.name)) as store:
        store.correct(request_id, redact(correction), redact(label))


def record_feedback(experiment, log, request_id: str, score: float, correction: str | None = None,
                    label: str | None = None) -> None:
    """The score into the request log; a correction or label into the experiment's capture file. Checked
    first, the correction written before the score: a refusal or a failed write leaves nothing recorded."""
    check_feedback(experiment, log, request_id, correction, label)
    if correction is not None or label is not None:
        write_correction(experiment, request_id, correction, label)
    log.add_feedback(request_id, score)


# --- what `ab report` shows --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptureStatus:
    on: bool
    settings: CaptureSettings | None
    path: str
    rows: int | None  # None: the file cannot be read (see error)
    dropped: int
    error: str | None = None
    drop_reasons: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        s = self.settings
        return {"on": self.on, "sample": s.sample if s else None, "redact_patterns": len(s.redact) if s else 0,
                "retain_s": s.retain_s if s else None, "path": self.path, "rows": self.rows, "dropped": self.dropped,
                "drop_reasons": self.drop_reasons, "error": self.error}


def capture_status(experiment, log, since: float | None = None) -> CaptureStatus:
    """Capture on or off, its settings, the rows kept, and the captures dropped since `since`."""
    path = capture_path(experiment.name)
    rows, error = 0, None
    if path.exists():
        try:
            with CaptureStore(path) as store:
                rows = store.count()
        except InputError as e:
            rows, error = None, e.message
    reasons = log.capture_drops(experiment.name, since)
    return CaptureStatus(experiment.capture is not None, experiment.capture, str(path), rows, sum(reasons.values()),
                         error, reasons)


def _days(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_capture_status(status: CaptureStatus) -> str:
    s = status.settings
    head = (f"capture: on (sample {s.sample:.0%}, {len(s.redact)} redaction pattern{'s' * (len(s.redact) != 1)}, "
            f"kept {_days(s.retain_s)})") if s else "capture: off"
    kept = f"{status.rows} conversations" if status.rows is not None else f"unreadable ({status.error})"
    if not s and not status.rows and not status.dropped and status.error is None:
        return head
    return f"{head}: {kept} in {status.path}, {status.dropped} dropped" + \
        "".join(f"\n  {n} dropped: {reason}" for reason, n in status.drop_reasons.items())
