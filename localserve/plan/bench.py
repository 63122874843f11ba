"""`localserve bench`: measure a model on this machine and store the numbers where planning finds them.

Targets:
- `llama.cpp`: in-process with llama-cpp-python (see localserve/llamacpp/bench.py);
- `ollama`, `vllm`, `llama-server`, `lmstudio`, `jan`: a server on loopback, through its OpenAI-compatible
  `/v1/chat/completions` with streaming, so TTFT is the arrival of the first content chunk (the stream is
  read by the runtimes' one parser of server-sent events, localserve.runtimes.openai).

Results go to `<model>.bench.json` (one entry per target) and, when the model sits in an export
folder, under "bench" in the sibling `localserve.json` (other keys untouched). Both writes are
atomic. Every request is bounded (prompt length, new tokens, timeout) and goes to loopback only.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ipaddress
import json
import os
import platform
import secrets
import socket
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ToolError, UnknownName
from ..fsutil import write_json
from ..lineage import find_record, read_record, record_path, write_record
from ..progress import step
from ..runtimes.openai import sse_data

TARGETS = ("llama.cpp", "ollama", "vllm", "llama-server", "lmstudio", "jan")
DEFAULT_URLS = {"ollama": "http://127.0.0.1:11434", "vllm": "http://127.0.0.1:8000",
                "llama-server": "http://127.0.0.1:8080", "lmstudio": "http://127.0.0.1:1234",
                "jan": "http://127.0.0.1:1337"}
# servers whose sampling takes `ignore_eos` (vLLM's extra parameter, llama.cpp's sampling option): they decode
# exactly max_tokens, so decoding is timed over the same count everywhere
IGNORE_EOS = ("vllm", "llama-server", "jan")
MAX_PROMPT_TOKENS = 4096
MAX_NEW_TOKENS = 1024
MAX_REQUESTS = 32


@dataclass(frozen=True)
class BenchSpec:
    model: Path
    target: str = "llama.cpp"
    concurrency: int = 4
    prompt_tokens: int = 128
    max_tokens: int = 64
    url: str | None = None  # for ollama/vllm; loopback only
    served_name: str | None = None  # the model's name on the server (default: from localserve.json or the file)
    timeout_s: float = 120.0
    n_threads: int | None = None
    store: bool = True

    def __post_init__(self):
        object.__setattr__(self, "model", Path(self.model))
        if self.target not in TARGETS:
            raise UnknownName("bench target", self.target, TARGETS)
        for label, value, top in (("--concurrency", self.concurrency, MAX_REQUESTS),
                                  ("--prompt-tokens", self.prompt_tokens, MAX_PROMPT_TOKENS),
                                  ("--max-tokens", self.max_tokens, MAX_NEW_TOKENS)):
            if not 1 <= value <= top:
                raise InputError(f"{label} must be between 1 and {top}, not {value}", "requests are bounded")
        if self.max_tokens < 2:
            raise InputError("--max-tokens must be at least 2 to time decoding")
        if self.target == "llama.cpp" and not (self.model.is_file() and self.model.suffix.lower() == ".gguf"):
            raise InputError(f"{self.model} is not a .gguf file", "bench --target llama.cpp needs a GGUF")
        if self.target != "llama.cpp":
            object.__setattr__(self, "url", _loopback_url(self.url or DEFAULT_URLS[self.target]))


def _loopback_url(url: str) -> str:
    """The URL if its host is loopback: 'localhost' or a 127.0.0.0/8 / ::1 literal (no DNS lookup)."""
    parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(f"bench only talks to loopback servers, and {host!r} is not one",
                         "run the server on this machine and pass --url http://127.0.0.1:PORT")
    return f"{parsed.scheme or 'http'}://{parsed.netloc}".rstrip("/")


def _machine(n_threads: int | None) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "n_threads": n_threads,
            "python": platform.python_version()}


def bench(spec: BenchSpec) -> dict[str, Any]:
    """Measure, store (unless spec.store is False) and return the result."""
    step(f"benchmarking {spec.model.name} on {spec.target}: {spec.concurrency} requests of "
         f"{spec.prompt_tokens} prompt + {spec.max_tokens} new tokens")
    if spec.target == "llama.cpp":
        from ..llamacpp.bench import measure

        raw = measure(spec.model, prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens,
                      requests=spec.concurrency, n_threads=spec.n_threads)
    else:
        raw = _measure_http(spec)
    result = {
        "target": spec.target,
        "model_file": spec.model.name,
        "model_size": spec.model.stat().st_size if spec.model.is_file() else None,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(raw.get("settings", {}).get("n_threads", spec.n_threads)),
        **raw,
    }
    if spec.target != "llama.cpp":
        result["url"] = spec.url
    if spec.store:
        result["stored_in"] = [str(p) for p in store(spec.model, result)]
    return result


def bench_path(model: Path) -> Path:
    return model.with_name(model.name + ".bench.json") if model.is_file() else model / "bench.json"


def load_bench(model: Path) -> dict[str, Any]:
    """The stored measurements of a model ({target: result}), or {} when it was never benchmarked."""
    data = _read_json(bench_path(Path(model)))
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Measurement:
    """One stored bench result and where it was read from, so planning can say which numbers it used."""

    target: str
    model_file: str  # the GGUF (or served folder) that was benchmarked
    measured_at: str
    source: Path  # the file the result was read from
    result: dict[str, Any]

    def describe(self) -> str:
        return (f"`localserve bench --target {self.target}` of {self.model_file} on {self.measured_at} "
                f"(read from {self.source})")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "model_file": self.model_file, "measured_at": self.measured_at,
                "source": str(self.source)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def measurements(model: Path) -> list[Measurement]:
    """Every stored bench result for a GGUF or an export folder, newest first.

    A GGUF: its `X.gguf.bench.json` and its entry under "bench" in the sibling localserve.json.
    A folder: its own bench.json (a server benchmarked on the folder), every `*.gguf.bench.json`
    in it, and every entry under "bench" in its localserve.json. The same result stored in two
    places counts once.
    """
    model = Path(model)
    found: dict[tuple[str, str, str], Measurement] = {}

    def add(source: Path, file_name: str, by_target: Any) -> None:
        if not isinstance(by_target, dict):
            return
        for target, result in by_target.items():
            if not (target in TARGETS and isinstance(result, dict) and (result.get("decode_tokens_per_s") or 0) > 0):
                continue
            name = str(result.get("model_file") or file_name)
            key = (target, name, str(result.get("measured_at", "")))
            found.setdefault(key, Measurement(target, name, key[2] or "an unknown date", source, result))

    add(bench_path(model), model.name, _read_json(bench_path(model)))
    if model.is_dir():
        for path in sorted(model.glob("*.gguf.bench.json")):
            add(path, path.name[: -len(".bench.json")], _read_json(path))
    found_record = find_record(model)
    if found_record is not None:
        folder, record = found_record
        for file_name, by_target in (record.bench or {}).items():
            if model.is_dir() or file_name == model.name:
                add(record_path(folder), file_name, by_target)
    return sorted(found.values(), key=lambda m: m.measured_at, reverse=True)


def measured(model: Path | None, prefer: tuple[str, ...]) -> Measurement | None:
    """The newest stored measurement of the first target in `prefer` that has one."""
    if model is None:
        return None
    every = measurements(model)
    for target in prefer:
        for m in every:
            if m.target == target:
                return m
    return None


def store(model: Path, result: dict[str, Any]) -> list[Path]:
    """Write the result next to the model and into the sibling localserve.json (if there is one)."""
    written = []
    path = bench_path(model)
    data = load_bench(model)
    data[result["target"]] = result
    written.append(write_json(path, data))
    folder = model if model.is_dir() else model.parent
    if record_path(folder).is_file():
        try:
            record = read_record(folder)
        except InputError as e:
            raise InputError(f"{e.message}; bench results were not added to it", f"results are in {path}") from None
        bench = {**(record.bench or {})}
        bench[model.name] = {**bench.get(model.name, {}), result["target"]: result}
        written.append(write_record(folder, record.replace(bench=bench)))
    return written


# ------------------------------------------------------------------------------------------- HTTP

def _served_name(spec: BenchSpec) -> str:
    if spec.served_name:
        return spec.served_name
    found = find_record(spec.model)
    if found is not None and found[1].name:
        return found[1].name
    return spec.model.stem


def _stream_chat(spec: BenchSpec, model: str, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "stream": True, "max_tokens": spec.max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
        "stream_options": {"include_usage": True},
    }
    if spec.target in IGNORE_EOS:
        body["ignore_eos"] = True
    request = urllib.request.Request(f"{spec.url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(request, timeout=spec.timeout_s) as response:
            lines = (raw.decode("utf-8", "replace").strip() for raw in response)
            for event in sse_data(lines):
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        chunks += 1
                if time.perf_counter() - t0 > spec.timeout_s:
                    raise ToolError(spec.target, f"request exceeded {spec.timeout_s:.0f} s")
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        raise ToolError(spec.target, f"POST {spec.url}/v1/chat/completions answered {e.code}", detail,
                        hint=f"check that the server serves a model named {model!r} (--served-name)") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout) as e:
        raise ToolError(spec.target, f"cannot reach {spec.url}: {getattr(e, 'reason', e)}",
                        hint=f"start the {spec.target} server on this machine, or pass --url") from None
    if first is None:
        raise ToolError(spec.target, f"{spec.url} streamed no content for model {model!r}")
    generated = int(usage.get("completion_tokens") or chunks)
    return {"ttft": first - t0, "decode": last - first, "generated": generated,
            "prompt_tokens": usage.get("prompt_tokens"), "counted_from": "usage" if usage else "chunks"}


def _measure_http(spec: BenchSpec) -> dict[str, Any]:
    model = _served_name(spec)
    words = " ".join(["river copper harvest report market shipping price review"] * (spec.prompt_tokens // 8 + 1))
    # a run of its own: a server keeps earlier prompts in its cache (llama-server's slots, Ollama's runner), and
    # the same prompts again would time a cache hit instead of prompt processing
    run = secrets.token_hex(3)
    text = " ".join(words.split()[: max(1, int(spec.prompt_tokens * 0.75))])

    def prompt(i: int) -> str:
        return f"Request {run}-{i}. Summarise: {text}"

    _stream_chat(spec, model, prompt(-1))  # warm-up: the server may load the model on first use
    single = [_stream_chat(spec, model, prompt(i)) for i in range(2)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
        parallel = list(pool.map(lambda i: _stream_chat(spec, model, prompt(100 + i)), range(spec.concurrency)))
    wall = time.perf_counter() - t0
    decode = [(r["generated"] - 1) / r["decode"] for r in single if r["generated"] > 1 and r["decode"] > 0]
    if not decode:
        raise ToolError(spec.target, f"model {model!r} stopped after one token; cannot time decoding")
    prompt_counts = [r["prompt_tokens"] for r in single if r["prompt_tokens"]]
    ttft = statistics.median(r["ttft"] for r in single)
    return {
        "served_name": model,
        "ttft_s": ttft,
        "prompt_tokens_per_s": (statistics.median(prompt_counts) / ttft) if prompt_counts else None,
        "decode_tokens_per_s": statistics.median(decode),
        "generated_tokens": [r["generated"] for r in single],  # fewer than max_tokens: the model stopped itself
        "concurrent": {
            "requests": spec.concurrency,
            "mode": "concurrent",
            "label": f"concurrent, {spec.concurrency} requests in flight on the server",
            "aggregate_output_tokens_per_s": sum(r["generated"] for r in parallel) / wall,
            "wall_s": wall,
            "generated_tokens": [r["generated"] for r in parallel],
            "ttft_s": statistics.median(r["ttft"] for r in parallel),
            "decode_tokens_per_s": statistics.median((r["generated"] - 1) / r["decode"] for r in parallel
                                                     if r["generated"] > 1 and r["decode"] > 0),
            "how": f"{spec.concurrency} streaming requests sent at once from {spec.concurrency} threads; "
                   "aggregate = all generated tokens / wall time; ttft and decode: medians over the requests",
        },
        "notes": ["prompt tokens/s over HTTP is prompt tokens / TTFT (includes queueing and the first "
                  "decode step), a lower bound on the server's prompt processing rate",
                  f"token counts from the server's usage report when sent, else one per content chunk "
                  f"(here: {single[0]['counted_from']})"],
        "settings": {"prompt_tokens": prompt_counts[0] if prompt_counts else None, "max_tokens": spec.max_tokens,
                     "temperature": 0.0, "end_of_generation_suppressed": spec.target in IGNORE_EOS},
    }
