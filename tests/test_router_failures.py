"""Failures: an upstream killed in the middle of a stream gives each client a clean error in its protocol
and a row that says so; an upstream that is gone gives a 502 shaped like the protocol's errors; a router
killed with SIGKILL leaves every finished request logged, and resuming it keeps users on their arms."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from localserve.router import experiment as ex
from localserve.router.arms import assign
from localserve.router.log import RequestLog
from routerhelpers import NAME, SHORT, V1, V2, running_router

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

TESTS = Path(__file__).parent
LONG = {"num_predict": 300}  # long enough to be killed in the middle


@contextlib.contextmanager
def standin_process(models: Path):
    """An Ollama stand-in in a process of its own, to be killed; yields (process, URL). It streams a line
    every 50 ms, so a kill after the third line lands mid-answer however the processes are scheduled."""
    code = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from ollama_standin import Behaviour, Standin; "
            "s = Standin(Path(sys.argv[2]), Behaviour(stream_delay=0.05)).start(); "
            "print(s.url, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(TESTS), str(models)], stdout=subprocess.PIPE, text=True)
    try:
        yield proc, proc.stdout.readline().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def user_on(arm: str, arms) -> str:
    return next(u for u in (f"user-{i}" for i in range(1000)) if assign(NAME, u, arms).version == arm)


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_an_upstream_killed_mid_stream_gives_a_clean_error_and_a_row(protocol, fake_export, tmp_path):
    # SmolLM2 (the stand-in's real text model) streams token by token: the kill lands mid-answer
    from localserve.ollama import register

    question = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    with standin_process(tmp_path / "models") as (proc, url):
        register(fake_export, name=V1, host=url)
        with running_router(NAME, [f"{V1}=1"], url) as router:
            if protocol == "ollama":
                client = ollama.Client(host=router.url)
                stream = client.chat(model=NAME, messages=question, options=LONG, stream=True)
                failure = ollama.ResponseError
            else:
                client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
                stream = client.chat.completions.create(model=NAME, messages=question, stream=True,
                                                        max_tokens=LONG["num_predict"])
                failure = openai.APIError
            received = 0
            with pytest.raises(failure) as raised:
                for _part in stream:
                    received += 1
                    if received == 3:
                        proc.send_signal(signal.SIGKILL)
            message = raised.value.error if protocol == "ollama" else raised.value.message
            assert "failed mid-stream" in message or "before its last message" in message, message
            assert 3 <= received < LONG["num_predict"]

            route = "/api/chat" if protocol == "ollama" else "/v1/chat/completions"
            bound = {"options": SHORT} if protocol == "ollama" else {"max_tokens": SHORT["num_predict"]}
            body = {"model": NAME, "messages": question, "stream": False, **bound}
            gone = httpx.post(router.url + route, json=body, timeout=30)
            assert gone.status_code == 502 and gone.headers["x-localserve-arm"] == V1
            error = gone.json()["error"]
            assert "failed" in (error["message"] if protocol == "openai" else error)
    with RequestLog() as log:
        killed, down = log.rows(NAME)
    assert killed.route == route and killed.status == 200 and killed.stream
    assert killed.error == message and killed.response_chars > 0 and killed.ttft_s is not None
    assert (down.status, down.stream) == (502, False) and "failed" in down.error


def test_a_router_killed_and_resumed_keeps_its_log_and_its_users_arms(tiny_arms):
    users = [f"u{i}" for i in range(8)]

    def ask(url: str) -> dict[str, str]:
        arms = {}
        for u in users:
            r = httpx.post(url + "/api/generate", headers={"X-User-Id": u}, timeout=60,
                           json={"model": NAME, "prompt": "hello", "stream": False, "options": SHORT})
            assert r.status_code == 200
            arms[u] = r.headers["x-localserve-arm"]
        return arms

    with running_router(NAME, [f"{V1}=50", f"{V2}=50"], tiny_arms) as router:
        before = ask(router.url)
        os.kill(router.pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            httpx.get(router.url + "/api/version", timeout=5)
        with RequestLog() as log:
            assert len(log.rows(NAME)) == len(users)
        db = sqlite3.connect(RequestLog().path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        assert not ex.is_running(ex.load(NAME))

        resumed = ex.start(NAME)  # no arms: the experiment the killed router left
        assert resumed.pid != router.pid and resumed.port == router.port
        assert resumed.started_at == router.started_at and resumed.weights() == router.weights()
        after = ask(resumed.url)
    assert after == before and len(set(before.values())) == 2
    with RequestLog() as log:
        rows = log.rows(NAME)
    assert len(rows) == 2 * len(users) and not [r for r in rows if r.failed]


def test_a_client_that_goes_away_mid_stream_still_leaves_its_row(standin, fake_export):
    from localserve.ollama import register

    register(fake_export, name="smol-ab:v1", host=standin.url)
    question = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    with running_router("smol-ab", ["smol-ab:v1=1"], standin.url) as router:
        with httpx.stream("POST", router.url + "/api/chat", timeout=60,
                          json={"model": "smol-ab", "messages": question, "options": LONG}) as r:
            lines = r.iter_lines()
            next(lines), next(lines)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with RequestLog() as log:
                rows = log.rows("smol-ab")
            if rows:
                break
            time.sleep(0.1)
    (row,) = rows
    assert row.error == "the client closed the connection before the end" and row.status == 200
    assert row.response_chars > 0 and row.completion_tokens is None


def test_a_damaged_or_newer_request_log_is_one_line(tmp_path):
    from clihelpers import assert_one_line_error, invoke
    from localserve.errors import InputError
    from localserve.paths import state_dir
    from localserve.router.log import DB_FILE, MIGRATIONS

    log = state_dir() / DB_FILE
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("not sqlite")
    assert_one_line_error(invoke("ab", "report", NAME), f"the request log {log} cannot be opened",
                          "move the file away")
    log.unlink()
    RequestLog().close()
    with contextlib.closing(sqlite3.connect(log)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(InputError, match="newer than this localserve"):
        RequestLog()
