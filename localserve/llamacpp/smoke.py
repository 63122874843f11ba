"""One chat turn through llama.cpp: does the file load, answer, and stop on its own?"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SmokeTestFailed

DEFAULT_QUESTION = "Name three primary colours."


@dataclass(frozen=True)
class SmokeResult:
    question: str
    answer: str
    finish_reason: str
    completion_tokens: int
    seconds_to_first_token: float
    tokens_per_second: float
    expected: str | None = None  # from probe.json, when the adapter has one

    @property
    def probe_passed(self) -> bool | None:
        if self.expected is None:
            return None
        return self.expected.lower() in self.answer.lower()

    def to_json(self) -> dict:
        return {**asdict(self), "probe_passed": self.probe_passed}


def load(gguf: Path, n_ctx: int = 2048, lora: Path | None = None):
    """`gguf` in llama.cpp; `lora` (a GGUF LoRA adapter) is applied on top at full scale."""
    from llama_cpp import Llama

    if lora is None:
        return Llama(model_path=str(gguf), n_ctx=n_ctx, verbose=False, seed=0)
    from llama_cpp._utils import suppress_stdout_stderr

    from .lora import check_lora_fits

    # llama-cpp-python takes a failed adapter load (a NULL pointer) for success and the first
    # decode then crashes the interpreter, so the file is checked against the base first.
    check_lora_fits(gguf, lora)
    failed = f"llama.cpp could not apply the LoRA {Path(lora).name} to {Path(gguf).name}"
    try:
        # verbose=False does not cover adapter loading, which prints a line per tensor it cannot repack
        with suppress_stdout_stderr(disable=False):
            llm = Llama(model_path=str(gguf), n_ctx=n_ctx, verbose=False, seed=0, lora_path=str(lora))
    except ValueError as e:
        raise SmokeTestFailed(f"{failed}: {e}", "the adapter's architecture or shapes do not fit this base") from None
    if not getattr(llm, "_lora_adapter", True):
        llm.close()
        raise SmokeTestFailed(failed, "the adapter's architecture or shapes do not fit this base")
    return llm


def chat(llm, messages: list[dict], max_tokens: int = 256):
    """Greedy chat completion with the GGUF's own chat template; yields text pieces and the reason."""
    pieces: list[str] = []
    reason = None
    for chunk in llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_tokens,
                                            stream=True):
        choice = chunk["choices"][0]
        text = choice.get("delta", {}).get("content")
        if text:
            pieces.append(text)
            yield text, None
        if choice.get("finish_reason"):
            reason = choice["finish_reason"]
    yield "", reason or "length"


def smoke_test(gguf: Path, question: str | None = None, expected: str | None = None,
               max_tokens: int = 256, lora: Path | None = None) -> SmokeResult:
    """Ask one question; raise SmokeTestFailed if the answer is empty, never stops, or misses `expected`.

    With `lora`, the question goes to `gguf` with that GGUF LoRA adapter applied (llama.cpp's lora_path).
    """
    llm = load(gguf, lora=lora)
    question = question or DEFAULT_QUESTION
    start = time.perf_counter()
    first = None
    answer, reason, n = "", "length", 0
    for text, finish in chat(llm, [{"role": "user", "content": question}], max_tokens):
        if text:
            n += 1
            answer += text
            first = first or time.perf_counter()
        if finish:
            reason = finish
    end = time.perf_counter()
    llm.close()
    ttft = (first or end) - start
    decode = (n - 1) / (end - first) if first and n > 1 and end > first else 0.0
    result = SmokeResult(question, answer.strip(), reason, n, round(ttft, 3), round(decode, 1), expected)
    name = Path(gguf).name + (f" + {Path(lora).name}" if lora is not None else "")
    if not result.answer:
        raise SmokeTestFailed(f"{name} produced no text for {question!r} in llama.cpp",
                              "check the chat template and the end-of-turn token of the model")
    if reason != "stop":
        raise SmokeTestFailed(f"{name} did not stop within {max_tokens} tokens (finish reason {reason!r})",
                              "the end-of-turn token is probably wrong; check the chat template and EOS")
    if result.probe_passed is False:
        raise SmokeTestFailed(f"{name} answered {question!r} with {result.answer!r}, which lacks {expected!r} "
                              "(from probe.json)", "a lower-bit quant may have lost the fine-tune; try Q8_0")
    return result
