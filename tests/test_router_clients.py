"""The clients users have, pointed at the router: the `ollama` and `openai` packages and LangChain's
ChatOllama, streaming and not, with the arms on the Ollama stand-in (the tiny model's answers come from
llama.cpp). Each answer is the arm's own, each request one row in the log, feedback lands on its row."""

from __future__ import annotations

import httpx
import ollama
import pytest
from openai import OpenAI

from localserve.router import experiment as ex
from localserve.router.arms import assign
from localserve.router.log import RequestLog
from routerhelpers import NAME, SHORT, V1, V2, running_router

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

QUESTION = [{"role": "user", "content": "the quick brown fox asks the lazy dog"}]


@pytest.fixture
def router(tiny_arms):
    with running_router(NAME, [f"{V1}=50", f"{V2}=50"], tiny_arms) as started:
        yield started


def user_on(arm: str, arms) -> str:
    """A user key the router sends to `arm`."""
    return next(u for u in (f"user-{i}" for i in range(1000)) if assign(NAME, u, arms).version == arm)


def logged() -> list:
    with RequestLog() as log:
        return log.rows(NAME)


def test_the_ollama_client_gets_its_arms_own_answer_streamed_or_not(router, tiny_arms):
    user = user_on(V2, router.arms)
    via = ollama.Client(host=router.url, headers={"X-User-Id": user})
    direct = ollama.Client(host=tiny_arms)
    whole = via.chat(model=NAME, messages=QUESTION, options=SHORT)
    own = direct.chat(model=V2, messages=QUESTION, options=SHORT)
    assert whole.message.content and whole.message.content == own.message.content
    pieces = list(via.chat(model=NAME, messages=QUESTION, options=SHORT, stream=True))
    assert len(pieces) > 2 and "".join(p.message.content for p in pieces) == own.message.content
    assert pieces[-1].done and pieces[-1].done_reason == own.done_reason
    generated = via.generate(model=NAME, prompt="seven wizards", options=SHORT)
    assert generated.response == direct.generate(model=V2, prompt="seven wizards", options=SHORT).response

    rows = logged()
    assert [(r.route, r.stream, r.arm) for r in rows] == [("/api/chat", False, V2), ("/api/chat", True, V2),
                                                          ("/api/generate", False, V2)]
    assert len({r.user_hash for r in rows}) == 1 and user not in rows[0].user_hash
    assert all(r.status == 200 and r.error is None for r in rows)
    assert rows[1].completion_tokens == pieces[-1].eval_count and rows[1].prompt_tokens == pieces[-1].prompt_eval_count
    assert rows[1].finish_reason == own.done_reason and rows[1].response_chars == len(own.message.content)
    assert 0 < rows[1].ttft_s <= rows[1].latency_s and rows[0].ttft_s is None


def test_the_openai_client_gets_the_arm_and_request_id_and_its_feedback_is_logged(router):
    client = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    user = user_on(V1, router.arms)
    raw = client.chat.completions.with_raw_response.create(model=NAME, messages=QUESTION, max_tokens=6, user=user)
    answer = raw.parse()
    assert raw.headers["x-localserve-arm"] == V1 and answer.model == V1
    request_id = raw.headers["x-request-id"]
    streamed = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=6, user=user, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert all(c.usage is None for c in chunks)  # the router asked for usage to log it, and kept it from this client
    with_usage = list(client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=6, user=user,
                                                     stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].usage.completion_tokens == answer.usage.completion_tokens

    r = httpx.post(router.url + "/feedback", json={"request_id": request_id, "score": 1})
    assert r.status_code == 200
    rows = logged()
    assert [r.arm for r in rows] == [V1] * 3 and rows[0].id == request_id and rows[0].feedback == 1.0
    assert rows[1].completion_tokens == answer.usage.completion_tokens == rows[2].completion_tokens
    assert rows[1].finish_reason == answer.choices[0].finish_reason


def test_langchains_chat_ollama_through_the_router(router):
    from langchain_ollama import ChatOllama

    user = user_on(V1, router.arms)
    chat = ChatOllama(model=NAME, base_url=router.url, num_predict=6, client_kwargs={"headers": {"X-User-Id": user}})
    answer = chat.invoke("the quick brown fox")
    streamed = "".join(chunk.content for chunk in chat.stream("the quick brown fox"))
    assert answer.content and streamed == answer.content
    assert [(r.arm, r.route) for r in logged()] == [(V1, "/api/chat")] * 2  # invoke streams too, inside


def test_an_arm_on_an_openai_server_answers_ollamas_api_too(tiny_arms):
    # the stand-in's /v1 plays the OpenAI-compatible server (vLLM) for tiny-ab:v2
    arms = [f"{V1}=0", f"{V2}=1@openai:{tiny_arms}/v1#{V2}"]
    with running_router(NAME, arms, tiny_arms) as router:
        via = ollama.Client(host=router.url)
        whole = via.chat(model=NAME, messages=QUESTION, options=SHORT)
        pieces = list(via.chat(model=NAME, messages=QUESTION, options=SHORT, stream=True))
        generated = via.generate(model=NAME, prompt="seven wizards", options=SHORT, stream=True)
        text = "".join(p.response for p in generated)
    direct = OpenAI(base_url=tiny_arms + "/v1", api_key="unused").chat.completions.create(
        model=V2, messages=QUESTION, max_tokens=6, temperature=0)
    assert whole.message.content == direct.choices[0].message.content == "".join(p.message.content for p in pieces)
    assert whole.done_reason == pieces[-1].done_reason == direct.choices[0].finish_reason
    assert text and pieces[-1].eval_count == direct.usage.completion_tokens
    rows = logged()
    assert [(r.arm, r.route, r.error) for r in rows] == [(V2, "/api/chat", None), (V2, "/api/chat", None),
                                                          (V2, "/api/generate", None)]
    assert rows[1].completion_tokens == direct.usage.completion_tokens


def test_other_routes_and_other_models_pass_through_unlogged(router, tiny_arms):
    assert httpx.get(router.url + "/api/tags").json() == httpx.get(tiny_arms + "/api/tags").json()
    assert httpx.get(router.url + "/api/version").json() == httpx.get(tiny_arms + "/api/version").json()
    assert httpx.get(router.url + "/v1/models").json() == httpx.get(tiny_arms + "/v1/models").json()
    user = user_on(V2, router.arms)
    shown = httpx.post(router.url + "/api/show", json={"model": NAME}, headers={"X-User-Id": user})
    assert shown.headers["x-localserve-arm"] == V2
    assert shown.json()["details"] == httpx.post(tiny_arms + "/api/show", json={"model": V2}).json()["details"]
    other = ollama.Client(host=router.url).chat(model=V1, messages=QUESTION, options=SHORT)  # by its own name
    assert other.model == V1
    missing = httpx.post(router.url + "/api/chat", json={"model": "nothing:here", "messages": QUESTION,
                                                         "options": SHORT})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    assert logged() == []


def test_feedback_for_an_unknown_request_or_with_a_bad_score_is_refused(router):
    assert httpx.post(router.url + "/feedback", json={"request_id": "nope", "score": 1}).status_code == 404
    for body in ({"request_id": "x", "score": "good"}, {"request_id": "x", "score": True}, {"score": 1}, [1]):
        r = httpx.post(router.url + "/feedback", json=body)
        assert r.status_code == 400 and r.json()["error"]


def test_weights_change_at_run_time_and_only_users_who_must_move_do(router):
    users = [f"person-{i}" for i in range(200)]
    before = {u: assign(NAME, u, router.arms).version for u in users}
    ex.set_weights(NAME, {V2: 150})  # v2 from 50% to 75%: only v1's users may move, and only to v2
    running = ex.load(NAME)
    assert running.weights() == {V1: 50.0, V2: 150.0} and ex.is_running(running)
    client = httpx.Client(base_url=router.url)
    after = {}
    for u in users[:40]:
        r = client.post("/api/generate", json={"model": NAME, "prompt": "hi", "stream": False, "options": SHORT},
                        headers={"X-User-Id": u})
        after[u] = r.headers["x-localserve-arm"]
    assert all(after[u] == V2 for u in after if before[u] == V2)
    moved = [u for u in users if before[u] != assign(NAME, u, running.arms).version]
    assert all(before[u] == V1 for u in moved) and 0.15 < len(moved) / len(users) < 0.35  # 25% expected
    with RequestLog() as log:
        assert log.weight_history(NAME)[-1]["weights"] == {V1: 50.0, V2: 150.0}


def test_the_admin_route_wants_the_token(router):
    r = httpx.put(router.url + "/_localserve/weights", json={"weights": {V2: 0}})
    assert r.status_code == 403 and "Token" in r.json()["error"]
    assert ex.load(NAME).weights() == {V1: 50.0, V2: 50.0}
