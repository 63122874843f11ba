"""Ollama as a runtime: a model on a running Ollama (/api/chat through the official client), and a model in an
Ollama model folder run without a server (its GGUF blob in llama.cpp, prompted through its stored Go TEMPLATE)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError, OllamaError, OllamaUnreachable
from .chat import Answer, Closing, TargetUnreachable, failed
from .llamacpp import llama_answer, schema_grammar


# --- a model in an Ollama store, without a server ----------------------------------------------------

class StoreTarget(Closing):
    """`store:DIR#NAME:TAG` — a model in Ollama's model folder, run as Ollama would run it but without a
    server: its GGUF blob in llama.cpp, the prompt rendered by its stored Go TEMPLATE (Ollama's own
    template engine, see chat.gotemplate) with its SYSTEM, stopping on its stored `stop` parameters."""

    def __init__(self, label: str, rest: str, seed: int, max_tokens: int):
        from ..llamacpp.smoke import load
        from ..ollama.store import ModelStore

        root, sep, name = rest.rpartition("#")
        if not sep or not name:
            raise InputError(f"target {label!r}: name the model after '#'", "store:DIR#NAME:TAG, e.g. "
                             "store:~/.ollama/models#demo:v2")
        self.label, self.seed, self.max_tokens = label, seed, max_tokens
        store = ModelStore(Path(root).expanduser() if root else None)
        gguf, self.recipe, config = store.read_recipe(name)
        if not self.recipe.template:
            raise InputError(f"target {label!r} has no TEMPLATE (it relies on the GGUF's own chat template)",
                             f"evaluate its GGUF instead: {gguf}")
        self.info = {"engine": "llama.cpp", "store": str(store.root), "model": name,
                     "manifest_digest": store.manifest_digest(name), "gguf": str(gguf), "quant": config.get("file_type")}
        self._llm = load(gguf)

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        from ..chat.gotemplate import render

        if self.recipe.system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": self.recipe.system}, *messages]
        stop = list(self.recipe.parameters.get("stop") or [])

        def pieces(tokens):
            chunks = self._llm.create_completion(render(self.recipe.template, messages), max_tokens=self.max_tokens,
                                                 temperature=0.0, seed=self.seed, stop=stop, stream=True,
                                                 logits_processor=[tokens], grammar=schema_grammar(json_schema))
            for chunk in chunks:
                choice = chunk["choices"][0]
                yield choice.get("text"), choice.get("finish_reason")

        return llama_answer(pieces)

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


# --- Ollama -----------------------------------------------------------------------------------------

class OllamaTarget(Closing):
    """A model on a running Ollama, through /api/chat: its Modelfile's template, system and parameters."""

    def __init__(self, label: str, name: str, seed: int, max_tokens: int, host: str | None):
        import httpx
        import ollama

        from ..ollama.client import OllamaServer
        from ..ollama.names import parse_name

        if not name:
            raise InputError(f"target {label!r} names no model", "write ollama:NAME, e.g. ollama:demo:v1")
        parse_name(name)
        self.label, self.name, self.seed, self.max_tokens = label, name, seed, max_tokens
        self._server = OllamaServer(host)
        try:
            version = self._server.version()
            shown = self._server.client.show(name)
            digest = self._server.manifest_digest(name)
        except OllamaUnreachable as e:
            self.close()
            raise TargetUnreachable(f"unreachable target {label!r}: {e.message}", e.hint) from None
        except ConnectionError:  # the official client's word for a refused connection
            self.close()
            raise TargetUnreachable(f"unreachable target {label!r}: Ollama at {self._server.host} stopped answering",
                                    "check that the server is running") from None
        except ollama.ResponseError as e:
            self.close()
            if e.status_code == 404:
                raise InputError(f"target {label!r}: no model {name!r} on the Ollama at {self._server.host}",
                                 "register it with `localserve register EXPORT --name NAME`, or list the models "
                                 "with `localserve ls`") from None
            raise OllamaError(f"target {label!r}: Ollama at {self._server.host} answered {e.status_code}: {e.error}") \
                from None
        except OllamaError:
            self.close()
            raise
        except (httpx.HTTPError, ValueError) as e:  # timed out, closed mid-answer, not Ollama's JSON
            self.close()
            unreachable = self._server.failure(f"the questions about {name}", e)
            if unreachable is None:
                raise
            raise TargetUnreachable(f"unreachable target {label!r}: {unreachable.message}", unreachable.hint) \
                from None
        details = shown.details.model_dump(mode="json", exclude_none=True) if shown.details else {}
        self.info = {"engine": "ollama", "host": self._server.host, "server_version": version, "model": name,
                     "digest": digest, "details": details}
        self._client = self._server.client

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        final = None
        try:
            # format: the schema object itself (docs/ollama.md#structured-outputs)
            for part in self._client.chat(model=self.name, messages=messages, stream=True, format=json_schema,
                                          options={"temperature": 0, "seed": self.seed,
                                                   "num_predict": self.max_tokens}):
                if part.message.content:
                    first = first or time.perf_counter()
                    pieces.append(part.message.content)
                if part.done:
                    final = part
        except Exception as e:  # the ollama client's ResponseError, ConnectionError and httpx errors alike
            unreachable = self._server.failure(f"the chat with {self.name}", e)
            if unreachable is not None:
                return failed(start, "ollama", str(unreachable))
            return failed(start, "ollama", getattr(e, "error", None) or e)
        end = time.perf_counter()
        if final is None:
            return failed(start, "ollama", "the stream ended without a final (done) message")
        return Answer("".join(pieces), end - start, ttft_s=(first or end) - start,
                      prompt_tokens=final.prompt_eval_count, completion_tokens=final.eval_count,
                      finish_reason=final.done_reason)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.close()


