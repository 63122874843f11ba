"""Timing a GGUF in llama.cpp in-process (llama-cpp-python): prompt processing, TTFT, decode.

Used by `localserve bench --target llama.cpp` (localserve/plan/bench.py stores and reports the
numbers). Every request is bounded: a fixed prompt length and a fixed number of new tokens, with
end-of-generation tokens suppressed so each request decodes exactly `max_tokens` tokens.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path

from ..errors import InputError, ToolError

_FILLER = ("The quick brown fox jumps over the lazy dog while the committee reviews the quarterly "
           "report on river shipping, harvest yields and the price of copper in distant markets. ")


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp's C code logs to fd 2 during load; keep the user's terminal for our own lines."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(gguf: Path, *, prompt_tokens: int = 128, max_tokens: int = 64, requests: int = 4,
            n_threads: int | None = None) -> dict:
    """Time `requests` bounded completions on one llama.cpp context, one after another.

    llama-cpp-python serves one sequence per context, so "N concurrent" here is N requests queued
    on one engine: the aggregate rate is what this engine delivers under that load, not batched
    parallel decoding (llama-server or vLLM would batch them).
    """
    try:
        import llama_cpp
    except ImportError as e:
        raise ToolError("llama-cpp-python", f"cannot import llama_cpp: {e}", hint="pip install llama-cpp-python") from None
    n_ctx = prompt_tokens + max_tokens + 16
    try:
        with _quiet_stderr():
            llm = llama_cpp.Llama(str(gguf), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise ToolError("llama.cpp", f"could not load {gguf}: {e}", hint="check the file with `localserve plan` first") from None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    def no_stop(_input_ids, scores):
        scores[eog] = -float("inf")
        return scores

    suppress_eog = llama_cpp.LogitsProcessorList([no_stop])

    def prompt(i: int) -> list[int]:
        # a distinct opening per request so no request reuses another's cached prefix
        text = f"Request {i}. " + _FILLER * (prompt_tokens // 20 + 2)
        tokens = llm.tokenize(text.encode(), add_bos=True)[:prompt_tokens]
        if len(tokens) < prompt_tokens:
            raise InputError(f"could not build a {prompt_tokens}-token prompt", "use a smaller --prompt-tokens")
        return tokens

    def prompt_rate(tokens: list[int]) -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        return len(tokens) / (time.perf_counter() - t0)

    def complete(tokens: list[int]) -> tuple[float, float, int]:
        """(seconds to first token, seconds from first to last token, tokens generated).

        Token by token from `Llama.generate`: the streaming text API holds text back (stop strings,
        partial UTF-8), which would blur the first token's arrival.
        """
        llm.reset()
        t0 = time.perf_counter()
        first = last = 0.0
        generated = 0
        for _ in llm.generate(tokens, temp=0.0, reset=True, logits_processor=suppress_eog):
            last = time.perf_counter()
            first = first or last
            generated += 1
            if generated >= max_tokens:
                break
        if generated < 2:
            raise ToolError("llama.cpp", f"{gguf.name} produced {generated} tokens for a bounded request")
        return first - t0, last - first, generated

    complete(prompt(-1)[: min(prompt_tokens, 16)])  # warm-up: page in the weights, not counted
    pp, ttft, decode = [], [], []
    t_all = time.perf_counter()
    total_generated = 0
    queue = [prompt(i) for i in range(requests)]
    queued_ttft = []  # from the moment all requests are queued: a request waits for those before it
    for tokens in queue:
        started = time.perf_counter() - t_all
        first, rest, generated = complete(tokens)
        queued_ttft.append(started + first)
        ttft.append(first)
        decode.append((generated - 1) / rest)
        total_generated += generated
    wall = time.perf_counter() - t_all
    for tokens in queue[:2]:
        pp.append(prompt_rate(tokens))
    return {
        "ttft_s": statistics.median(ttft),
        "prompt_tokens_per_s": statistics.median(pp),
        "decode_tokens_per_s": statistics.median(decode),
        "concurrent": {
            "requests": requests,
            "mode": "sequential",
            "label": "sequential, llama.cpp single context",
            "aggregate_output_tokens_per_s": total_generated / wall,
            "wall_s": wall,
            "ttft_s": statistics.median(queued_ttft),
            "decode_tokens_per_s": statistics.median(decode),
            "how": (f"sequential, llama.cpp single context: {requests} requests queued on one context and "
                    "served one after another, not decoded in parallel (llama-cpp-python's Llama decodes one "
                    "sequence per context); aggregate = all generated tokens / wall time including prompt "
                    "processing, so it is no measure of batched throughput"),
        },
        "settings": {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "n_ctx": n_ctx,
                     "n_threads": llm.context_params.n_threads, "sampling": "greedy",
                     "end_of_generation_suppressed": True},
    }
