"""`localserve verify`: talk to a registered model through the clients developers actually use.

Three clients, the same short multi-turn conversation each: LangChain's `ChatOllama`, the official
`ollama` client (both on Ollama's /api/chat), and the `openai` client on Ollama's /v1. A client
passes when every reply is non-empty and ends because the model stopped (done_reason /
finish_reason "stop"), not because it ran into the token limit. The report also says which template
the server built the prompts with: the model's Go TEMPLATE or the GGUF's own Jinja template
(ollama.prompt_path, from the server's /api/show).

With a JSON Schema (`--json-schema`), each client also asks for one answer constrained to it:
Ollama's `format` carrying the schema object (ChatOllama, the ollama client) and `response_format`
json_schema on /v1 (openai; docs/ollama.md#structured-outputs). That answer must parse as JSON and
validate against the schema (jsonschema).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError, LocalserveError, OllamaError, UnknownName
from ..progress import step
from .client import OllamaServer, parse_version
from .names import parse_name
from .prompt_path import PromptPath, path_in_use

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


# Ollama does not put the schema into the prompt (docs/ollama.md#structured-outputs): the question asks for it.
SCHEMA_PROMPT = "Reply with one JSON object and nothing else. It must follow this JSON Schema:\n{schema}"


@dataclass(frozen=True)
class StructuredAnswer:
    """The one answer a client got when it asked for `schema`, and what is wrong with it (None: valid)."""

    reply: str
    finish_reason: str | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def read_json_schema(path: str | Path) -> dict:
    """The JSON Schema in `path`, checked against its metaschema; InputError in one line otherwise."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    path = Path(path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the JSON Schema {path}: {e}", "pass a UTF-8 .json file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON ({e.msg} at line {e.lineno})", "pass a JSON Schema as a .json file") \
            from None
    if not isinstance(schema, dict):
        raise InputError(f"{path} holds a JSON {type(schema).__name__}, not a schema object",
                         'e.g. {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}')
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise InputError(f"{path} is not a valid JSON Schema: {e.message}", "fix the schema") from None
    return schema


def schema_problem(reply: str, finish_reason: str | None, schema: dict) -> str | None:
    """Why `reply` is not an answer that `schema` accepts, in one line; None when it is."""
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    if finish_reason not in (None, "stop"):
        return f"ended with {finish_reason!r} before the JSON was complete"
    try:
        doc = json.loads(reply)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at column {e.colno}): {reply.strip()[:80]!r}"
    error = best_match(validators.validator_for(schema)(schema).iter_errors(doc))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "the top level"
    return f"the schema rejects it at {where}: {error.message}"


@dataclass(frozen=True)
class ClientReport:
    client: str
    turns: tuple[Turn, ...]
    error: str | None = None
    structured: StructuredAnswer | None = None  # with a JSON Schema only

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.turns) and all(
            t.reply.strip() and t.finish_reason == "stop" for t in self.turns) and \
            (self.structured is None or self.structured.ok)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        for i, t in enumerate(self.turns, 1):
            if not t.reply.strip():
                return f"turn {i}: empty reply"
            if t.finish_reason != "stop":
                return f"turn {i}: ended with {t.finish_reason!r}, not 'stop' (the model did not stop on its own)"
        if self.structured is not None and self.structured.problem:
            return f"JSON answer: {self.structured.problem}"
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
    prompt_path: PromptPath | None = None  # the template the server built the prompts with (its /api/show)
    server_version: str | None = None

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

# Each asks once for an answer constrained to a schema: (host, model, max_tokens, schema, prompt) ->
# (reply, finish reason), through the client's own structured-output parameter.
Constrained = Callable[[str, str, int, dict, str], "tuple[str, str | None]"]


def _langchain_schema(host: str, model: str, max_tokens: int, schema: dict, prompt: str):
    from langchain_ollama import ChatOllama

    reply = ChatOllama(model=model, base_url=host, temperature=0, num_predict=max_tokens, format=schema).invoke(
        [("user", prompt)])
    return str(reply.content or ""), (reply.response_metadata or {}).get("done_reason")


def _ollama_schema(host: str, model: str, max_tokens: int, schema: dict, prompt: str):
    import ollama

    reply = ollama.Client(host=host).chat(model=model, messages=[{"role": "user", "content": prompt}], format=schema,
                                          options={"temperature": 0, "num_predict": max_tokens})
    return reply.message.content or "", reply.done_reason


def _openai_schema(host: str, model: str, max_tokens: int, schema: dict, prompt: str):
    from openai import OpenAI

    client = OpenAI(base_url=host.rstrip("/") + "/v1", api_key="ollama", max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    return reply.choices[0].message.content or "", reply.choices[0].finish_reason


CONSTRAINED: dict[str, Constrained] = {"langchain": _langchain_schema, "ollama": _ollama_schema,
                                       "openai": _openai_schema}


def _constrained(name: str, host: str, model: str, max_tokens: int, schema: dict) -> StructuredAnswer:
    prompt = SCHEMA_PROMPT.format(schema=json.dumps(schema))
    try:
        reply, reason = CONSTRAINED[name](host, model, max_tokens, schema, prompt)
    except Exception as e:  # the server refused the format (a 500 naming it), or the client failed
        return StructuredAnswer("", None, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    return StructuredAnswer(reply, reason, schema_problem(reply, reason, schema))


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
           max_tokens: int = MAX_TOKENS, json_schema: dict[str, Any] | None = None) -> VerifyReport:
    """Run the conversation through each client against `name` on the server at `host`, and with
    `json_schema`, one answer constrained to it (see the module docstring).

    A reply longer than `max_tokens` counts as one that did not stop."""
    model = parse_name(name).display
    chosen = clients or tuple(CLIENTS)
    for c in chosen:
        if c not in CLIENTS:
            raise UnknownName("client", c, list(CLIENTS))
    with OllamaServer(host) as server:
        version = server.version()  # unreachable: one clear error, before three clients fail the same way
        if server.manifest_digest(model) is None:
            raise OllamaError(f"model {model} is not on the Ollama server at {server.host}",
                              "register it first (`localserve register OUTPUT_DIR` or `localserve install BUNDLE`), "
                              "and check the name with `localserve ls`")
        resolved = server.host
        prompt = path_in_use(server.show(model), parse_version(version))
    reports = []
    for c in chosen:
        step(f"verify {model} through {c}")
        try:
            report = _converse(c, CLIENTS[c](resolved, model, max_tokens))
            if json_schema is not None and report.ok:
                report = ClientReport(c, report.turns, structured=_constrained(c, resolved, model, max_tokens,
                                                                               json_schema))
            reports.append(report)
        except LocalserveError:
            raise
        except Exception as e:  # a client library's own error is a verification finding, not a crash
            reports.append(ClientReport(c, (), f"{type(e).__name__}: {' '.join(str(e).split())}"))
    return VerifyReport(model, resolved, tuple(reports), prompt, version)
