"""What the router reads from, and writes into, the two protocols it passes through.

Ollama streams NDJSON (one JSON object a line, the last with `done: true` and the counts); OpenAI streams
server-sent events (`data: {...}` blocks, then `data: [DONE]`). A relay takes the upstream's bytes as they
come and hands back the complete lines or events at once (a partial one waits for its end, nothing
more), noting on the way what the request log needs: when the first content came, how many characters,
the token counts, the finish reason, an error sent in the stream. It says when the terminal line or
event arrives, so that the router can commit the request's row before passing that last piece on.

An arm on an OpenAI-compatible server (vLLM) answers Ollama's /api/chat and /api/generate too: the
request is translated to /v1/chat/completions and the answer back to Ollama's lines (`ToOllamaRelay`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

OLLAMA, OPENAI = "ollama", "openai"
ROUTED = {"/api/chat": OLLAMA, "/api/generate": OLLAMA, "/v1/chat/completions": OPENAI, "/v1/completions": OPENAI}
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class Account:
    """What one response told about itself, filled in as it passes."""

    started: float  # perf_counter at receipt
    first_content: float | None = None
    chars: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    terminal: bool = False
    pieces: int = 0
    text: list[str] | None = None  # the answer's pieces, kept when the request is captured

    def content(self, text: str | None) -> None:
        if text:
            if self.first_content is None:
                self.first_content = time.perf_counter()
            self.chars += len(text)
            self.pieces += 1
            if self.text is not None:
                self.text.append(text)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_content is None else self.first_content - self.started


def error_body(protocol: str, message: str) -> bytes:
    """A whole error response in the protocol's shape."""
    if protocol == OPENAI:
        return json.dumps({"error": {"message": message, "type": "upstream_error", "param": None,
                                     "code": None}}).encode()
    return json.dumps({"error": message}).encode()


def error_piece(protocol: str, message: str) -> bytes:
    """An error inside a stream, as the protocol's clients expect one (they raise it)."""
    if protocol == OPENAI:
        return b"data: " + error_body(OPENAI, message) + b"\n\n"
    return error_body(OLLAMA, message) + b"\n"


def error_text(data: bytes) -> str:
    """The message of an error response body, whatever its shape."""
    try:
        obj = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:500]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:500]
    return str(err)[:500] if err else data.decode(errors="replace").strip()[:500]


# --- reading one message ----------------------------------------------------------------------------

def read_ollama(obj: dict, account: Account) -> None:
    if obj.get("error"):
        account.error = str(obj["error"])
        return
    account.content((obj.get("message") or {}).get("content") if "message" in obj else obj.get("response"))
    if obj.get("done"):
        account.terminal = True
        account.finish_reason = obj.get("done_reason") or account.finish_reason
        account.prompt_tokens = obj.get("prompt_eval_count", account.prompt_tokens)
        account.completion_tokens = obj.get("eval_count", account.completion_tokens)


def read_openai(obj: dict, account: Account) -> None:
    if obj.get("error"):
        err = obj["error"]
        account.error = str(err.get("message") if isinstance(err, dict) else err)
        return
    for choice in obj.get("choices") or []:
        if "delta" in choice:
            account.content((choice.get("delta") or {}).get("content"))
        elif "message" in choice:
            account.content((choice.get("message") or {}).get("content"))
        else:
            account.content(choice.get("text"))
        account.finish_reason = choice.get("finish_reason") or account.finish_reason
    usage = obj.get("usage")
    if isinstance(usage, dict):
        account.prompt_tokens = usage.get("prompt_tokens", account.prompt_tokens)
        account.completion_tokens = usage.get("completion_tokens", account.completion_tokens)


def read_whole(protocol: str, data: bytes, account: Account) -> None:
    """A non-streamed answer."""
    try:
        obj = json.loads(data)
    except ValueError:
        account.error = "the upstream answered with something that is not JSON"
        return
    if isinstance(obj, dict):
        (read_openai if protocol == OPENAI else read_ollama)(obj, account)
    account.terminal = True


# --- relays: upstream bytes in, complete pieces out ---------------------------------------------------

class NdjsonRelay:
    """Ollama's NDJSON, passed on line by line."""

    protocol = OLLAMA

    def __init__(self, account: Account):
        self.account = account
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        end = data.rfind(b"\n")
        if end < 0:
            self._rest = data
            return b""
        whole, self._rest = data[:end + 1], data[end + 1:]
        for line in whole.split(b"\n"):
            if line.strip():
                self._line(line)
        return whole

    def _line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict):
            read_ollama(obj, self.account)

    def finish(self) -> bytes:
        rest, self._rest = self._rest, b""
        if rest.strip():
            self._line(rest)
        return rest


class SseRelay:
    """OpenAI's server-sent events, passed on event by event. The router asks the upstream for the usage
    event (`stream_options.include_usage`) to log token counts; it is dropped when the client did not ask."""

    protocol = OPENAI

    def __init__(self, account: Account, drop_usage_event: bool = False):
        self.account = account
        self.drop_usage_event = drop_usage_event
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        out, start = [], 0
        for m in _EVENT_END.finditer(data):
            event = data[start:m.end()]
            start = m.end()
            if self._event(event):
                out.append(event)
        self._rest = data[start:]
        return b"".join(out)

    def _event(self, event: bytes) -> bool:
        """Note the event; False to leave it out."""
        payload = b"\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
        if not payload:
            return True
        if payload.strip() == b"[DONE]":
            self.account.terminal = True
            return True
        try:
            obj = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(obj, dict):
            return True
        read_openai(obj, self.account)
        if self.drop_usage_event and not obj.get("choices") and obj.get("usage") is not None:
            return False
        return True

    def finish(self) -> bytes:
        rest, self._rest = self._rest, b""
        if rest.strip():
            self._event(rest)
        return rest


def relay_for(protocol: str, account: Account, drop_usage_event: bool = False):
    return SseRelay(account, drop_usage_event) if protocol == OPENAI else NdjsonRelay(account)


# --- Ollama's API on an OpenAI-compatible arm -------------------------------------------------------------

def ollama_to_openai(route: str, body: dict, model: str) -> dict:
    """The /v1/chat/completions body for an Ollama /api/chat or /api/generate body."""
    if route == "/api/chat":
        messages = [{"role": m.get("role"), "content": m.get("content") or ""} for m in body.get("messages") or []]
    else:
        messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + \
                   [{"role": "user", "content": body.get("prompt") or ""}]
    options = body.get("options") or {}
    out: dict = {"model": model, "messages": messages, "stream": bool(body.get("stream", True))}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"), ("stop", "stop"),
                         ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty")):
        if options.get(ours) is not None:
            out[theirs] = options[ours]
    if isinstance(options.get("num_predict"), int) and options["num_predict"] > 0:
        out["max_tokens"] = options["num_predict"]
    if out["stream"]:
        out["stream_options"] = {"include_usage": True}
    return out


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat()


def ollama_message(route: str, model: str, text: str, done: bool, account: Account | None = None) -> dict:
    key = {"message": {"role": "assistant", "content": text}} if route == "/api/chat" else {"response": text}
    obj = {"model": model, "created_at": _now_rfc3339(), **key, "done": done}
    if done and account is not None:
        elapsed = int((time.perf_counter() - account.started) * 1e9)
        first = int(((account.first_content or time.perf_counter()) - account.started) * 1e9)
        obj.update({"done_reason": account.finish_reason or "stop", "total_duration": elapsed,
                    "prompt_eval_count": account.prompt_tokens or 0, "prompt_eval_duration": first,
                    "eval_count": account.completion_tokens or account.pieces,
                    "eval_duration": max(elapsed - first, 1)})
    return obj


def openai_to_ollama_whole(route: str, model: str, data: bytes, account: Account) -> bytes:
    """A non-streamed OpenAI answer as Ollama's final object."""
    read_whole(OPENAI, data, account)
    try:
        text = "".join(c.get("message", {}).get("content") or "" for c in json.loads(data).get("choices") or [])
    except (ValueError, AttributeError):
        text = ""
    return json.dumps(ollama_message(route, model, text, True, account)).encode()


class ToOllamaRelay:
    """OpenAI events from the arm in, Ollama NDJSON lines out."""

    protocol = OLLAMA

    def __init__(self, account: Account, route: str, model: str):
        self.account, self.route, self.model = account, route, model
        self._events = SseRelay(Account(account.started))

    def feed(self, data: bytes) -> bytes:
        inner = self._events.account
        lines = []
        for event in _EVENT_END.split(self._events.feed(data)):
            payload = b"".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
            if not payload or payload.strip() == b"[DONE]":
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict):
                if obj.get("error"):
                    continue
                text = "".join((c.get("delta") or {}).get("content") or "" for c in obj.get("choices") or [])
                if text:
                    self.account.content(text)
                    lines.append(json.dumps(ollama_message(self.route, self.model, text, False)).encode() + b"\n")
        for name in ("prompt_tokens", "completion_tokens", "finish_reason"):
            setattr(self.account, name, getattr(inner, name))
        if inner.error and not self.account.error:
            self.account.error = inner.error
            lines.append(error_piece(OLLAMA, inner.error))
        elif inner.terminal and not self.account.terminal:
            self.account.terminal = True
            lines.append(json.dumps(ollama_message(self.route, self.model, "", True, self.account)).encode() + b"\n")
        return b"".join(lines)

    def finish(self) -> bytes:
        self._events.finish()
        return b""
