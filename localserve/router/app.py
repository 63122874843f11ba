"""The router: an ASGI app speaking Ollama's API and OpenAI's, in front of the arms' servers.

A request for the experiment's model (`model: "demo"`) on /api/chat, /api/generate,
/v1/chat/completions or /v1/completions goes to the arm of its user (sticky, weighted: arms.assign),
with the model name rewritten to the arm's; the answer comes back as it streams, with the arm in
`X-Localserve-Arm` and the request's id in `X-Request-Id`, and becomes one row of the request log,
committed before the answer's last piece is sent. Everything else (/api/tags, /api/show, /api/version,
/api/ps, /v1/models, other models) passes through to the upstream Ollama untouched.

    POST /feedback {"request_id": ..., "score": ...}        the user's satisfaction with an answer; with capture
                   [, "correction": ..., "label": ...]       on, the answer it should have been (router.capture)
    GET  /_localserve/health                                  name, pid, weights (loopback only)
    PUT  /_localserve/weights {"weights": {version: w}}       new weights at once (loopback + token)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import sqlite3
import time
import uuid
from typing import AsyncIterator, Callable

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import InputError, LocalserveError
from ..ollama.names import parse_name
from . import protocols as p
from .arms import Arm, assign, user_hash, with_weights
from .capture import CaptureWriter, NotCaptured, check_feedback, write_correction
from .experiment import ADMIN, TOKEN_HEADER, Experiment
from .log import RequestLog, RequestRow, UnknownRequest

ARM_HEADER = "X-Localserve-Arm"
ID_HEADER = "X-Request-Id"
USER_HEADER = "X-User-Id"
# headers that belong to one connection, not to the message (RFC 9110 7.6.1), and the ones rewritten here
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "content-encoding"}
_STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


def _forward_headers(headers) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _HOP and not k.lower().startswith("x-localserve")}
    out["accept-encoding"] = "identity"  # the router reads what passes: no compression
    return out


class Router:
    def __init__(self, experiment: Experiment, log: RequestLog, save: Callable[[Experiment], object],
                 capture: CaptureWriter | None = None):
        self.experiment = experiment
        self.log = log
        self.save = save
        self.capture = capture
        self.asked: dict[str, dict] = {}  # request id -> body, for the requests being captured
        self.alias = parse_name(experiment.name).key()
        self.clients: dict[str, httpx.AsyncClient] = {}

    # --- plumbing ------------------------------------------------------------------------------------
    def client(self, url: str) -> httpx.AsyncClient:
        if url not in self.clients:
            self.clients[url] = httpx.AsyncClient(
                base_url=url, timeout=httpx.Timeout(600.0, connect=10.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        return self.clients[url]

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()
        if self.capture is not None:
            await anyio.to_thread.run_sync(self.capture.close)
        self.log.close()

    def routed(self, model) -> bool:
        if not isinstance(model, str):
            return False
        try:
            return parse_name(model).key() == self.alias
        except InputError:
            return False

    def app(self) -> Starlette:
        routes = [Route(path, self.inference, methods=["POST"]) for path in p.ROUTED]
        routes += [Route("/api/show", self.show, methods=["POST"]),
                   Route("/feedback", self.feedback, methods=["POST"]),
                   Route(ADMIN + "/health", self.health, methods=["GET"]),
                   Route(ADMIN + "/weights", self.set_weights, methods=["PUT"]),
                   Route("/{path:path}", self.passthrough,
                         methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])]

        @contextlib.asynccontextmanager
        async def lifespan(_app):
            yield
            await self.close()

        return Starlette(routes=routes, lifespan=lifespan)

    # --- the routed requests ------------------------------------------------------------------------
    def user_key(self, request: Request, body: dict) -> str:
        if request.url.path.startswith("/v1/") and isinstance(body.get("user"), str) and body["user"]:
            return body["user"]
        return request.headers.get(USER_HEADER) or (request.client.host if request.client else "unknown")

    async def inference(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not self.routed(body.get("model")):
            return await self._forward(request, raw)
        route = request.url.path
        protocol = p.ROUTED[route]
        user = self.user_key(request, body)
        arm = assign(self.experiment.name, user, self.experiment.arms)
        stream = bool(body.get("stream", protocol == p.OLLAMA))
        row = RequestRow(uuid.uuid4().hex, self.experiment.name, time.time(), route, arm.version,
                         user_hash(self.experiment.name, user), stream)
        account = p.Account(time.perf_counter())
        if self.capture is not None and self.capture.wants(row.id):
            account.text = []
            self.asked[row.id] = body
        translate = arm.engine == "openai" and protocol == p.OLLAMA
        if translate:
            path, upstream_body = "/v1/chat/completions", p.ollama_to_openai(route, body, arm.model)
        else:
            path, upstream_body = route, {**body, "model": arm.model}
        drop_usage = False
        if protocol == p.OPENAI and stream:
            options = dict(upstream_body.get("stream_options") or {})
            drop_usage = not options.get("include_usage")
            upstream_body["stream_options"] = {**options, "include_usage": True}
        headers = {ID_HEADER: row.id, ARM_HEADER: arm.version}
        client = self.client(arm.url)
        upstream_request = client.build_request("POST", path, content=json.dumps(upstream_body).encode(),
                                                headers={**_forward_headers(request.headers),
                                                         "content-type": "application/json"})
        try:
            response = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as e:
            return self._failed(row, account, protocol, 502, f"{arm.version}'s server {arm.url} failed: "
                                f"{type(e).__name__}: {e or 'no answer'}", headers)
        if response.status_code >= 400:
            try:
                data = await response.aread()
            except httpx.HTTPError as e:
                data = str(e).encode()
            finally:
                await response.aclose()
            row.status, row.error = response.status_code, p.error_text(data)
            self._record(row, account)
            body_out = p.error_body(protocol, row.error) if translate else data
            return Response(body_out, response.status_code, headers,
                            media_type="application/json" if translate else response.headers.get("content-type"))
        media = response.headers.get("content-type", "")
        streamed = stream if translate else media.split(";")[0].strip() in _STREAM_TYPES
        if translate:
            media = "application/x-ndjson" if stream else "application/json; charset=utf-8"
        if streamed:
            relay = p.ToOllamaRelay(account, route, arm.model) if translate else \
                p.relay_for(protocol, account, drop_usage)
            return StreamingResponse(self._relay(response, relay, row, account, protocol), response.status_code,
                                     headers, media_type=media)
        try:
            data = await response.aread()
        except httpx.HTTPError as e:
            return self._failed(row, account, protocol, 502, f"{arm.version}'s server {arm.url} failed: "
                                f"{type(e).__name__}: {e}", headers)
        finally:
            await response.aclose()
        if translate:
            data = p.openai_to_ollama_whole(route, arm.model, data, account)
        else:
            p.read_whole(protocol, data, account)
        row.status = response.status_code
        self._record(row, account)
        return Response(data, response.status_code, headers, media_type=media)

    async def _relay(self, response: httpx.Response, relay, row: RequestRow, account: p.Account,
                     protocol: str) -> AsyncIterator[bytes]:
        row.status = response.status_code
        recorded = False
        try:
            async for chunk in response.aiter_raw():
                out = relay.feed(chunk)
                if account.terminal and not recorded:
                    self._record(row, account)
                    recorded = True
                if out:
                    yield out
            tail = relay.finish()
            if not account.terminal and account.error is None:
                account.error = f"{row.arm}'s server ended the stream before its last message"
                tail += p.error_piece(protocol, account.error)
            if not recorded:
                self._record(row, account)
                recorded = True
            if tail:
                yield tail
        except httpx.HTTPError as e:
            if account.terminal:  # the answer was whole; only the connection's end was lost
                return
            account.error = f"{row.arm}'s server failed mid-stream: {type(e).__name__}: {e or 'connection lost'}"
            self._record(row, account)
            recorded = True
            yield p.error_piece(protocol, account.error)
        finally:
            if not recorded:  # the client went away (or the router is stopping) before the end
                account.error = account.error or "the client closed the connection before the end"
                self._record(row, account)
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _failed(self, row: RequestRow, account: p.Account, protocol: str, status: int, message: str,
                headers: dict) -> Response:
        row.status, account.error = status, message
        self._record(row, account)
        return Response(p.error_body(protocol, message), status, headers, media_type="application/json")

    def _record(self, row: RequestRow, account: p.Account) -> None:
        row.latency_s = time.perf_counter() - account.started
        row.ttft_s = account.ttft_s if row.stream else None
        row.prompt_tokens = account.prompt_tokens
        row.completion_tokens = account.completion_tokens if account.completion_tokens is not None else \
            (account.pieces if account.terminal else None)
        row.finish_reason = account.finish_reason
        row.response_chars = account.chars
        row.error = row.error or account.error
        self.log.add(row)
        body = self.asked.pop(row.id, None)
        if body is not None:  # queued, never written here: a capture neither fails nor delays the request
            self.capture.submit(row.id, row.at, row.route, row.arm, body, "".join(account.text or ()))

    # --- passed through ----------------------------------------------------------------------------------
    async def show(self, request: Request) -> Response:
        """/api/show of the experiment's model shows the user's arm (its template, parameters)."""
        raw = await request.body()
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
            name = body.get("model") or body.get("name") if isinstance(body, dict) else None
            if self.routed(name):
                arm = assign(self.experiment.name, self.user_key(request, body), self.experiment.arms)
                if arm.engine == "ollama":
                    body = {**body, "model": arm.model}
                    body.pop("name", None)
                    return await self._forward(request, json.dumps(body).encode(), arm.url, {ARM_HEADER: arm.version})
        return await self._forward(request, raw)

    async def passthrough(self, request: Request) -> Response:
        return await self._forward(request, await request.body())

    async def _forward(self, request: Request, raw: bytes, url: str | None = None,
                       extra_headers: dict | None = None) -> Response:
        client = self.client(url or self.experiment.upstream)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        upstream_request = client.build_request(request.method, target, content=raw,
                                                headers=_forward_headers(request.headers))
        protocol = p.OPENAI if request.url.path.startswith("/v1/") else p.OLLAMA
        try:
            response = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as e:
            return Response(p.error_body(protocol, f"the upstream {client.base_url} failed: {type(e).__name__}: {e}"),
                            502, media_type="application/json")
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP}
        headers.update(extra_headers or {})

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            except httpx.HTTPError as e:
                yield p.error_piece(protocol, f"the upstream failed mid-stream: {e}")
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

        return StreamingResponse(body(), response.status_code, headers)

    # --- feedback and administration ------------------------------------------------------------------------
    async def feedback(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": 'the body must be JSON: {"request_id": "...", "score": 1}'}, 400)
        rid, score = body.get("request_id"), body.get("score")
        if not isinstance(rid, str) or not rid:
            return JSONResponse({"error": "request_id must be the X-Request-Id of a response"}, 400)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            return JSONResponse({"error": "score must be a finite number (e.g. 1 good, 0 bad, or 1-5)"}, 400)
        teaching = {key: body[key] for key in ("correction", "label") if body.get(key) is not None}
        for key, value in teaching.items():
            if not isinstance(value, str) or not value.strip():
                return JSONResponse({"error": f"{key} must be a non-empty string"}, 400)
        try:
            check_feedback(self.experiment, self.log, rid, teaching.get("correction"), teaching.get("label"))
        except UnknownRequest as e:
            return JSONResponse({"error": e.message}, 404)
        except NotCaptured as e:
            return JSONResponse({"error": str(e)}, 409)
        if teaching:
            try:
                await anyio.to_thread.run_sync(write_correction, self.experiment, rid, teaching.get("correction"),
                                               teaching.get("label"))
            except (LocalserveError, sqlite3.Error) as e:
                return JSONResponse({"error": f"the correction could not be written: {e}"}, 503)
        self.log.add_feedback(rid, float(score))
        return JSONResponse({"request_id": rid, "score": score, **teaching})

    def _admin_refusal(self, request: Request, need_token: bool) -> Response | None:
        host = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return JSONResponse({"error": "the admin routes answer loopback clients only"}, 403)
        if need_token and request.headers.get(TOKEN_HEADER) != self.experiment.token:
            return JSONResponse({"error": f"missing or wrong {TOKEN_HEADER}"}, 403)
        return None

    async def health(self, request: Request) -> Response:
        import os

        refused = self._admin_refusal(request, need_token=False)
        if refused:
            return refused
        return JSONResponse({"name": self.experiment.name, "pid": os.getpid(), "weights": self.experiment.weights(),
                             "control": self.experiment.control,
                             "capture": self.capture.stats.to_json() if self.capture else None})

    async def set_weights(self, request: Request) -> Response:
        refused = self._admin_refusal(request, need_token=True)
        if refused:
            return refused
        try:
            body = json.loads(await request.body())
            changes = body["weights"]
            if not isinstance(changes, dict):
                raise TypeError
            arms = with_weights(self.experiment.arms, changes)
        except InputError as e:
            return JSONResponse({"error": str(e)}, 400)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'the body must be {"weights": {"NAME:vN": weight}}'}, 400)
        self.set_arms(arms, str(body.get("reason") or "ab set"))
        return JSONResponse({"weights": self.experiment.weights()})

    def set_arms(self, arms: list[Arm], reason: str) -> None:
        self.experiment.arms = arms  # one assignment: a request sees the old list or the new one
        self.save(self.experiment)
        self.log.add_weights(self.experiment.name, self.experiment.weights(), reason)
