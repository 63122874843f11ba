#!/usr/bin/env python
"""Benchmark the embedded model in the real vLLM: merged vs the same adapter served as LoRA, and
the serving features (prefix caching, ngram speculative decoding).

    python scripts/bench_vllm.py [--tokens 64] [--out DIR] [--json FILE]

Exports the demo adapter three times (merged; base + unmerged LoRA; merged with --speculative ngram)
with localserve's vLLM export, starts each from its own launch.sh (one server at a time: each takes
~5 GB), and measures:
- generated tokens/s for 1 and 4 concurrent requests (every request generates exactly --tokens
  tokens: ignore_eos) and the server's resident memory;
- time to first token of 16 requests sharing a ~1,000-token system prompt, one after the other,
  with prefix caching on (as exported) and off (--no-enable-prefix-caching on the command line);
- tokens/s of a long, repetitive greedy completion with and without ngram speculation, and whether
  the two texts are the same.
Needs scripts/bootstrap_vllm.sh.
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


SYSTEM_TOKENS = 1000
SHARED_REQUESTS = 16
REPEATING = ("Repeat the following line twenty times, one line each, and nothing else: "
             "localserve exports a fine-tuned adapter to Ollama and to vLLM.")
REPEATING_TOKENS = 256


def system_prompt(model_dir: Path, tokens: int = SYSTEM_TOKENS) -> str:
    """Numbered house rules, cut to `tokens` tokens of the served model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = " ".join(f"Rule {i}: answer support questions about localserve briefly, politely and in plain English."
                    for i in range(200))
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:tokens])


def first_token_s(url: str, model: str, system: str, question: str) -> float:
    """Seconds from sending a streamed chat request to its first content piece."""
    body = {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 4, "temperature": 0, "stream": True}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - start
    return time.perf_counter() - start


def shared_prefix_ttft(url: str, model: str, system: str) -> dict:
    """TTFT of SHARED_REQUESTS questions after one system prompt, sent one after the other."""
    import statistics

    first_token_s(url, model, "You are terse.", "Warm up.")  # one-time costs, without seeding the shared prefix
    times = [first_token_s(url, model, system, f"Question {i}: what does localserve do with adapter {i}?")
             for i in range(SHARED_REQUESTS)]
    return {"ttft_first_s": round(times[0], 3), "ttft_median_s": round(statistics.median(times), 3),
            "ttft_mean_s": round(statistics.mean(times), 3)}


def repeating_completion(url: str, model: str) -> dict:
    """Tokens/s of a long greedy completion that repeats itself (best of two), and its text."""
    from localserve.vllm.runtime import server_metrics

    body = {"model": model, "messages": [{"role": "user", "content": REPEATING}], "max_tokens": REPEATING_TOKENS,
            "temperature": 0, "ignore_eos": True}
    best, text = 0.0, ""
    before = server_metrics(url)
    for _ in range(2):
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=900) as response:
            answer = json.load(response)
        best = max(best, answer["usage"]["completion_tokens"] / (time.perf_counter() - start))
        text = answer["choices"][0]["message"]["content"]
    after = server_metrics(url)
    drafted = after.get("vllm:spec_decode_num_draft_tokens_total", 0) - before.get(
        "vllm:spec_decode_num_draft_tokens_total", 0)
    accepted = after.get("vllm:spec_decode_num_accepted_tokens_total", 0) - before.get(
        "vllm:spec_decode_num_accepted_tokens_total", 0)
    return {"tokens_per_s": round(best, 1), "text": text,
            "acceptance": round(accepted / drafted, 3) if drafted else None}


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
    ngram = export_vllm(VllmExportSpec(adapters=(adapter,), name="demo", speculative="ngram", out=root / "ngram"))
    system = system_prompt(merged.model_dir)
    rows, features = [], {}
    for label, export, model in (("merged", merged, "demo"), ("LoRA", lora, "demo-adapter")):
        started = time.perf_counter()
        with serve_export(export.out_dir, list(CPU_ARGS)) as server:
            startup = time.perf_counter() - started
            row = {"served": label, "startup_s": round(startup, 1)}
            for n in (1, 4):
                row[f"tokens_per_s_{n}"] = round(tokens_per_second(server.url, model, args.tokens, n), 1)
            row["rss_gb"] = round(server.rss_bytes() / 1e9, 2)
            if label == "merged":  # as exported: prefix caching on, no speculation
                features["prefix_on"] = shared_prefix_ttft(server.url, model, system)
                features["speculation_off"] = repeating_completion(server.url, model)
        rows.append(row)
        print(f"{label}: {row}", file=sys.stderr)
    with serve_export(merged.out_dir, [*CPU_ARGS, "--no-enable-prefix-caching"]) as server:
        features["prefix_off"] = shared_prefix_ttft(server.url, "demo", system)
    with serve_export(ngram.out_dir, list(CPU_ARGS)) as server:
        features["speculation_on"] = repeating_completion(server.url, "demo")
    print(f"features: {features}", file=sys.stderr)

    print(f"\nembedded SmolLM2-135M-Instruct + demo adapter, vLLM CPU, float32, {args.tokens}-token completions")
    print(f"{'served':8} {'1 request':>12} {'4 concurrent':>14} {'memory (RSS)':>13} {'start-up':>9}")
    for r in rows:
        print(f"{r['served']:8} {r['tokens_per_s_1']:>8} t/s {r['tokens_per_s_4']:>10} t/s "
              f"{r['rss_gb']:>10} GB {r['startup_s']:>7} s")
    on, off = features["prefix_on"], features["prefix_off"]
    spec_on, spec_off = features["speculation_on"], features["speculation_off"]
    print(f"\n{SHARED_REQUESTS} requests, one after the other, sharing a {SYSTEM_TOKENS}-token system prompt")
    print(f"{'prefix caching':15} {'TTFT median':>12} {'TTFT mean':>10} {'first request':>14}")
    for label, t in (("off", off), ("on", on)):
        print(f"{label:15} {t['ttft_median_s']:>10} s {t['ttft_mean_s']:>8} s {t['ttft_first_s']:>12} s")
    print(f"ratio off/on (median TTFT): {off['ttft_median_s'] / on['ttft_median_s']:.2f}x")
    print(f"\n{REPEATING_TOKENS}-token repetitive greedy completion")
    print(f"{'speculation':15} {'tokens/s':>9} {'acceptance':>11}")
    for label, t in (("off", spec_off), ("ngram", spec_on)):
        print(f"{label:15} {t['tokens_per_s']:>9} {t['acceptance'] if t['acceptance'] is not None else '-':>11}")
    print(f"ratio ngram/off (tokens/s): {spec_on['tokens_per_s'] / spec_off['tokens_per_s']:.2f}x; "
          f"same text: {spec_on['text'] == spec_off['text']}")
    if args.json:
        args.json.write_text(json.dumps({"served": rows, "features": features}, indent=2) + "\n")
    if args.out is None:
        import shutil

        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
