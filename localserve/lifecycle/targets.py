"""Targets: the same suite on any stage of a fine-tune, each through the engine that really serves it.

    with open_target("exports/demo") as target:          # its first GGUF, llama.cpp in process
        answer = target.answer([{"role": "user", "content": "What is the codename?"}])

A spec is resolved in this order:

    ollama:NAME             a model on a running Ollama (/api/chat)
    openai:URL#MODEL        an OpenAI-compatible server such as vLLM (/v1/chat/completions, streamed)
    store:DIR#NAME:TAG      a model in an Ollama model folder, without a server: its GGUF in llama.cpp,
                            prompted through its stored Go TEMPLATE, stopping on its stored stops
    FILE.gguf               llama.cpp in process, with the GGUF's own chat template
    an export folder        (localserve.json) its first GGUF; a vLLM export's model/ folder (with its
                            first adapter when it serves them unmerged); a merge's folder; for a tenants
                            export, FOLDER#TENANT: the shared base GGUF with that tenant's GGUF LoRA
    an adapter folder       (adapter_config.json) the adapter on its base, unmerged: transformers + peft
    a model folder          (config.json) a merged or any Hugging Face model: transformers

Every engine decodes greedily (temperature 0) with a fixed seed, so two runs give the same answers.
`answer(messages, json_schema=SCHEMA)` asks for an answer constrained to a JSON Schema, through each
engine's own mechanism: vLLM's (OpenAI) `response_format` json_schema, Ollama's `format`, a llama.cpp
grammar made from the schema; transformers has none, and says so in the answer's error.
An engine failing on one case gives an `Answer` with its `error`; a target that cannot be opened at
all raises a LocalserveError (an InputError naming what is wrong when the spec is).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, OllamaError, OllamaUnreachable, SmokeTestFailed
from ..fsutil import sha256_file, sha256_tree
from ..lineage import RECORD_FILE, ExportRecord, find_record, read_record
from .results import Answer

FORMS = ("ollama:NAME", "openai:URL#MODEL", "store:DIR#NAME:TAG", "a .gguf file", f"an export folder ({RECORD_FILE})",
         "an adapter folder (adapter_config.json)", "a Hugging Face model folder (config.json)")
FORMS_HINT = "a target is one of: " + ", ".join(FORMS)

# Where a vLLM export that serves its adapters unmerged keeps them (ADAPTERS_DIR of localserve/exports/vllm.py,
# which this layer may not import).
VLLM_ADAPTERS_DIR = "adapters"


class TargetUnreachable(InputError):
    """The server a target names does not answer."""

    exit_code = 3


class Target(Protocol):
    label: str  # the spec as the user typed it
    info: dict[str, Any]  # what it resolved to: engine, file or model, sha256 or digest where known

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Target": ...

    def __exit__(self, *exc) -> None: ...


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


def _failed(start: float, engine: str, error: BaseException | str) -> Answer:
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return Answer("", time.perf_counter() - start, error=f"{engine}: {' '.join(text.split())}")


# --- opening ----------------------------------------------------------------------------------------

def open_target(spec: str, *, seed: int = 0, max_tokens: int = 128, ollama_host: str | None = None) -> Target:
    """The target `spec` names (see the module docstring for the forms), ready to answer."""
    spec = (spec or "").strip()
    if not spec:
        raise InputError("empty target", FORMS_HINT)
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, not {max_tokens}")
    if spec.startswith("ollama:"):
        return OllamaTarget(spec, spec.removeprefix("ollama:"), seed, max_tokens, ollama_host)
    if spec.startswith("openai:"):
        return OpenAITarget(spec, spec.removeprefix("openai:"), seed, max_tokens)
    if spec.startswith("store:"):
        return StoreTarget(spec, spec.removeprefix("store:"), seed, max_tokens)
    path = Path(spec).expanduser()
    tenant = None
    if not path.exists() and "#" in spec:
        folder, _, tenant = spec.rpartition("#")
        path = Path(folder).expanduser()
    if not path.exists():
        hint = FORMS_HINT
        if ":" in spec and "/" not in spec:
            hint = f"for a model on Ollama write ollama:{spec}; " + hint
        raise InputError(f"target {spec!r}: no such file or folder", hint)
    if tenant is not None and not (path / RECORD_FILE).is_file():
        raise InputError(f"target {spec!r}: FOLDER#TENANT names a tenant of a tenants export, and {path} is none",
                         FORMS_HINT)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"target {spec!r} is a file but not a .gguf", FORMS_HINT)
        return _gguf_file_target(spec, path, seed, max_tokens)
    if (path / RECORD_FILE).is_file():
        return _export_target(spec, path, tenant, seed, max_tokens)
    if (path / "adapter_config.json").is_file():
        return _adapter_target(spec, path, None, seed, max_tokens)
    if (path / "config.json").is_file():
        return TransformersTarget(spec, path, seed, max_tokens)
    raise InputError(f"target {spec!r} is a folder with no {RECORD_FILE}, adapter_config.json or config.json",
                     FORMS_HINT)


def _gguf_file_target(spec: str, path: Path, seed: int, max_tokens: int) -> "GgufTarget":
    kind = _gguf_type(path)
    if kind == "adapter":
        raise InputError(f"target {spec!r} is a GGUF LoRA adapter, not a model",
                         "evaluate the export folder it belongs to (FOLDER#TENANT for a tenants export), "
                         "or the model on Ollama")
    found = find_record(path)
    info: dict[str, Any] = {"file": str(path.resolve())}
    known = None
    if found is not None:
        folder, record = found
        info["export"] = {"folder": str(folder.resolve()), "name": record.name, "kind": record.kind}
        known = next((a for a in record.artifacts if a.file == path.name), None)
        if known is not None:
            info["quant"] = known.quant
    info["sha256"] = _known_sha256(path, known.sha256 if known else None, known.size if known else None)
    return GgufTarget(spec, path, seed, max_tokens, info)


def _gguf_type(path: Path) -> str | None:
    """general.type of a GGUF ("model", "adapter"), None when the header does not say."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the gguf package raises ValueError, struct and index errors on files that are not GGUF
        raise InputError(f"{path} is not a readable GGUF file ({e})",
                         "point at a GGUF written by `localserve export` or llama.cpp") from None
    field = reader.fields.get("general.type")
    return field.contents() if field is not None and field.data else None


def _known_sha256(path: Path, recorded: str | None, recorded_size: int | None) -> str:
    """The export record's sha256 while the file still has the recorded size; else hashed now."""
    if recorded and recorded_size == path.stat().st_size:
        return recorded
    return sha256_file(path)


def _export_target(spec: str, folder: Path, tenant: str | None, seed: int, max_tokens: int) -> Target:
    record = read_record(folder)
    info = {"export": {"folder": str(folder.resolve()), "name": record.name, "kind": record.kind}}
    if tenant is not None and record.kind != "tenants":
        raise InputError(f"target {spec!r}: {folder} is a {record.kind} export, which has no tenants",
                         f"name the folder alone: {folder}")
    if record.kind in ("gguf", "ollama-store"):
        artifact = next((a for a in record.artifacts if a.file.lower().endswith(".gguf")), None)
        if artifact is None:
            raise InputError(f"the {record.kind} export {folder} lists no GGUF artifact", "re-run `localserve export`")
        gguf = _artifact_path(folder, artifact.file)
        info.update(file=str(gguf.resolve()), quant=artifact.quant,
                    sha256=_known_sha256(gguf, artifact.sha256, artifact.size))
        return GgufTarget(spec, gguf, seed, max_tokens, info)
    if record.kind == "tenants":
        return _tenant_target(spec, folder, record, tenant, seed, max_tokens, info)
    if record.kind == "vllm":
        from ..models.folders import MODEL_DIR

        model = folder / MODEL_DIR
        if not (model / "config.json").is_file():
            raise InputError(f"the vLLM export {folder} has no {MODEL_DIR}/config.json", "re-run `localserve export`")
        if record.sections.get("merged", True) or not record.adapters:
            return TransformersTarget(spec, model, seed, max_tokens, info)
        # served unmerged: the base in model/, each adapter in adapters/NAME; the first is the fine-tune
        adapter = folder / VLLM_ADAPTERS_DIR / (record.adapters[0].name or "")
        return _adapter_target(spec, adapter, model, seed, max_tokens, info)
    if record.kind == "merge":
        return TransformersTarget(spec, folder, seed, max_tokens, info)
    raise InputError(f"target {spec!r}: a {record.kind} export cannot be evaluated", FORMS_HINT)


def _artifact_path(folder: Path, file: str) -> Path:
    path = folder / file
    if not path.is_file():
        raise InputError(f"{path} is listed in {folder / RECORD_FILE} but missing",
                         "re-run `localserve export`, or restore the file")
    return path


def _tenant_target(spec: str, folder: Path, record: ExportRecord, tenant: str | None, seed: int, max_tokens: int,
                   info: dict) -> "GgufTarget":
    names = [t.tenant for t in record.tenants]
    if tenant is None and len(names) == 1:
        tenant = names[0]
    if tenant is None:
        raise InputError(f"target {spec!r}: the tenants export serves {len(names)} adapters ({', '.join(names)})",
                         f"name one: {folder}#TENANT")
    chosen = next((t for t in record.tenants if t.tenant == tenant), None)
    if chosen is None:
        raise InputError(f"target {spec!r}: no tenant {tenant!r} in {folder}; valid: {', '.join(names)}")
    base = record.artifact()
    base_file, lora_file = _artifact_path(folder, base.file), _artifact_path(folder, chosen.file)
    info.update(file=str(base_file.resolve()), quant=base.quant,
                sha256=_known_sha256(base_file, base.sha256, base.size), tenant=tenant, lora=str(lora_file.resolve()),
                lora_sha256=_known_sha256(lora_file, chosen.sha256, chosen.size))
    return GgufTarget(spec, base_file, seed, max_tokens, info, lora=lora_file)


# --- a model in an Ollama store, without a server ----------------------------------------------------

class StoreTarget(_Closing):
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
                                                 logits_processor=[tokens], grammar=_schema_grammar(json_schema))
            for chunk in chunks:
                choice = chunk["choices"][0]
                yield choice.get("text"), choice.get("finish_reason")

        return _llama_answer(pieces)

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def _schema_grammar(json_schema: dict | None):
    """The llama.cpp grammar that holds sampling to `json_schema` (as Ollama's runner builds one), or None."""
    if json_schema is None:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False)


def _llama_answer(pieces) -> Answer:
    """Time and count one llama.cpp answer: `pieces(counter)` yields (text, finish reason) as they come,
    with `counter` among its logits processors."""
    start = time.perf_counter()
    first = None
    texts: list[str] = []
    reason = None
    tokens = _TokenCounter()
    try:
        for text, finish in pieces(tokens):
            if text:
                first = first or time.perf_counter()
                texts.append(text)
            reason = finish or reason
    except Exception as e:  # any failure of the engine on this case (context overflow, template error)
        return _failed(start, "llama.cpp", e)
    end = time.perf_counter()
    # every sampled token went through the counter; the end-of-turn token that stopped it is not the answer's
    completion = tokens.sampled - (reason == "stop")
    return Answer("".join(texts), end - start, ttft_s=(first or end) - start, prompt_tokens=tokens.prompt,
                  completion_tokens=max(completion, 0), finish_reason=reason)


# --- llama.cpp in process -------------------------------------------------------------------------------

class GgufTarget(_Closing):
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

        return _llama_answer(lambda tokens: chat(self._llm, messages, self.max_tokens, seed=self.seed,
                                                 logits_processor=[tokens], grammar=_schema_grammar(json_schema)))

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


class _TokenCounter:
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


# --- Ollama -----------------------------------------------------------------------------------------

class OllamaTarget(_Closing):
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
            failed = self._server.failure(f"the questions about {name}", e)
            if failed is None:
                raise
            raise TargetUnreachable(f"unreachable target {label!r}: {failed.message}", failed.hint) from None
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
            failed = self._server.failure(f"the chat with {self.name}", e)
            if failed is not None:
                return _failed(start, "ollama", str(failed))
            return _failed(start, "ollama", getattr(e, "error", None) or e)
        end = time.perf_counter()
        if final is None:
            return _failed(start, "ollama", "the stream ended without a final (done) message")
        return Answer("".join(pieces), end - start, ttft_s=(first or end) - start,
                      prompt_tokens=final.prompt_eval_count, completion_tokens=final.eval_count,
                      finish_reason=final.done_reason)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.close()


# --- OpenAI-compatible servers (vLLM) ----------------------------------------------------------------

class OpenAITarget(_Closing):
    """A model on an OpenAI-compatible server, through /v1/chat/completions streamed as server-sent events."""

    def __init__(self, label: str, rest: str, seed: int, max_tokens: int):
        import httpx

        url, sep, model = rest.rpartition("#")
        if not sep or not url or not model:
            raise InputError(f"target {label!r} lacks URL#MODEL",
                             "write openai:URL#MODEL, e.g. openai:http://127.0.0.1:8000#demo")
        base = url.rstrip("/")
        base = base.removesuffix("/v1")
        if "://" not in base:
            base = f"http://{base}"
        self.label, self.model, self.seed, self.max_tokens = label, model, seed, max_tokens
        self._http = httpx.Client(base_url=base, timeout=httpx.Timeout(600.0, connect=5.0))
        try:
            r = self._http.get("/v1/models")
        except httpx.HTTPError as e:
            self.close()
            raise TargetUnreachable(f"unreachable target {label!r}: no answer from {base} ({e or type(e).__name__})",
                                    "start the server (a vLLM export's ./launch.sh), or fix the URL") from None
        try:
            served = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            served = None
        if served is None:
            self.close()
            raise InputError(f"target {label!r}: {base}/v1/models answered {r.status_code} "
                             "but not like an OpenAI-compatible server", "point the URL at vLLM or another "
                             "OpenAI-compatible server (its root, or its /v1)")
        if model not in served:
            self.close()
            raise InputError(f"target {label!r}: {base} does not serve {model!r}; it serves: "
                             f"{', '.join(served) or '(nothing)'}")
        self.info = {"engine": "openai", "url": base, "model": model}

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
                    return _failed(start, "openai", f"HTTP {r.status_code}: {_error_message(r.text)}")
                for event in _sse_data(r.iter_lines()):
                    if event.get("error"):
                        return _failed(start, "openai", _error_message(json.dumps(event)))
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            first = first or time.perf_counter()
                            pieces.append(text)
                        reason = choice.get("finish_reason") or reason
                    usage = event.get("usage") or usage
        except Exception as e:  # a dropped connection, a timeout, a malformed event: this case failed
            return _failed(start, "openai", e)
        end = time.perf_counter()
        usage = usage or {}
        return Answer("".join(pieces), end - start, ttft_s=(first or end) - start,
                      prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens", len(pieces)), finish_reason=reason)

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()


def _sse_data(lines):
    """The JSON `data:` payloads of a server-sent event stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:`/`id:` fields
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _error_message(text: str) -> str:
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()[:300] or "(no body)"
    if isinstance(err, dict):
        return str(err.get("message"))
    return str(err or text.strip()[:300])


# --- transformers (+ peft) ---------------------------------------------------------------------------

def _adapter_target(spec: str, adapter_dir: Path, base_override: Path | None, seed: int, max_tokens: int,
                    info: dict | None = None) -> "TransformersTarget":
    from ..models.resolve import check_base_weights, load_adapter, resolve_base

    adapter = load_adapter(adapter_dir)
    base = resolve_base(adapter, base_override)
    check_base_weights(base, allow_pickle=False)
    info = {**(info or {}), "adapter": str(adapter.path.resolve()), "adapter_sha256": sha256_tree(adapter.path),
            "base_source": base.source, "base_ref": base.ref}
    return TransformersTarget(spec, base.path, seed, max_tokens, info, adapter=adapter.path)


class _FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.puts = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class TransformersTarget(_Closing):
    """A Hugging Face model folder in transformers, with a peft adapter on top (unmerged) when given:
    the fine-tune as trained. The prompt is the model's own chat template (the adapter's when it
    carries one), the decoding greedy."""

    def __init__(self, label: str, model_dir: Path, seed: int, max_tokens: int, info: dict | None = None,
                 adapter: Path | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from ..models.resolve import BaseModel, check_base_weights

        self.label, self.seed, self.max_tokens = label, seed, max_tokens
        check_base_weights(BaseModel(model_dir, "path", None), allow_pickle=False)
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self._device == "cpu" else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            with tempfile.TemporaryDirectory(prefix="localserve-tokenizer-") as tmp:
                self._tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(adapter, model_dir, Path(tmp)),
                                                                trust_remote_code=False)
            generation_from = adapter if adapter is not None and (adapter / "generation_config.json").is_file() \
                else model_dir
            generation = (GenerationConfig.from_pretrained(generation_from)
                          if (generation_from / "generation_config.json").is_file() else model.generation_config)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: an adapter whose shapes do not fit
            raise InputError(f"target {label!r}: transformers cannot load {model_dir}"
                             f"{f' with {adapter}' if adapter else ''} ({' '.join(str(e).split())[:300]})",
                             "check that the folder is a complete Hugging Face model (and the adapter fits it)") \
                from None
        if not self._tokenizer.chat_template:
            raise InputError(f"target {label!r}: {model_dir} has no chat template",
                             "evaluate a chat (instruct) model, or add its chat_template.jinja")
        self._model = model.to(self._device).eval()
        eos = generation.eos_token_id if generation.eos_token_id is not None else self._tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = generation.pad_token_id if generation.pad_token_id is not None else self._tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), None)
        self.info = {"engine": "transformers+peft" if adapter is not None else "transformers",
                     "model": str(Path(model_dir).resolve()), **(info or {}), "device": self._device,
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        import torch

        start = time.perf_counter()
        if json_schema is not None:
            return _failed(start, "transformers", "cannot constrain an answer to a JSON schema; evaluate the "
                                                  "served model (openai:URL#MODEL, ollama:NAME) or its GGUF")
        clock = _FirstTokenClock()
        try:
            prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = self._tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self._device)
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                # greedy: no sampling, no beams, and no repetition penalty a generation_config may set
                out = self._model.generate(**inputs, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                           max_new_tokens=self.max_tokens, eos_token_id=sorted(self._eos) or None,
                                           pad_token_id=self._pad, streamer=clock)
        except Exception as e:  # a template that refuses the messages, a too-long prompt, an out-of-memory
            return _failed(start, "transformers", e)
        end = time.perf_counter()
        n_prompt = inputs["input_ids"].shape[1]
        new = out[0, n_prompt:].tolist()
        stopped = bool(new) and new[-1] in self._eos
        text = self._tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
        # the count leaves out the stop token, as llama.cpp's streamed pieces do
        return Answer(text, end - start, ttft_s=(clock.first or end) - start, prompt_tokens=n_prompt,
                      completion_tokens=len(new) - stopped, finish_reason="stop" if stopped else "length")

    def close(self) -> None:
        self._model = None


def _tokenizer_folder(adapter: Path | None, model_dir: Path, scratch: Path) -> Path:
    """The folder to load the tokenizer from: the model's, or, when the adapter saved tokenizer or
    chat-template files, a view where each of the adapter's files wins over the base's (as an export
    of the adapter gets them)."""
    from ..models.lora import tokenizer_files, tokenizer_sources

    own = tokenizer_files(adapter) if adapter is not None else None
    if own is None or not own.files:
        return model_dir
    for name, src in tokenizer_sources(own, model_dir).items():
        (scratch / name).symlink_to(src.resolve())
    if (model_dir / "config.json").is_file():  # AutoTokenizer reads the model type from it
        (scratch / "config.json").symlink_to((model_dir / "config.json").resolve())
    return scratch


__all__ = ["FORMS", "GgufTarget", "OllamaTarget", "OpenAITarget", "Target", "TargetUnreachable",
           "TransformersTarget", "open_target"]
