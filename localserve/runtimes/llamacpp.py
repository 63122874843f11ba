"""llama.cpp in process (llama-cpp-python): a GGUF chat-formatted by its own template, and the shared timing of
a llama.cpp answer (the Ollama store's target runs its blob the same way)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import InputError, SmokeTestFailed
from .chat import Answer, Closing, failed


def schema_grammar(json_schema: dict | None):
    """The llama.cpp grammar that holds sampling to `json_schema` (as Ollama's runner builds one), or None."""
    if json_schema is None:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False)


def llama_answer(pieces) -> Answer:
    """Time and count one llama.cpp answer: `pieces(counter)` yields (text, finish reason) as they come,
    with `counter` among its logits processors."""
    start = time.perf_counter()
    first = None
    texts: list[str] = []
    reason = None
    tokens = TokenCounter()
    try:
        for text, finish in pieces(tokens):
            if text:
                first = first or time.perf_counter()
                texts.append(text)
            reason = finish or reason
    except Exception as e:  # any failure of the engine on this case (context overflow, template error)
        return failed(start, "llama.cpp", e)
    end = time.perf_counter()
    # every sampled token went through the counter; the end-of-turn token that stopped it is not the answer's
    completion = tokens.sampled - (reason == "stop")
    return Answer("".join(texts), end - start, ttft_s=(first or end) - start, prompt_tokens=tokens.prompt,
                  completion_tokens=max(completion, 0), finish_reason=reason)


# --- llama.cpp in process -------------------------------------------------------------------------------

class GgufTarget(Closing):
    """A GGUF in llama.cpp (llama-cpp-python), chat-formatted by the template the GGUF carries."""

    def __init__(self, label: str, path: Path, seed: int, max_tokens: int, info: dict, lora: Path | None = None):
        from ..llamacpp.smoke import load

        self.label, self.seed, self.max_tokens = label, seed, max_tokens
        self.info = {"engine": "llama.cpp", **info}
        try:
            self._llm = load(path, lora=lora)
        except SmokeTestFailed as e:  # the LoRA does not fit the base
            raise InputError(f"target {label!r}: {e.message}", e.hint) from None
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise InputError(f"target {label!r}: llama.cpp cannot load {path} ({e})",
                             "re-run the export, or update llama-cpp-python for a newer architecture") from None

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        from ..llamacpp.smoke import chat

        return llama_answer(lambda tokens: chat(self._llm, messages, self.max_tokens, seed=self.seed,
                                                 logits_processor=[tokens], grammar=schema_grammar(json_schema)))

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


class TokenCounter:
    """A llama.cpp logits processor that changes nothing and counts: it sees every token about to be
    sampled, and the prompt (the tokens before the first one). Streamed pieces cannot count tokens:
    a character split over several tokens arrives as one piece."""

    def __init__(self):
        self.prompt: int | None = None
        self.sampled = 0

    def __call__(self, input_ids, scores):
        if self.prompt is None:
            self.prompt = len(input_ids)
        self.sampled += 1
        return scores


