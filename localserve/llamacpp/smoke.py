"""One chat turn through llama.cpp: does the file load, answer, and stop on its own?"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SmokeTestFailed
from ..faults import SMOKE, fault_point

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
    from llama_cpp._utils import suppress_stdout_stderr

    from ..progress import is_debug

    # verbose=False does not cover what llama.cpp prints while it creates the context (a context
    # longer than the model was trained with, tensors it cannot repack): unless --debug, it goes.
    quiet = suppress_stdout_stderr(disable=is_debug())
    if lora is None:
        with quiet:
            return Llama(model_path=str(gguf), n_ctx=n_ctx, verbose=False, seed=0)
    # llama-cpp-python takes a failed adapter load (a NULL pointer) for success and the first
    # decode then crashes the interpreter, so the file is checked against the base first.
    check_lora_fits(gguf, lora)
    failed = f"llama.cpp could not apply the LoRA {Path(lora).name} to {Path(gguf).name}"
    try:
        with quiet:
            llm = Llama(model_path=str(gguf), n_ctx=n_ctx, verbose=False, seed=0, lora_path=str(lora))
    except ValueError as e:
        raise SmokeTestFailed(f"{failed}: {e}", "the adapter's architecture or shapes do not fit this base") from None
    if not getattr(llm, "_lora_adapter", True):
        llm.close()
        raise SmokeTestFailed(failed, "the adapter's architecture or shapes do not fit this base")
    return llm


def check_lora_fits(base_gguf: Path, lora_gguf: Path) -> None:
    """Raise SmokeTestFailed unless `lora_gguf` is a GGUF LoRA whose pairs fit tensors of `base_gguf`
    (what llama.cpp checks at load time; docs/ollama.md#adapters), read from the headers only."""
    import gguf

    name = f"{Path(lora_gguf).name} on {Path(base_gguf).name}"
    try:
        lora, base = gguf.GGUFReader(str(lora_gguf), "r"), gguf.GGUFReader(str(base_gguf), "r")
    except Exception as e:  # gguf raises ValueError/struct errors on files that are not GGUF
        raise SmokeTestFailed(f"{name}: not a readable GGUF ({e})", "re-run the export") from None

    def kv(reader, key):
        f = reader.fields.get(key)
        return f.contents() if f is not None and f.data else None

    if kv(lora, "general.type") != "adapter" or kv(lora, "adapter.type") != "lora":
        raise SmokeTestFailed(f"{name}: not a LoRA adapter (general.type={kv(lora, 'general.type')!r})",
                              "convert the adapter with convert_lora_to_gguf.py")
    if kv(lora, "general.architecture") != kv(base, "general.architecture"):
        raise SmokeTestFailed(f"{name}: model arch and LoRA arch mismatch ({kv(base, 'general.architecture')} vs "
                              f"{kv(lora, 'general.architecture')})", "the adapter was trained on another base")
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in base.tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in lora.tensors:
        stem, _, part = t.name.rpartition(".")
        if part in ("lora_a", "lora_b"):
            pairs.setdefault(stem, {})[part] = tuple(int(x) for x in t.shape)
    for stem, ab in pairs.items():
        w, a, b = shapes.get(stem), ab.get("lora_a"), ab.get("lora_b")
        if w is None or a is None or b is None:
            raise SmokeTestFailed(f"{name}: {stem} has no base tensor or lacks half of its LoRA pair",
                                  "the adapter was trained on another base")
        # ggml order: base ne=[in, out], lora_a ne=[in, r], lora_b ne=[r, out] (token_embd's a is transposed)
        if not stem.startswith("token_embd") and (a[0] != w[0] or b[1] != w[1] or a[1] != b[0]):
            raise SmokeTestFailed(f"{name}: {stem} is {list(w)} but its LoRA pair is {list(a)} x {list(b)}",
                                  "the adapter was trained on another base")


def chat(llm, messages: list[dict], max_tokens: int = 256, **options):
    """Greedy chat completion with the GGUF's own chat template; yields text pieces and the reason.

    `options` go to create_chat_completion as they are (seed, logits_processor, ...)."""
    pieces: list[str] = []
    reason = None
    for chunk in llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_tokens,
                                            stream=True, **options):
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
            if first is None:
                first = time.perf_counter()
                fault_point(SMOKE)
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
