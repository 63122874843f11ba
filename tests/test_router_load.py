"""A bounded load test on loopback: 200 requests, 8 at a time, from 40 sticky users, through the router to
the tiny model on the Ollama stand-in. The users split within a binomial tolerance of the weights, every
user stays on one arm, and the log holds 200 rows and no error."""

from __future__ import annotations

import asyncio
import time

import httpx
from scipy.stats import binom

from localserve.router.log import RequestLog
from routerhelpers import NAME, SHORT, V1, V2, running_router

pytest_plugins = ["ollama_standin.fixtures", "routerfixtures"]

REQUESTS, CONCURRENCY, USERS = 200, 8, 40
WEIGHTS = {V1: 70, V2: 30}


async def load(url: str) -> list[tuple[str, str, int, str]]:
    """(user, arm, status, text) of every request; half of them streamed, half not, on both APIs."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(i: int):
            user = f"user-{i % USERS}"
            kind = i % 4
            async with gate:
                if kind < 2:
                    body = {"model": NAME, "messages": [{"role": "user", "content": f"question {i}"}],
                            "options": SHORT, "stream": kind == 0}
                    r = await client.post("/api/chat", json=body, headers={"X-User-Id": user})
                else:
                    body = {"model": NAME, "messages": [{"role": "user", "content": f"question {i}"}],
                            "max_tokens": 6, "stream": kind == 2, "user": user}
                    r = await client.post("/v1/chat/completions", json=body)
                return user, r.headers.get("x-localserve-arm"), r.status_code, r.text

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


def test_200_requests_8_at_a_time_from_40_sticky_users(tiny_arms):
    with running_router(NAME, [f"{v}={w}" for v, w in WEIGHTS.items()], tiny_arms) as router:
        started = time.monotonic()
        results = asyncio.run(asyncio.wait_for(load(router.url), timeout=240))
        elapsed = time.monotonic() - started
    assert [status for _, _, status, _ in results] == [200] * REQUESTS
    assert all('"error"' not in text for *_, text in results)
    arms_of = {}
    for user, arm, _, _ in results:
        arms_of.setdefault(user, set()).add(arm)
    assert len(arms_of) == USERS and all(len(arms) == 1 for arms in arms_of.values())
    on_v2 = sum(arms == {V2} for arms in arms_of.values())
    low, high = binom.interval(0.999, USERS, WEIGHTS[V2] / sum(WEIGHTS.values()))
    assert low <= on_v2 <= high, on_v2

    with RequestLog() as log:
        rows = log.rows(NAME)
    assert len(rows) == REQUESTS and not [r for r in rows if r.failed]
    assert len({r.user_hash for r in rows}) == USERS
    assert all(len({r.arm for r in rows if r.user_hash == h}) == 1 for h in {r.user_hash for r in rows})
    assert sum(r.arm == V2 for r in rows) == on_v2 * REQUESTS // USERS
    assert all(r.completion_tokens for r in rows)
    print(f"\n{REQUESTS} requests in {elapsed:.1f} s ({REQUESTS / elapsed:.0f}/s), {on_v2}/{USERS} users on {V2}")
