"""llama-server as a runtime: `localserve serve EXPORT... [--port P]`.

    with serve([Path("exports/facts")], port=8080) as serving:      # a tenants export (`export --lora`)
        serving.url, serving.names                                   # http://127.0.0.1:8080, [facts, lighthouse, ...]

localserve starts llama-server (llama.cpp's own, built in the tree the quantizer comes from) on a loopback
port of its own and answers on 127.0.0.1:P in front of it. The front exists for what llama-server does not
do by itself: it names one model per server (`/v1/models` has one entry), and a LoRA is chosen per request
by ids and scales, not by name. So the front:

- lists every name it serves in `/v1/models`: each export by its name and, for a tenants export, each
  tenant by its name;
- rewrites each request's `model` to the model llama-server knows and adds `lora` with EVERY adapter's
  scale (the tenant's 1, all others 0; the export's own name is the base, all 0). llama-server answers a
  request without `lora`, or with an empty one, at the global scales, which `--lora` sets to 1.0 even with
  `--lora-init-without-apply` (llamacpp/server.py): explicit scales on every request are the only safe way;
- answers an unknown model with 404 and the names it serves, and a request that sets `lora` itself with
  400 (the name is what selects an adapter);
- passes every other route through untouched (`/health`, `/props`, `/tokenize`, `/metrics`, ...).

Several exports run behind one llama-server in router mode (one child server per export, started at once);
the front routes by the same names.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InputError, ToolError
from ..lineage import ExportRecord, read_record
from ..llamacpp.server import HOST, ServerModel, lora_scales

DEFAULT_PORT = 8080  # llama-server's own default
# routes whose JSON body names the model: the front picks the adapter scales from it
MODEL_ROUTES = ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/completion",
                "/apply-template", "/infill", "/v1/responses", "/responses")


@dataclass(frozen=True)
class ServedName:
    """One name the front answers to, and what it means on the llama-server behind it."""

    name: str  # what clients send as `model`
    upstream: str  # the model llama-server knows (its alias, or its router-mode preset section)
    lora: tuple[dict, ...]  # every adapter's scale of that model (empty when it has no adapters)
    export: str  # the export folder
    tenant: str | None = None  # the tenant, for a tenant of a tenants export
    kind: str = "gguf"

    def to_json(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "localserve",
                "meta": {"export": self.export, "kind": self.kind, "tenant": self.tenant, "upstream": self.upstream,
                         "lora": list(self.lora)}}


def plan(exports: Sequence[Path], quant: str | None = None) -> tuple[list[ServerModel], list[ServedName]]:
    """The models llama-server loads and the names the front serves, for these export folders."""
    models: list[ServerModel] = []
    names: list[ServedName] = []
    for folder in exports:
        folder = Path(folder)
        record = read_record(folder)
        model, served = _export_plan(folder, record, quant)
        models.append(model)
        names.extend(served)
    seen: dict[str, str] = {}
    for n in names:
        if n.name in seen:
            raise InputError(f"two served models would be named {n.name!r} ({seen[n.name]} and {n.export})",
                             "serve exports whose names (and tenants' names) differ, or re-export one with --name")
        seen[n.name] = n.export
    return models, names


def _file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise InputError(f"{path} is listed in {folder / 'localserve.json'} but missing",
                         "re-run `localserve export`, or restore the file")
    return path


def _ctx(record: ExportRecord) -> int | None:
    num_ctx = ((record.modelfile or {}).get("parameters") or {}).get("num_ctx")
    return int(num_ctx) if num_ctx else None


def _export_plan(folder: Path, record: ExportRecord, quant: str | None) -> tuple[ServerModel, list[ServedName]]:
    where = str(folder.resolve())
    if record.kind == "gguf":
        artifact = record.artifact(quant)
        model = ServerModel(record.name, _file(folder, artifact.file), ctx=_ctx(record))
        return model, [ServedName(record.name, record.name, (), where)]
    if record.kind == "tenants":
        base = record.artifact()
        loras = tuple(_file(folder, t.file) for t in record.tenants)
        model = ServerModel(record.name, _file(folder, base.file), loras=loras, ctx=_ctx(record))
        n = len(loras)
        served = [ServedName(record.name, record.name, tuple(lora_scales(n, None)), where, None, "tenants")]
        served += [ServedName(t.tenant, record.name, tuple(lora_scales(n, i)), where, t.tenant, "tenants")
                   for i, t in enumerate(record.tenants)]
        return model, served
    raise InputError(f"{folder} is a {record.kind} export; llama-server serves GGUF exports "
                     "(`localserve export ADAPTER`) and tenants exports (`export A B --lora`)",
                     "serve a vLLM export with its own ./launch.sh" if record.kind == "vllm" else None)


# --- the front -----------------------------------------------------------------------------------------

def _error(status: int, message: str, kind: str):
    from starlette.responses import JSONResponse

    # llama-server's (and OpenAI's) error shape, so its clients raise it as they would the server's own
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "te", "trailer",
        "proxy-authenticate", "proxy-authorization"}


def front_app(names: Sequence[ServedName], upstream_url: str):
    """The ASGI app in front of llama-server (see the module docstring)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    by_name = {n.name: n for n in names}
    listing = ", ".join(by_name)
    client = httpx.AsyncClient(base_url=upstream_url, timeout=httpx.Timeout(600.0, connect=10.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    async def relay(request: Request, body: bytes | None):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["content-type"] = "application/json"
        upstream = client.build_request(request.method, request.url.path, params=request.query_params,
                                        headers=headers, content=body if body is not None else await request.body())
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            return _error(502, f"llama-server at {upstream_url} did not answer ({e or type(e).__name__})",
                          "server_error")
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP | {"content-encoding"}}
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=out_headers,
                                 background=BackgroundTask(response.aclose))

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [n.to_json() for n in names]})

    async def with_model(request: Request):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object", "invalid_request_error")
        if "lora" in body:
            return _error(400, "this server chooses the LoRA adapter from `model` (a tenant's name); leave `lora` out",
                          "invalid_request_error")
        asked = body.get("model")
        if asked is None and len(by_name) == 1:
            asked = next(iter(by_name))
        served = by_name.get(asked) if isinstance(asked, str) else None
        if served is None:
            what = "no model named" if asked is not None else "no `model` in the request; name one of"
            return _error(404, f"{what} {asked!r}; this server serves: {listing}" if asked is not None
                          else f"{what}: {listing}", "not_found_error")
        body["model"] = served.upstream
        if served.lora:
            body["lora"] = list(served.lora)
        return await relay(request, json.dumps(body).encode())

    async def passthrough(request: Request):
        return await relay(request, None)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/models", models, methods=["GET"]),
              *(Route(r, with_model, methods=["POST"]) for r in MODEL_ROUTES),
              Route("/{path:path}", passthrough, methods=["GET", "POST", "PUT", "DELETE"])]
    return Starlette(routes=routes, lifespan=lifespan)


# --- serving ---------------------------------------------------------------------------------------------

@dataclass
class Serving:
    url: str  # the front, what clients use
    names: list[ServedName]
    upstream: object  # llamacpp.server.RunningServer

    def wait(self) -> None:
        """Block until llama-server exits (Ctrl-C ends the wait); a server that dies is a ToolError."""
        code = self.upstream.wait()
        raise ToolError("llama-server", f"stopped with code {code}", self.upstream.log_tail())


def bind(port: int):
    import errno
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {HOST} is in use", "pass another --port") from None
        raise InputError(f"cannot listen on {HOST}:{port} ({e.strerror})", "pass another --port") from None
    sock.listen(2048)
    return sock


@contextlib.contextmanager
def serve(exports: Sequence[Path], port: int = DEFAULT_PORT, *, quant: str | None = None,
          threads: int | None = None, parallel: int | None = None, binary: Path | None = None) -> Iterator[Serving]:
    """llama-server with `exports` behind the front on 127.0.0.1:`port` (0: a free port), until the block ends."""
    import uvicorn

    from ..llamacpp.server import running

    models, names = plan(exports, quant)
    sock = bind(port)  # before the model loads: a port in use fails at once
    try:
        with running(models, binary=binary, threads=threads, parallel=parallel) as upstream:
            config = uvicorn.Config(front_app(names, upstream.url), log_level="warning", access_log=False,
                                    lifespan="on", server_header=False, timeout_graceful_shutdown=5)
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                      name="localserve-front")
            thread.start()
            deadline = time.monotonic() + 30
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not server.started:
                raise ToolError("localserve serve", "the front did not start")
            try:
                yield Serving(f"http://{HOST}:{sock.getsockname()[1]}", names, upstream)
            finally:
                server.should_exit = True
                thread.join(timeout=15)
    finally:
        sock.close()
