"""OpenAI-compatible servers: vLLM, llama-server (localserve serve, LM Studio, Jan). One client, one parser of
server-sent events: eval targets, router checks and `bench` all read streams through here."""

from __future__ import annotations

import json
import time

from ..errors import InputError
from ..llamacpp.server import error_message
from .chat import Answer, Closing, TargetUnreachable, failed


# The runtimes that speak OpenAI's API, as a target or an arm names them: what starts each, and whether a URL
# alone is enough (one model per llama-server: its /v1/models has one entry).
SERVERS = {"openai": ("vLLM or another OpenAI-compatible server", "a vLLM export's ./launch.sh", True),
           "vllm": ("vLLM", "a vLLM export's ./launch.sh", True),
           "llama-server": ("llama-server", "`localserve serve EXPORT`", False),
           "lmstudio": ("LM Studio", "LM Studio's server (`lms server start`, port 1234)", True),
           "jan": ("Jan", "Jan's local API server (port 1337)", True)}


def split_url_model(label: str, rest: str, runtime: str = "openai") -> tuple[str, str | None]:
    """'URL#MODEL' -> (root URL without /v1, MODEL); MODEL may be left out where the runtime allows it."""
    url, sep, model = rest.rpartition("#") if "#" in rest else (rest, "", "")
    if not url or (SERVERS[runtime][2] and not model):
        raise InputError(f"target {label!r} lacks URL#MODEL",
                         f"write {runtime}:URL#MODEL, e.g. {runtime}:http://127.0.0.1:8000#demo")
    base = url.rstrip("/").removesuffix("/v1")
    if "://" not in base:
        base = f"http://{base}"
    return base, model or None


class OpenAITarget(Closing):
    """A model on an OpenAI-compatible server, through /v1/chat/completions streamed as server-sent events:
    vLLM (`openai:`/`vllm:`), llama-server (`llama-server:URL[#MODEL]`), LM Studio and Jan (`lmstudio:`/`jan:`
    URL#MODEL). `api_key` is sent as a bearer token (Jan's servers require one)."""

    def __init__(self, label: str, rest: str, seed: int, max_tokens: int, runtime: str = "openai",
                 api_key: str | None = None):
        import httpx

        base, model = split_url_model(label, rest, runtime)
        what, start_it = SERVERS[runtime][:2]
        self.label, self.seed, self.max_tokens, self.runtime = label, seed, max_tokens, runtime
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.Client(base_url=base, timeout=httpx.Timeout(600.0, connect=5.0), headers=headers)
        try:
            r = self._http.get("/v1/models")
        except httpx.HTTPError as e:
            self.close()
            raise TargetUnreachable(f"unreachable target {label!r}: no answer from {base} ({e or type(e).__name__})",
                                    f"start {what} ({start_it}), or fix the URL") from None
        try:
            served = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            served = None
        if served is None:
            self.close()
            raise InputError(f"target {label!r}: {base}/v1/models answered {r.status_code} "
                             "but not like an OpenAI-compatible server", "point the URL at vLLM or another "
                             "OpenAI-compatible server (its root, or its /v1)")
        if model is None and len(served) == 1:
            model = served[0]
        if model not in served:
            self.close()
            raise InputError(f"target {label!r}: {base} does not serve {model!r}; it serves: "
                             f"{', '.join(served) or '(nothing)'}",
                             f"name one: {runtime}:{base}#MODEL" if model is None else None)
        self.model = model
        self.info = {"engine": runtime, "url": base, "model": model}

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        body = {"model": self.model, "messages": messages, "temperature": 0, "seed": self.seed,
                "max_tokens": self.max_tokens, "stream": True, "stream_options": {"include_usage": True}}
        if json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        reason = usage = None
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    return failed(start, self.runtime, f"HTTP {r.status_code}: {error_message(r.text)}")
                for event in sse_data(r.iter_lines()):
                    if event.get("error"):
                        return failed(start, self.runtime, error_message(json.dumps(event)))
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            first = first or time.perf_counter()
                            pieces.append(text)
                        reason = choice.get("finish_reason") or reason
                    usage = event.get("usage") or usage
        except Exception as e:  # a dropped connection, a timeout, a malformed event: this case failed
            return failed(start, self.runtime, e)
        end = time.perf_counter()
        usage = usage or {}
        return Answer("".join(pieces), end - start, ttft_s=(first or end) - start,
                      prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens", len(pieces)), finish_reason=reason)

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()


def sse_data(lines):
    """The JSON `data:` payloads of a server-sent event stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:`/`id:` fields
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)




