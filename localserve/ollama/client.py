"""Talking to a running Ollama server over HTTP (docs/ollama.md#http, #blobs, #create-api, #management).

The official `ollama` client covers structured create, list, show, copy, delete and chat. Plain
httpx covers what it does not: `/api/version`, blob HEAD/POST streamed from disk with a progress
bar (its `create_blob` never HEADs first, so it re-sends gigabytes), and the pre-0.5.5 create form.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from ..errors import InputError, OllamaError, OllamaUnreachable
from ..fsutil import CHUNK, sha256_file
from ..progress import bar, step
from .layers import ModelRecipe, modelfile_text
from .names import parse_name

DEFAULT_HOST = "http://127.0.0.1:11434"
STRUCTURED_CREATE = (0, 5, 5)  # /api/create takes JSON files/template/... from this version on
# Seconds to wait for Ollama's next byte (a create of a large model rewrites gigabytes between two
# status lines); $LOCALSERVE_OLLAMA_TIMEOUT changes it.
DEFAULT_TIMEOUT = 600.0
TIMEOUT_ENV = "LOCALSERVE_OLLAMA_TIMEOUT"


class ServerTooOld(OllamaError):
    """The Ollama server's version lacks a feature this operation needs."""


def resolve_host(host: str | None = None) -> str:
    """`host`, else $OLLAMA_HOST, else 127.0.0.1:11434, normalised like the ollama client does."""
    raw = (host or os.environ.get("OLLAMA_HOST") or "").strip()
    if not raw:
        return DEFAULT_HOST
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    hostport, _, path = rest.partition("/")
    m = re.match(r"^(\[[^\]]+\]|[^:]*)(?::(\d+))?$", hostport)
    if not m:
        raise InputError(f"cannot read Ollama host {raw!r}", "use a URL like http://127.0.0.1:11434")
    name = m.group(1) or "127.0.0.1"
    if name == "0.0.0.0":  # a bind address, not one to connect to
        name = "127.0.0.1"
    port = m.group(2) or ("11434" if not sep else "443" if scheme == "https" else "80")
    path = path.rstrip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def host_source(host: str | None) -> str:
    return "--host" if host else "$OLLAMA_HOST" if os.environ.get("OLLAMA_HOST") else "the default address"


def _unreachable(host: str, why: str, source: str = "") -> OllamaUnreachable:
    source = source or host_source(None)
    return OllamaUnreachable(
        f"Ollama is not reachable at {host} ({source}; {why})",
        "start it with `ollama serve` (or set OLLAMA_HOST / --host), or write straight into the model store "
        "with `localserve install BUNDLE --store DIR`",
    )


def default_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise InputError(f"${TIMEOUT_ENV} must be a number of seconds above 0, not {raw!r}",
                         f"e.g. {TIMEOUT_ENV}=1200, or unset it for {DEFAULT_TIMEOUT:g}")
    return value


def transport_failure(host: str, what: str, e: BaseException, timeout: float | None = None,
                      source: str = "") -> OllamaError | None:
    """The one-line error for a connection to Ollama at `host` failing during `what` — refused, timed
    out, closed mid-answer, or answered with something that is not Ollama's JSON — or None when `e`
    is none of these. Covers what httpx, the official client (ConnectionError) and pydantic raise."""
    import pydantic

    if isinstance(e, (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout)) and \
            not isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return _unreachable(host, str(e) or type(e).__name__, source)
    if isinstance(e, httpx.TimeoutException):
        within = f" within {timeout:g} s" if timeout else " in time"
        return OllamaError(f"Ollama at {host} did not answer {what}{within}",
                           f"it may be busy or stuck: check its log (and `ollama ps`), then run the command again; "
                           f"{TIMEOUT_ENV}=SECONDS waits longer")
    if isinstance(e, (httpx.RemoteProtocolError, httpx.NetworkError, ConnectionResetError, BrokenPipeError)):
        return OllamaError(f"Ollama at {host} closed the connection during {what} ({e or type(e).__name__})",
                           "it may have crashed or restarted: check its log, then run the command again")
    if isinstance(e, (json.JSONDecodeError, pydantic.ValidationError, UnicodeDecodeError)):
        detail = " ".join(str(e).split())[:120]
        return OllamaError(f"Ollama at {host} answered {what} with something that is not Ollama's JSON ({detail})",
                           "check that --host / $OLLAMA_HOST points at an Ollama server, not a proxy or another "
                           "service, and that it is healthy")
    return None


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    uploaded: bool  # False when the server already had it


class OllamaServer:
    """One Ollama server. Errors come out as OllamaError subclasses naming the host."""

    def __init__(self, host: str | None = None, timeout: float | None = None):
        self.host = resolve_host(host)
        self.source = host_source(host)
        self.timeout = timeout if timeout is not None else default_timeout()
        self._http = httpx.Client(base_url=self.host, timeout=httpx.Timeout(self.timeout, connect=5.0))
        self._version: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OllamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def client(self):
        import ollama

        return ollama.Client(host=self.host, timeout=self._http.timeout)

    # --- plain HTTP ---------------------------------------------------------------------------
    def failure(self, what: str, e: BaseException) -> OllamaError | None:
        """`transport_failure` for this server."""
        return transport_failure(self.host, what, e, self.timeout, self.source)

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            failed = self.failure(f"{method} {path}", e)
            if failed is None:
                failed = OllamaError(f"{method} {self.host}{path} failed: {e}",
                                     "check that the server at that address is Ollama and is healthy")
            raise failed from None

    def _raise_for(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        msg = _error_text(r)
        if r.status_code == 403 and not msg:
            raise OllamaError(f"{what}: {self.host} answered 403 Forbidden",
                              "Ollama refuses Host headers that are not local; use 127.0.0.1/localhost "
                              "or set OLLAMA_ORIGINS/OLLAMA_HOST on the server")
        raise OllamaError(f"{what}: Ollama at {self.host} answered {r.status_code}: {msg or '(no body)'}")

    def version(self) -> str:
        if self._version is None:
            r = self._request("GET", "/api/version")
            self._raise_for(r, "reading the server version")
            try:
                self._version = str(r.json()["version"])
            except (ValueError, KeyError, TypeError):
                raise OllamaError(f"{self.host}/api/version did not answer like Ollama: {r.text[:200]!r}",
                                  "check that --host points at an Ollama server") from None
        return self._version

    def push_blob(self, path: Path, digest: str | None = None) -> Blob:
        """HEAD, then POST the file streamed from disk if the server lacks it."""
        path = Path(path)
        size = path.stat().st_size
        if digest is None:
            with bar(size, f"sha256 {path.name}") as b:
                digest = "sha256:" + sha256_file(path, progress=b.update)
        digest = digest.lower()
        url = f"/api/blobs/{digest}"
        head = self._request("HEAD", url)
        if head.status_code == 200:
            return Blob(digest, size, uploaded=False)
        if head.status_code != 404:
            self._raise_for(head, f"checking blob {digest}")

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f, bar(size, f"upload {path.name}") as b:
                while chunk := f.read(CHUNK):
                    b.update(len(chunk))
                    yield chunk

        r = self._request("POST", url, content=chunks(), headers={"Content-Length": str(size)})
        if r.status_code not in (200, 201):
            self._raise_for(r, f"uploading {path.name} as {digest}")
        return Blob(digest, size, uploaded=r.status_code == 201)

    def has_blob(self, digest: str) -> bool:
        r = self._request("HEAD", f"/api/blobs/{digest.lower()}")
        if r.status_code not in (200, 404):
            self._raise_for(r, f"checking blob {digest}")
        return r.status_code == 200

    def push_bytes(self, data: bytes, digest: str) -> None:
        r = self._request("POST", f"/api/blobs/{digest}", content=data)
        if r.status_code not in (200, 201):
            self._raise_for(r, f"uploading blob {digest}")

    # --- create -------------------------------------------------------------------------------
    def create(self, name: str, gguf_file: str, digest: str, recipe: ModelRecipe,
               on_status: Callable[[dict], None] | None = None,
               adapter: tuple[str, str] | None = None) -> str:
        """Create `name` from an uploaded GGUF blob; returns the form used ("json" or "modelfile").

        `adapter` is (file name, digest) of an uploaded GGUF LoRA: the model gets an ADAPTER layer
        on top of the `digest` model layer (docs/ollama.md#create-api `adapters`; `ADAPTER @digest` before 0.5.5).
        """
        parse_name(name)
        version = self.version()
        if parse_version(version) >= STRUCTURED_CREATE:
            self._create_json(name, gguf_file, digest, recipe, on_status, adapter)
            return "json"
        self._create_legacy(name, digest, recipe, version, on_status, adapter)
        return "modelfile"

    def _create_json(self, name, gguf_file, digest, recipe: ModelRecipe, on_status, adapter=None) -> None:
        import ollama

        # Never `from_`: a name missing locally makes Ollama try a registry pull.
        try:
            stream = self.client.create(
                model=name, files={gguf_file: digest}, adapters=dict([adapter]) if adapter else None,
                template=recipe.template, system=recipe.system,
                parameters=dict(recipe.parameters) or None,
                messages=list(recipe.messages) or None, license=list(recipe.license) or None, stream=True)
            self._follow(name, (p.model_dump(exclude_none=True) for p in stream), on_status)
        except ollama.ResponseError as e:
            raise self._create_failed(name, e.error) from None
        except (ConnectionError, httpx.HTTPError, ValueError) as e:
            failed = self.failure(f"the create of {name}", e)
            if failed is None:
                raise
            raise failed from None

    def _create_legacy(self, name, digest, recipe: ModelRecipe, version, on_status, adapter=None) -> None:
        try:
            modelfile = modelfile_text(f"@{digest}", recipe, adapter=f"@{adapter[1]}" if adapter else None)
        except InputError as e:
            raise ServerTooOld(
                f"Ollama {version} at {self.host} only takes a Modelfile string, and this model's "
                f"Modelfile cannot be written: {e.message}",
                "upgrade Ollama to 0.5.5 or newer, or install with `localserve install BUNDLE --store DIR`") from None
        body = {"model": name, "name": name, "modelfile": modelfile, "stream": True}
        try:
            with self._http.stream("POST", "/api/create", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._create_failed(name, _error_text(r) or f"HTTP {r.status_code}")
                self._follow(name, (json.loads(line) for line in r.iter_lines() if line.strip()), on_status)
        except (httpx.HTTPError, ValueError) as e:
            failed = self.failure(f"the create of {name}", e)
            if failed is None:
                raise
            raise failed from None

    def _follow(self, name: str, parts: Iterator[dict], on_status) -> None:
        """Read the streamed lines up to `success`; an `error` line fails the create even under HTTP 200."""
        last = None
        with contextlib.ExitStack() as bars:
            shown = None  # (status, bar) of the step that reports total/completed
            for part in parts:
                if part.get("error"):
                    raise self._create_failed(name, part["error"])
                last = part.get("status")
                if on_status:  # an observer (e.g. of "using autodetected template X"); progress shows anyway
                    on_status(part)
                if part.get("total"):
                    if shown is None or shown[0] != last:
                        shown = (last, bars.enter_context(bar(part["total"], f"ollama: {last}")))
                    shown[1].n = part.get("completed") or 0
                    shown[1].refresh()
                elif last:
                    step(f"ollama: {last}")
                if last == "success":  # Ollama's last line: the manifest is written, whatever follows
                    break
        if last != "success":
            raise self._create_failed(name, f"the stream ended after {last!r} without 'success'")

    def _create_failed(self, name: str, message: str) -> OllamaError:
        if "path or modelfile are required" in message.lower():
            return ServerTooOld(f"Ollama at {self.host} rejected the JSON create form ({message})",
                                "the ollama server must be updated to 0.5.5 or newer")
        return OllamaError(f"creating {name} on {self.host} failed: {message}",
                           "the model was not (re)created; fix the cause and run the command again")

    # --- management (official client) -----------------------------------------------------------
    def _call(self, what: str, fn, *args, **kw):
        import ollama

        try:
            return fn(*args, **kw)
        except ollama.ResponseError as e:
            if e.status_code == 404:
                raise OllamaError(f"{what}: {e.error} (on {self.host})",
                                  "list the models with `localserve ls`") from None
            raise OllamaError(f"{what}: Ollama at {self.host} answered {e.status_code}: {e.error}") from None
        except (ConnectionError, httpx.HTTPError, ValueError) as e:
            failed = self.failure(what, e)
            if failed is None:
                raise
            raise failed from None

    def list(self) -> list[dict[str, Any]]:
        resp = self._call("listing models", self.client.list)
        return [m.model_dump(mode="json", exclude_none=True) for m in resp.models]

    def show(self, name: str) -> dict[str, Any]:
        parse_name(name)
        return self._call(f"showing {name}", self.client.show, name).model_dump(mode="json", exclude_none=True)

    def copy(self, source: str, destination: str) -> None:
        parse_name(source), parse_name(destination)
        self._call(f"copying {source} to {destination}", self.client.copy, source, destination)

    def delete(self, name: str) -> None:
        parse_name(name)
        self._call(f"removing {name}", self.client.delete, name)

    def manifest_digest(self, name: str) -> str | None:
        """The /api/tags digest of `name` (sha256 of its manifest), or None if absent."""
        want = parse_name(name).key()
        for m in self.list():
            if parse_name(m.get("model") or m.get("name")).key() == want:
                return m.get("digest")
        return None


def _error_text(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return r.text.strip()
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):  # OpenAI-style
        return str(err.get("message"))
    return str(err) if err else r.text.strip()


def server_available(host: str | None = None, timeout: float = 1.5) -> bool:
    """True if an Ollama server answers /api/version at `host` (default $OLLAMA_HOST or 127.0.0.1:11434)."""
    try:
        r = httpx.get(resolve_host(host) + "/api/version", timeout=timeout)
        return r.status_code == 200 and "version" in r.json()
    except (httpx.HTTPError, ValueError, InputError):
        return False
