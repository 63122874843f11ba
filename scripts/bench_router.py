#!/usr/bin/env python3
"""What the A/B router adds: latency per request (p50/p99) and throughput, through the router against
calling the upstream directly, in one run on loopback.

The upstream is an Ollama-shaped server that answers at once with a canned answer (in its own process,
on uvicorn), so that the difference is the router's: parsing and rewriting the request, the sticky
assignment, the proxied connection, reading the stream as it passes, and the committed SQLite row.

    ~/.cache/localserve/venv/bin/python scripts/bench_router.py [--requests 2000] [--concurrency 8] [--json]

Sequential requests alternate direct / routed so that both see the same machine; throughput runs
`--concurrency` clients for `--requests` requests each way. Everything it writes (the experiment, the
request log) goes to a temporary state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODELS = ("bench:v1", "bench:v2")
PIECES = 16  # streamed answers come in this many lines / events


# --- the canned upstream -------------------------------------------------------------------------------

def upstream_app():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def final(model: str) -> dict:
        return {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": PIECES,
                "total_duration": 1000, "eval_duration": 500}

    async def tags(_request):
        return JSONResponse({"models": [{"name": m, "model": m} for m in MODELS]})

    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        if not body.get("stream", True):
            return JSONResponse({**final(model), "message": {"role": "assistant", "content": "word " * PIECES}})

        async def lines():
            for _ in range(PIECES):
                yield json.dumps({"model": model, "created_at": "2026-01-01T00:00:00Z",
                                  "message": {"role": "assistant", "content": "word "}, "done": False}).encode() + b"\n"
            yield json.dumps(final(model)).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return Starlette(routes=[Route("/api/tags", tags), Route("/api/chat", chat, methods=["POST"])])


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


# --- measuring ---------------------------------------------------------------------------------------------

def sequential(direct: str, routed: str, n: int, stream: bool) -> dict[str, list[float]]:
    import httpx

    times = {"direct": [], "router": []}
    with httpx.Client(timeout=30) as client:
        for i in range(n + 50):  # the first 50 of each warm up connections and caches
            for label, url, model in (("direct", direct, MODELS[0]), ("router", routed, "bench")):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                start = time.perf_counter()
                if stream:
                    with client.stream("POST", url + "/api/chat", json=body, headers={"X-User-Id": f"u{i % 40}"}) as r:
                        for _ in r.iter_bytes():
                            pass
                else:
                    r = client.post(url + "/api/chat", json=body, headers={"X-User-Id": f"u{i % 40}"})
                elapsed = time.perf_counter() - start
                assert r.status_code == 200, r.text
                if i >= 50:
                    times[label].append(elapsed)
    return times


async def _throughput(url: str, model: str, n: int, concurrency: int) -> float:
    import httpx

    done = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(w: int):
            nonlocal done
            while done < n:
                done += 1
                r = await client.post(url + "/api/chat", headers={"X-User-Id": f"u{w}"},
                                      json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                            "stream": False})
                assert r.status_code == 200

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return n / (time.perf_counter() - start)


def quantiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": float(np.percentile(values, 50) * 1000), "p99_ms": float(np.percentile(values, 99) * 1000)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests each way, per measurement")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return

    os.environ["LOCALSERVE_STATE_DIR"] = tempfile.mkdtemp(prefix="bench-router-")
    from localserve.progress import set_quiet
    from localserve.router import experiment as ex
    from localserve.router.log import RequestLog

    set_quiet(True)
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)])
    direct = f"http://127.0.0.1:{up_port}"
    try:
        wait_for(direct + "/api/tags")
        router = ex.start("bench", [f"{MODELS[0]}=50", f"{MODELS[1]}=50"], port=free_port(), upstream=direct)
        try:
            results: dict = {"requests": args.requests, "concurrency": args.concurrency, "pieces": PIECES}
            for stream in (False, True):
                times = sequential(direct, router.url, args.requests, stream)
                d, r = quantiles(times["direct"]), quantiles(times["router"])
                results["streamed" if stream else "whole"] = {
                    "direct": d, "router": r, "added_p50_ms": r["p50_ms"] - d["p50_ms"],
                    "added_p99_ms": r["p99_ms"] - d["p99_ms"]}
            rps_direct = asyncio.run(_throughput(direct, MODELS[0], args.requests, args.concurrency))
            rps_router = asyncio.run(_throughput(router.url, "bench", args.requests, args.concurrency))
            results["throughput"] = {"direct_rps": rps_direct, "router_rps": rps_router,
                                     "ratio": rps_router / rps_direct}
            with RequestLog() as log:
                results["logged_rows"] = log.count("bench")
        finally:
            ex.stop("bench")
    finally:
        upstream.terminate()
        upstream.wait()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"router overhead on loopback ({args.requests} sequential requests each way, canned upstream):")
    for kind in ("whole", "streamed"):
        x = results[kind]
        label = "non-streamed" if kind == "whole" else f"streamed ({PIECES} NDJSON lines)"
        print(f"  {label:<28} direct p50 {x['direct']['p50_ms']:.2f} ms, p99 {x['direct']['p99_ms']:.2f} ms; "
              f"router p50 {x['router']['p50_ms']:.2f} ms, p99 {x['router']['p99_ms']:.2f} ms; "
              f"added p50 {x['added_p50_ms']:.2f} ms, p99 {x['added_p99_ms']:.2f} ms")
    t = results["throughput"]
    print(f"  throughput, {args.concurrency} concurrent clients: direct {t['direct_rps']:.0f} req/s, router "
          f"{t['router_rps']:.0f} req/s ({t['ratio']:.2f}x)")
    print(f"  rows logged: {results['logged_rows']}")


if __name__ == "__main__":
    main()
