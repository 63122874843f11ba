#!/usr/bin/env python
"""Benchmark the embedded model in the real vLLM: merged vs the same adapter served as LoRA.

    python scripts/bench_vllm.py [--tokens 64] [--out DIR] [--json FILE]

Exports the demo adapter twice (merged, and base + unmerged LoRA) with localserve's vLLM export,
starts each from its own launch.sh (one server at a time: each takes ~5 GB), and measures
generated tokens/s for 1 and 4 concurrent requests (every request generates exactly --tokens
tokens: ignore_eos) and the server's resident memory. Needs scripts/bootstrap_vllm.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Tell me about the localserve project."


def complete(url: str, model: str, tokens: int) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["usage"]["completion_tokens"]


def tokens_per_second(url: str, model: str, tokens: int, concurrent: int, rounds: int = 2) -> float:
    complete(url, model, 8)  # warm-up: the first request pays one-time costs (LoRA load, allocations)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:
            generated = sum(pool.map(lambda _: complete(url, model, tokens), range(concurrent)))
        best = max(best, generated / (time.perf_counter() - start))
    return best


def main() -> int:
    from localserve.exports import VllmExportSpec, export_vllm
    from localserve.vllm.runtime import CPU_ARGS, serve_export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--out", type=Path, help="export folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    adapter = REPO / "examples" / "demo-adapter"
    merged = export_vllm(VllmExportSpec(adapters=(adapter,), name="demo", out=root / "merged"))
    lora = export_vllm(VllmExportSpec(adapters=(adapter,), lora=True, name="base", out=root / "lora"))
    rows = []
    for label, export, model in (("merged", merged, "demo"), ("LoRA", lora, "demo-adapter")):
        started = time.perf_counter()
        with serve_export(export.out_dir, list(CPU_ARGS)) as server:
            startup = time.perf_counter() - started
            row = {"served": label, "startup_s": round(startup, 1)}
            for n in (1, 4):
                row[f"tokens_per_s_{n}"] = round(tokens_per_second(server.url, model, args.tokens, n), 1)
            row["rss_gb"] = round(server.rss_bytes() / 1e9, 2)
        rows.append(row)
        print(f"{label}: {row}", file=sys.stderr)
    print(f"\nembedded SmolLM2-135M-Instruct + demo adapter, vLLM CPU, float32, {args.tokens}-token completions")
    print(f"{'served':8} {'1 request':>12} {'4 concurrent':>14} {'memory (RSS)':>13} {'start-up':>9}")
    for r in rows:
        print(f"{r['served']:8} {r['tokens_per_s_1']:>8} t/s {r['tokens_per_s_4']:>10} t/s "
              f"{r['rss_gb']:>10} GB {r['startup_s']:>7} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.out is None:
        import shutil

        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
