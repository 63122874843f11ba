"""llama-server, llama.cpp's HTTP server (the engine of LM Studio, Jan and, since 0.30, Ollama): started on
loopback, waited for, stopped with its process group, and the few routes localserve relies on.

What those routes do, as read in the vendored tree (tools/server/README.md, server-context.cpp,
server-common.cpp at the commit in LLAMA_CPP_COMMIT):

    GET  /health              503 while the model loads, 200 once it answers
    GET  /props               the chat template it applies (`chat_template`)
    POST /apply-template      {"messages", "tools"?} -> {"prompt": the text the chat route would tokenize};
                              the same parsing as /v1/chat/completions, without inference
    POST /tokenize            {"content", "add_special", "parse_special"} -> {"tokens"}
    GET  /lora-adapters       [{"id", "path", "scale"}]: the global scales
    POST /lora-adapters       [{"id", "scale"}]: sets the global scales
    a request's `lora`        [{"id", "scale"}] on /completion and /v1/chat/completions: this request's scales,
                              ids not listed at 0 — but an absent or EMPTY list means "the global scales", and
                              `--lora` loads every adapter at global scale 1.0 even with
                              `--lora-init-without-apply` (that flag only skips applying them at start-up:
                              common.cpp), so a request without the field is answered with every adapter
                              applied. localserve loads adapters at scale 0 (`--lora-scaled FILE:0`) and
                              sends every adapter's scale on every request (`lora_scales`).
    router mode               no --model: `--models-preset INI` (a section per model, keys = its flags), one
                              child server per model, requests routed by their `model` field (GET routes by
                              ?model=); GET /models lists them with their status, POST /models/load loads one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InputError, ToolError

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ServerModel:
    """One model a llama-server serves: its GGUF, the LoRA GGUFs loaded beside it (ids in this order), the
    context, and the name requests use."""

    name: str
    gguf: Path
    loras: tuple[Path, ...] = ()
    ctx: int | None = None
    chat_template_file: Path | None = None

    def flags(self) -> dict[str, str | None]:
        """The model's flags, long names without dashes (a value of None is a switch): the command line of
        a single-model server and a section of a router preset say the same."""
        flags: dict[str, str | None] = {"model": str(Path(self.gguf).resolve()), "jinja": None}
        if self.ctx:
            flags["ctx-size"] = str(self.ctx)
        if self.chat_template_file is not None:
            flags["chat-template-file"] = str(Path(self.chat_template_file).resolve())
        if self.loras:
            # loaded at global scale 0 (`--lora` would say 1.0, see the module docstring): a request that
            # reaches llama-server without scales gets the base, never every adapter at once
            paths = [str(Path(p).resolve()) for p in self.loras]
            odd = [p for p in paths if "," in p or ":" in p]
            if odd:
                raise InputError(f"llama-server cannot take the LoRA path {odd[0]}: its list syntax splits at ',' "
                                 "and ':'", "move the export to a folder whose path has neither")
            flags["lora-scaled"] = ",".join(f"{p}:0" for p in paths)
            flags["lora-init-without-apply"] = None
        return flags


def lora_scales(n_adapters: int, applied: int | None) -> list[dict]:
    """Every adapter's scale for one request: 1 for `applied` (an index), 0 for all others; None applies
    none (the base). Never empty when there are adapters: an empty list means the global scales."""
    return [{"id": i, "scale": 1.0 if i == applied else 0.0} for i in range(n_adapters)]


def preset_ini(models: Sequence[ServerModel]) -> str:
    """A router-mode preset: one section per model, loaded at start-up."""
    lines = ["version = 1", ""]
    for m in models:
        lines.append(f"[{m.name}]")
        for key, value in m.flags().items():
            lines.append(f"{key} = {'true' if value is None else value}")
        lines += ["load-on-startup = true", ""]
    return "\n".join(lines)


@dataclass
class RunningServer:
    url: str
    models: tuple[ServerModel, ...]
    process: subprocess.Popen
    log: Path
    router: bool  # several models behind one process (router mode): requests must name theirs
    _scratch: Path | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        return self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(models: Sequence[ServerModel], *, binary: Path | None = None, port: int | None = None,
            threads: int | None = None, parallel: int | None = None, extra_args: Sequence[str] = (),
            timeout: float = START_TIMEOUT_S) -> Iterator[RunningServer]:
    """llama-server on 127.0.0.1 serving `models` (one: a plain server; several: router mode, one preset
    section each), ready to answer; stopped with its children on exit."""
    from .process import dies_with_us
    from .tools import server_binary

    models = tuple(models)
    if not models:
        raise InputError("nothing to serve", "name at least one export")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"two models are named alike: {', '.join(names)}", "serve each name once")
    binary = Path(binary) if binary else server_binary()
    port = port or free_port()
    scratch = Path(tempfile.mkdtemp(prefix="localserve-llama-server-"))
    log = scratch / "llama-server.log"
    common = ["--host", HOST, "--port", str(port), "--no-webui"]
    if threads:
        common += ["--threads", str(threads)]
    if parallel:
        common += ["--parallel", str(parallel)]
    if len(models) == 1:
        args = [*common, "--alias", models[0].name, *_command_line(models[0].flags())]
    else:
        preset = scratch / "models.ini"
        preset.write_text(preset_ini(models), encoding="utf-8")
        # every model loads at start-up, and the router refuses more than --models-max of them (default 4)
        args = [*common, "--models-preset", str(preset), "--no-models-autoload", "--models-max", str(len(models))]
    command = [str(binary), *args, *map(str, extra_args)]
    with open(log, "w") as out:
        # its own process group: router mode starts a child server per model, stopped with it
        process = subprocess.Popen(dies_with_us(command), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=scratch)
    server = RunningServer(f"http://{HOST}:{port}", models, process, log, len(models) > 1, scratch)
    try:
        _wait_ready(server, timeout, command)
        yield server
    finally:
        stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


def _command_line(flags: dict[str, str | None]) -> list[str]:
    out = []
    for key, value in flags.items():
        out.append(f"--{key}")
        if value is not None:
            out.append(value)
    return out


def _wait_ready(server: RunningServer, timeout: float, command: list[str]) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        while time.monotonic() < deadline:
            if not server.alive():
                raise ToolError("llama-server", f"exited with code {server.process.returncode} while starting "
                                f"(`{' '.join(command[-12:])}`)", server.log_tail(),
                                "a model or LoRA it cannot load is named in the lines above")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if http.get("/health").status_code == 200:
                    if not server.router:
                        return
                    status = {m["id"]: m.get("status") or {} for m in http.get("/models").json()["data"]}
                    failed = [name for name, s in status.items() if s.get("failed")]
                    if failed:
                        raise ToolError("llama-server", f"router mode could not load {', '.join(failed)}",
                                        server.log_tail(), "a model or LoRA it cannot load is named above")
                    if all(status.get(m.name, {}).get("value") == "loaded" for m in server.models):
                        return
            time.sleep(0.25)
    raise ToolError("llama-server", f"not ready after {timeout:.0f} s", server.log_tail())


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (router mode's children are in it), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # a child that outlived it
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)


# --- the routes localserve uses -------------------------------------------------------------------------

class Client:
    """The routes above, for one model of a running llama-server (`model`: its name in router mode)."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 60.0):
        import httpx

        self.url, self.model = url.rstrip("/"), model
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, route: str, body: dict | list):
        if self.model is not None and isinstance(body, dict):
            body = {"model": self.model, **body}
        r = self._http.post(route, json=body, params={"model": self.model} if self.model and
                            isinstance(body, list) else None)
        return self._json(route, r)

    def _get(self, route: str):
        return self._json(route, self._http.get(route, params={"model": self.model} if self.model else None))

    def _json(self, route: str, r):
        if r.status_code >= 400:
            raise ToolError("llama-server", f"{route} answered {r.status_code}: {error_message(r.text)}")
        return r.json()

    def apply_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        body: dict = {"messages": messages}
        if tools:
            body["tools"] = tools
        return self._post("/apply-template", body)["prompt"]

    def tokenize(self, text: str) -> list[int]:
        """The ids the chat route feeds the model for `text`: special tokens parsed, BOS added when the
        vocabulary asks for it (as tokenize_mixed does for a chat prompt)."""
        return self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]

    def props(self) -> dict:
        return self._get("/props")

    def lora_adapters(self) -> list[dict]:
        return self._get("/lora-adapters")

    def set_lora_adapters(self, scales: list[dict]) -> None:
        self._post("/lora-adapters", scales)


def error_message(text: str) -> str:
    """The message of llama-server's error body ({"error": {"message": ...}}), else the text's start."""
    import json

    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()[:300] or "(no body)"
    if isinstance(err, dict):
        return str(err.get("message"))
    return str(err or text.strip()[:300])
