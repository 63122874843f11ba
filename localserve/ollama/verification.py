"""`localserve verify`: talk to a registered model through the clients developers actually use.

Three clients, the same short multi-turn conversation each: LangChain's `ChatOllama`, the official
`ollama` client (both on Ollama's /api/chat), and the `openai` client on Ollama's /v1. A client
passes when every reply is non-empty and ends because the model stopped (done_reason /
finish_reason "stop"), not because it ran into the token limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import LocalserveError, OllamaError, UnknownName
from ..progress import step
from .client import OllamaServer
from .names import parse_name

CONVERSATION = (
    "Hello! In one short sentence, what is the capital of France?",
    "Thanks. And in one short sentence, what is the capital of Italy?",
)
MAX_TOKENS = 256  # a reply that needs more than this did not stop on its own


class VerifyFailed(OllamaError):
    """A client got an empty reply, or a reply that did not end with "stop"."""


@dataclass(frozen=True)
class Turn:
    prompt: str
    reply: str
    finish_reason: str | None
    ttft_s: float
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ClientReport:
    client: str
    turns: tuple[Turn, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.turns) and all(
            t.reply.strip() and t.finish_reason == "stop" for t in self.turns)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        for i, t in enumerate(self.turns, 1):
            if not t.reply.strip():
                return f"turn {i}: empty reply"
            if t.finish_reason != "stop":
                return f"turn {i}: ended with {t.finish_reason!r}, not 'stop' (the model did not stop on its own)"
        return None

    @property
    def ttft_s(self) -> float:
        return sum(t.ttft_s for t in self.turns) / max(1, len(self.turns))

    @property
    def tokens_per_s(self) -> float:
        secs = sum(t.seconds for t in self.turns)
        return sum(t.tokens for t in self.turns) / secs if secs > 0 else 0.0


@dataclass(frozen=True)
class VerifyReport:
    model: str
    host: str
    clients: tuple[ClientReport, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.clients)


# Each runner streams one turn: (messages so far) -> iterator of (text piece, finish reason or None,
# token count or None). The finish reason and count arrive with the last item.
Streamer = Callable[[list[dict]], Iterator[tuple[str, str | None, int | None]]]


def _langchain(host: str, model: str, max_tokens: int) -> Streamer:
    from langchain_ollama import ChatOllama

    chat = ChatOllama(model=model, base_url=host, temperature=0, num_predict=max_tokens)

    def run(messages: list[dict]):
        lc = [(m["role"] if m["role"] != "assistant" else "ai", m["content"]) for m in messages]
        for chunk in chat.stream(lc):
            meta = chunk.response_metadata or {}
            yield str(chunk.content or ""), meta.get("done_reason"), meta.get("eval_count")

    return run


def _ollama(host: str, model: str, max_tokens: int) -> Streamer:
    import ollama

    client = ollama.Client(host=host)

    def run(messages: list[dict]):
        for part in client.chat(model=model, messages=messages, stream=True,
                                options={"temperature": 0, "num_predict": max_tokens}):
            yield part.message.content or "", part.done_reason if part.done else None, part.eval_count

    return run


def _openai(host: str, model: str, max_tokens: int) -> Streamer:
    from openai import OpenAI

    # Ollama ignores the key, the client insists on one; temperature is explicit because the
    # /v1 layer forces 1.0 when it is omitted (docs/ollama.md#inference)
    client = OpenAI(base_url=host.rstrip("/") + "/v1", api_key="ollama", max_retries=0)

    def run(messages: list[dict]):
        stream = client.chat.completions.create(model=model, messages=messages, stream=True, temperature=0,
                                                max_tokens=max_tokens)
        pieces = 0
        for chunk in stream:
            for choice in chunk.choices:
                text = (choice.delta.content or "") if choice.delta else ""
                pieces += bool(text)
                yield text, choice.finish_reason, pieces if choice.finish_reason else None

    return run


CLIENTS: dict[str, Callable[[str, str, int], Streamer]] = {
    "langchain": _langchain,
    "ollama": _ollama,
    "openai": _openai,
}


def _converse(name: str, streamer: Streamer) -> ClientReport:
    messages: list[dict] = []
    turns = []
    for prompt in CONVERSATION:
        messages.append({"role": "user", "content": prompt})
        t0 = time.perf_counter()
        first = None
        reply, reason, tokens, pieces = "", None, None, 0
        for text, fin, count in streamer(messages):
            if text and first is None:
                first = time.perf_counter()
            reply += text
            pieces += bool(text)
            reason = fin or reason
            tokens = count or tokens
        end = time.perf_counter()
        first = first or end
        turns.append(Turn(prompt, reply, reason, first - t0, tokens or pieces, max(end - first, 1e-9)))
        messages.append({"role": "assistant", "content": reply})
        if not reply.strip() or reason != "stop":
            break
    return ClientReport(name, tuple(turns))


def verify(name: str, host: str | None = None, clients: tuple[str, ...] | None = None,
           max_tokens: int = MAX_TOKENS) -> VerifyReport:
    """Run the conversation through each client against `name` on the server at `host`.

    A reply longer than `max_tokens` counts as one that did not stop."""
    model = parse_name(name).display
    chosen = clients or tuple(CLIENTS)
    for c in chosen:
        if c not in CLIENTS:
            raise UnknownName("client", c, list(CLIENTS))
    with OllamaServer(host) as server:
        server.version()  # unreachable: one clear error, before three clients fail the same way
        if server.manifest_digest(model) is None:
            raise OllamaError(f"model {model} is not on the Ollama server at {server.host}",
                              "register it first (`localserve register OUTPUT_DIR` or `localserve install BUNDLE`), "
                              "and check the name with `localserve ls`")
        resolved = server.host
    reports = []
    for c in chosen:
        step(f"verify {model} through {c}")
        try:
            reports.append(_converse(c, CLIENTS[c](resolved, model, max_tokens)))
        except LocalserveError:
            raise
        except Exception as e:  # a client library's own error is a verification finding, not a crash
            reports.append(ClientReport(c, (), f"{type(e).__name__}: {e}"))
    return VerifyReport(model, resolved, tuple(reports))
