"""Capture in the A/B router, opt-in: off by default; on, each sampled conversation is kept as asked and as
streamed, redacted before anything is written, older rows deleted by retention; a capture that cannot be
written never fails or delays a request and is counted; feedback carries corrections over HTTP and from
the shell."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import ollama
import pytest
from openai import OpenAI

from clihelpers import assert_one_line_error, invoke
from localserve.router import experiment as ex
from localserve.router.capture import Capture, CaptureSettings, CaptureStore, CaptureWriter, capture_path
from localserve.router.log import RequestLog
from routerhelpers import NAME, SHORT, V1, free_port

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

SECRET = "sk-live-4f9Q2xZ"
REDACT = r"sk-live-[A-Za-z0-9]+"
QUESTION = "the quick brown fox asks the lazy dog about its key"


@pytest.fixture
def start(tiny_arms):
    """`ab start NAME` as a user types it, on a free port; the router is stopped at the end."""
    port = free_port()

    def started(*options: str, resume: bool = False) -> str:
        new = () if resume else ("--arm", f"{V1}=1", "--upstream", tiny_arms)
        result = invoke("ab", "start", NAME, *new, "--port", port, *options)
        assert result.exit_code == 0, result.output
        return f"http://127.0.0.1:{port}"

    yield started
    if ex.experiment_path(NAME).exists() and ex.is_running(ex.load(NAME)):
        ex.stop(NAME)


def captured() -> dict:
    with CaptureStore(capture_path(NAME)) as store:
        return {c.request_id: c for c in store.rows()}


def capture_stats(url: str) -> dict:
    return httpx.get(url + "/_localserve/health", timeout=10).json()["capture"]


def settled(url: str, handled: int, timeout_s: float = 20.0) -> dict:
    """The writer's counts once it has written or dropped `handled` captures."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = capture_stats(url)
        if stats["written"] + stats["dropped"] >= handled or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def generate(url: str, prompt: str = "seven wizards", **extra) -> httpx.Response:
    r = httpx.post(url + "/api/generate", timeout=60,
                   json={"model": NAME, "prompt": prompt, "stream": False, "options": SHORT, **extra})
    assert r.status_code == 200, r.text
    return r


def report() -> dict:
    result = invoke("ab", "report", NAME, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["capture"]


def test_capture_is_off_by_default_and_a_correction_then_is_refused(start):
    url = start()
    rid = generate(url).headers["x-request-id"]
    assert not capture_path(NAME).parent.exists()  # nothing kept, not even an empty file
    r = httpx.post(url + "/feedback", json={"request_id": rid, "score": -1, "correction": "a better answer"})
    assert r.status_code == 409 and "does not capture conversations" in r.json()["error"]
    assert_one_line_error(invoke("feedback", rid, "--score", "-1", "--correction", "a better answer"),
                          "does not capture conversations", f"ab start {NAME} --capture")
    with RequestLog() as log:
        assert log.row(rid).feedback is None  # a refused correction records nothing, not even the score
    assert invoke("feedback", rid, "--score", "1").exit_code == 0
    with RequestLog() as log:
        assert log.row(rid).feedback == 1.0
    status = report()
    assert (status["on"], status["rows"], status["dropped"]) == (False, 0, 0)
    assert "capture: off" in invoke("ab", "report", NAME).output


def test_a_captured_conversation_is_what_was_asked_and_streamed_with_secrets_redacted(start):
    url = start("--capture", "--redact", REDACT)
    asked = ollama.Client(host=url)
    pieces = list(asked.chat(model=NAME, messages=[{"role": "user", "content": f"{QUESTION} {SECRET}"}],
                             options=SHORT, stream=True))
    chat_text = "".join(p.message.content for p in pieces)
    made = generate(url, "seven wizards", system=f"You hold the key {SECRET}.")
    openai = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    raw = openai.chat.completions.with_raw_response.create(
        model=NAME, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        max_tokens=SHORT["num_predict"], stream=True)
    openai_text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert settled(url, 3) == {"written": 3, "dropped": 0, "pruned": 0, "last_error": None}

    with RequestLog() as log:
        rows = log.rows(NAME)
    chat_id, generate_id, openai_id = (r.id for r in rows)
    assert (generate_id, openai_id) == (made.headers["x-request-id"], raw.headers["x-request-id"])
    kept = captured()
    assert set(kept) == {chat_id, generate_id, openai_id}
    chat, generated, via_openai = kept[chat_id], kept[generate_id], kept[openai_id]
    assert (chat.route, chat.arm, chat.answer) == ("/api/chat", V1, chat_text) and chat_text
    assert chat.messages == ({"role": "user", "content": f"{QUESTION} [REDACTED]"},)
    assert (generated.prompt, generated.system) == ("seven wizards", "You hold the key [REDACTED].")
    assert generated.answer == made.json()["response"] and generated.messages is None
    assert via_openai.route == "/v1/chat/completions" and via_openai.answer == openai_text
    assert via_openai.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION})
    assert abs(chat.at - rows[0].at) < 1e-6

    # corrections: over HTTP and from the shell, redacted alike
    r = httpx.post(url + "/feedback", json={"request_id": chat_id, "score": -1, "label": "leak",
                                            "correction": f"Never repeat {SECRET}."})
    assert r.status_code == 200, r.text
    done = invoke("feedback", generate_id, "--score", "-1", "--correction", "Seven wizards box quietly.")
    assert done.exit_code == 0 and f"{NAME}: feedback -1 with a correction on request {generate_id}" in done.output
    kept = captured()
    assert (kept[chat_id].correction, kept[chat_id].label) == ("Never repeat [REDACTED].", "leak")
    assert kept[generate_id].correction == "Seven wizards box quietly."
    status = report()
    assert (status["on"], status["sample"], status["redact_patterns"], status["rows"], status["dropped"]) == \
        (True, 1.0, 1, 3, 0)
    assert "capture: on (sample 100%, 1 redaction pattern, kept 30d): 3 conversations" in \
        invoke("ab", "report", NAME).output

    ex.stop(NAME)
    done = invoke("feedback", openai_id, "--score", "0", "--correction", f"Brief, and no {SECRET}.")
    assert done.exit_code == 0, done.output  # the router is stopped: the shell writes the same rows
    assert captured()[openai_id].correction == "Brief, and no [REDACTED]."
    with RequestLog() as log:
        assert [log.row(i).feedback for i in (chat_id, generate_id, openai_id)] == [-1.0, -1.0, 0.0]
    state = capture_path(NAME).parent.parent
    for file in state.rglob("*"):  # the captures, their WAL, the request log, the experiment file
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    log_bytes = b"".join(f.read_bytes() for f in state.glob("router.db*"))
    assert QUESTION.encode() not in log_bytes and b"seven wizards" not in log_bytes  # the log stays free of content


def test_sampling_is_decided_by_the_request_id(start):
    url = start("--capture", "--capture-sample", "0.5")
    half = CaptureSettings(sample=0.5)
    ids: list[str] = []
    while len(ids) < 16 or len({half.sampled(i) for i in ids}) < 2:  # some kept, some not (bounded: 2^-63)
        assert len(ids) < 64
        ids.append(generate(url, f"seven wizards {len(ids)}").headers["x-request-id"])
    expected = {i for i in ids if half.sampled(i)}
    assert settled(url, len(expected))["written"] == len(expected)
    assert set(captured()) == expected
    outside = next(i for i in ids if i not in expected)
    r = httpx.post(url + "/feedback", json={"request_id": outside, "score": -1, "correction": "better"})
    assert r.status_code == 409 and "was not captured (the capture sample is 0.5)" in r.json()["error"]

    ex.stop(NAME)
    url = start("--capture", "--capture-sample", "0", resume=True)  # resumed with other capture settings
    more = [generate(url).headers["x-request-id"] for _ in range(3)]
    time.sleep(1.5)
    assert capture_stats(url)["written"] == 0 and not set(more) & set(captured())
    assert report()["sample"] == 0.0

    ex.stop(NAME)
    url = start(resume=True)  # resumed as it was
    assert report()["sample"] == 0.0


def test_retention_deletes_older_captures_when_the_router_starts(start):
    day = 86400.0
    with CaptureStore(capture_path(NAME)) as store:
        store.add_many([Capture(rid, time.time() - age, "/api/generate", V1, None, None, "q", "a")
                        for rid, age in (("old", 40 * day), ("recent", 2 * day))])
        store.correct("old", "fixed", None, at=time.time() - 39 * day)
    url = start("--capture", "--retain", "30d")
    deadline = time.monotonic() + 20
    while capture_stats(url)["pruned"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(captured()) == {"recent"}
    with sqlite3.connect(capture_path(NAME)) as db:
        assert db.execute("SELECT COUNT(*) FROM corrections").fetchone() == (0,)
    assert report()["retain_s"] == 30 * day


def test_a_damaged_capture_database_fails_no_request_and_its_drops_are_counted(start, tmp_path):
    path = capture_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all " * 500)
    url = start("--capture")
    for i in range(3):
        generate(url, f"seven wizards {i}")
    assert settled(url, 3)["dropped"] == 3
    deadline = time.monotonic() + 20
    while report()["dropped"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = report()
    assert status["dropped"] == 3 and status["rows"] is None and str(path) in status["error"]
    shown = invoke("ab", "report", NAME).output
    assert "3 dropped" in shown and "cannot be opened" in shown
    assert_one_line_error(invoke("harvest", NAME, "--data", tmp_path / "new.jsonl"),
                          f"the capture database {path}")
    assert not (tmp_path / "new.jsonl").exists()


def test_a_locked_capture_file_or_a_full_queue_never_holds_the_caller(tmp_path):
    path = tmp_path / "captures.db"
    CaptureStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the file for longer than the writer waits
    writer = CaptureWriter(NAME, CaptureSettings(), path=path, queue_size=4)
    try:
        began = time.perf_counter()
        for i in range(50):
            writer.submit(f"r{i}", time.time(), "/api/generate", V1, {"prompt": "q"}, "a")
        assert time.perf_counter() - began < 0.5  # 50 submits while every write waits on the lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        writer.close()
    stats = writer.stats
    assert stats.written + stats.dropped == 50 and stats.dropped >= 40
    with RequestLog() as log:
        reasons = log.capture_drops(NAME)
    assert sum(reasons.values()) == stats.dropped and "the capture queue was full" in reasons
    with CaptureStore(path) as store:
        assert store.count() == stats.written


@pytest.mark.parametrize("options, needle", [
    (["--capture", "--redact", "key=(\\w+"], "--redact 'key=(\\\\w+' is not a regular expression"),
    (["--capture", "--redact", "x*"], "matches empty text"),
    (["--capture", "--capture-sample", "1.5"], "--capture-sample 1.5 is not a share between 0 and 1"),
    (["--capture", "--retain", "30 days"], "'30 days' is not a duration"),
    (["--redact", "sk-[a-z]+"], "--redact sets how conversations are captured, and capture is off"),
])
def test_bad_capture_options_are_refused_before_anything_starts(options, needle):
    result = invoke("ab", "start", NAME, "--arm", f"{V1}=1", "--upstream", "http://127.0.0.1:9", *options)
    assert_one_line_error(result, needle)
    assert not ex.experiment_path(NAME).exists()
