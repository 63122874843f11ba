#!/usr/bin/env python3
"""One GGUF on every runtime, in one run: llama-cpp-python in process, llama-server (as `localserve serve`
starts it), and the real Ollama — decode tokens/s and time to first token for 1 and 4 concurrent requests,
with ratios to llama-server; then the A/B router's added latency in front of the real Ollama.

    ~/.cache/localserve/venv/bin/python scripts/bench_runtimes.py [--export exports/demo] [--threads 2] [--json]

Each runtime gets the same threads and the same bounded requests (`localserve bench`: a 128-token prompt, 64
new tokens; llama-server decodes exactly 64 with ignore_eos, Ollama's /v1 has no such switch and may stop
earlier — decode rates are per generated token either way). llama-cpp-python decodes one sequence per context,
so its "4 concurrent" are 4 requests queued on one context (their TTFT includes the wait). The router run
alternates direct and routed requests to the same Ollama model (streamed /api/chat, 32 tokens) so both see the
same machine. The Ollama binary: $LOCALSERVE_OLLAMA_BIN, PATH, or ../shared/ollama (tests/realollama.py).
Everything written (Ollama's store, the experiment, logs) goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def ensure_export(path: Path) -> Path:
    if (path / "localserve.json").is_file():
        return path
    from localserve import ExportSpec, export

    export(ExportSpec(adapter=REPO / "examples" / "demo-adapter", quants=("Q4_K_M",), name="demo", out=path,
                      register=False))
    return path


def bench_target(gguf: Path, target: str, threads: int, url: str | None = None, served: str | None = None) -> dict:
    from localserve.plan.bench import BenchSpec, bench

    return bench(BenchSpec(model=gguf, target=target, concurrency=4, url=url, served_name=served, store=False,
                           n_threads=threads if target == "llama.cpp" else None))


def row(name: str, r: dict) -> dict:
    c = r["concurrent"]
    # llama.cpp in process decodes exactly max_tokens; a server without ignore_eos (Ollama) may stop sooner
    tokens = c.get("generated_tokens") or [r["settings"]["max_tokens"]] * c["requests"]
    return {"runtime": name, "decode_1": r["decode_tokens_per_s"], "ttft_1": r["ttft_s"],
            "decode_4": c.get("decode_tokens_per_s"), "aggregate_4": c["aggregate_output_tokens_per_s"],
            "ttft_4": c.get("ttft_s"), "mode_4": c["mode"], "tokens_4": statistics.median(tokens)}


def router_latency(ollama_url: str, model: str, requests: int) -> dict:
    import httpx

    from localserve.router import experiment as ex

    router = ex.start("rbench", [f"{model}=100"], port=None, upstream=ollama_url)
    times: dict[str, list[tuple[float, float]]] = {"direct": [], "router": []}
    body = {"messages": [{"role": "user", "content": "Say something about rivers."}], "stream": True,
            "options": {"num_predict": 32, "temperature": 0, "seed": 0}}
    try:
        with httpx.Client(timeout=300) as http:
            for i in range(requests + 1):
                for where, url, name in (("direct", ollama_url, model), ("router", router.url, "rbench")):
                    t0 = time.perf_counter()
                    first = None
                    with http.stream("POST", f"{url}/api/chat", json={**body, "model": name},
                                     headers={"X-User-Id": f"u{i}"}) as r:
                        assert r.status_code == 200, r.read()
                        for line in r.iter_lines():
                            if line and first is None and json.loads(line).get("message", {}).get("content"):
                                first = time.perf_counter() - t0
                    if i:  # the first round warms both paths up
                        times[where].append((first or 0.0, time.perf_counter() - t0))
    finally:
        ex.stop("rbench")
    med = {w: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for w, v in times.items()}
    return {"requests": requests, "direct_ttft_s": med["direct"][0], "router_ttft_s": med["router"][0],
            "direct_total_s": med["direct"][1], "router_total_s": med["router"][1],
            "added_ttft_ms": (med["router"][0] - med["direct"][0]) * 1000,
            "added_total_ms": (med["router"][1] - med["direct"][1]) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, help="a GGUF export (default: the demo adapter, exported once here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--router-requests", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON instead of the table")
    ap.add_argument("--out", type=Path, help="also write the measurements as JSON to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    os.environ["LOCALSERVE_STATE_DIR"] = str(work / "state")
    from localserve.lineage import read_record
    from localserve.progress import set_quiet
    from localserve.runtimes.llama_server import serve

    set_quiet(True)
    export_dir = ensure_export(args.export or work / "demo")
    record = read_record(export_dir)
    gguf = export_dir / record.artifact().file
    rows, raw = [], {}

    raw["llama.cpp"] = bench_target(gguf, "llama.cpp", args.threads)
    rows.append(row("llama-cpp-python (in process)", raw["llama.cpp"]))

    with serve([export_dir], port=0, threads=args.threads, parallel=4) as serving:
        raw["llama-server"] = bench_target(gguf, "llama-server", args.threads, serving.upstream.url, record.name)
        raw["llama-server+front"] = bench_target(gguf, "llama-server", args.threads, serving.url, record.name)
    rows.append(row("llama-server", raw["llama-server"]))
    rows.append(row("llama-server behind `localserve serve`'s front", raw["llama-server+front"]))

    from realollama import missing, running_ollama

    from localserve.ollama.registration import register

    if missing():
        print(f"skipping Ollama: {missing()}", file=sys.stderr)
    else:
        with running_ollama(work / "ollama", env={"LLAMA_ARG_THREADS": str(args.threads),
                                                  "OLLAMA_NUM_PARALLEL": "4"}) as ollama:
            register(export_dir, name="rbench:v1", host=ollama.url, record=record)
            raw["ollama"] = bench_target(gguf, "ollama", args.threads, ollama.url, "rbench:v1")
            raw["ollama"]["server_version"] = ollama.version
            rows.append(row(f"Ollama {ollama.version}", raw["ollama"]))
            raw["router"] = router_latency(ollama.url, "rbench:v1", args.router_requests)

    ref = next(r for r in rows if r["runtime"] == "llama-server")
    for r in rows:
        r["decode_1_ratio"] = r["decode_1"] / ref["decode_1"]
        r["aggregate_4_ratio"] = r["aggregate_4"] / ref["aggregate_4"]
        r["ttft_1_ratio"] = r["ttft_1"] / ref["ttft_1"]
    measured = json.dumps({"gguf": str(gguf), "threads": args.threads, "rows": rows, "router": raw.get("router"),
                           "raw": raw}, indent=2, default=str)
    if args.out:
        args.out.write_text(measured + "\n", encoding="utf-8")
    if args.json:
        print(measured)
        return
    print(f"{gguf.name}, {args.threads} threads each; ratios to llama-server")
    print("| runtime | 1 request: decode t/s | TTFT | 4 concurrent: aggregate t/s | tokens each | per-request "
          "decode t/s | TTFT | decode / llama-server | TTFT / llama-server | aggregate / llama-server |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seq = " (queued)" if r["mode_4"] == "sequential" else ""
        print(f"| {r['runtime']} | {r['decode_1']:.1f} | {r['ttft_1'] * 1000:.0f} ms | {r['aggregate_4']:.1f}{seq} | "
              f"{r['tokens_4']:.0f} | {r['decode_4']:.1f} | {r['ttft_4'] * 1000:.0f} ms | {r['decode_1_ratio']:.2f}x | "
              f"{r['ttft_1_ratio']:.2f}x | {r['aggregate_4_ratio']:.2f}x |")
    if raw.get("router"):
        rt = raw["router"]
        print(f"\nA/B router in front of Ollama ({rt['requests']} streamed /api/chat requests each way, medians): "
              f"TTFT {rt['direct_ttft_s'] * 1000:.0f} -> {rt['router_ttft_s'] * 1000:.0f} ms "
              f"(+{rt['added_ttft_ms']:.1f} ms), whole answer {rt['direct_total_s'] * 1000:.0f} -> "
              f"{rt['router_total_s'] * 1000:.0f} ms (+{rt['added_total_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
