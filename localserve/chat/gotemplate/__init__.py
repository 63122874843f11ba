"""Render Ollama Go TEMPLATEs with the real Go `text/template` engine.

A small stdlib-only Go program (`main.go` beside this file) carries Ollama's variables, template
functions and execution modes (docs/ollama.md#go-template). It is built on first use with `go build` into
`~/.cache/localserve/bin/`, keyed by the hash of its source, and renders a whole batch of
conversations in one process.

Messages use Ollama's API shape (`role`, `content`, `tool_calls` with `function.arguments` as an
object, `tool_name`, `tool_call_id`); OpenAI/HF-style input (arguments as a JSON string,
`name` on a tool message) is accepted and converted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ...errors import SetupError, TemplateMismatch, ToolError
from ...fsutil import atomic_path
from ...paths import home

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("main.go", "go.mod")
INSTALL_HINT = "install Go: `apt-get install golang-go` (Debian/Ubuntu), then retry"


class GoTemplateError(TemplateMismatch):
    """Go's text/template refused a template (parse) or failed while executing it."""


def _cache_dir() -> Path:
    return home() / "bin"


def go_available() -> bool:
    return shutil.which("go") is not None


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def binary_path() -> Path:
    """The renderer binary, built from the kept Go source on first use (atomic rename into place)."""
    target = _cache_dir() / f"gotemplate-{source_hash()}"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise SetupError("Go is not installed; it is needed to render Ollama templates (text/template)",
                         INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="localserve-go-") as build:
        for name in SOURCES:
            shutil.copy(SOURCE_DIR / name, Path(build) / name)
        env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", CGO_ENABLED="0")
        env.setdefault("GOCACHE", str(_cache_dir().parent / "go-build"))
        env.setdefault("GOPATH", str(_cache_dir().parent / "go"))
        with atomic_path(target) as tmp:
            cmd = [go, "build", "-trimpath", "-o", str(tmp), "."]
            proc = subprocess.run(cmd, cwd=build, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ToolError("go build", f"building the template renderer failed ({' '.join(cmd)})",
                                proc.stderr[-2000:], "check the Go install (`go version`, needs ≥ 1.19)")
            os.chmod(tmp, 0o755)
    return target


@dataclass(frozen=True)
class Conversation:
    """One rendering job: messages (+ tools) and Ollama's extra template values."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...] | None = None
    vars: Mapping[str, Any] | None = None


def _ollama_message(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("thinking"):
        out["thinking"] = m["thinking"]
    if m.get("images"):
        out["images"] = list(m["images"])
    calls = []
    for i, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function", call)
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        c: dict[str, Any] = {"function": {"index": fn.get("index", i), "name": fn["name"], "arguments": args}}
        if call.get("id"):
            c["id"] = call["id"]
        calls.append(c)
    if calls:
        out["tool_calls"] = calls
    tool_name = m.get("tool_name") or (m.get("name") if m["role"] == "tool" else None)
    if tool_name:
        out["tool_name"] = tool_name
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    return out


_VAR_NAMES = {"think", "think_level", "is_think_set", "prompt", "suffix", "force_legacy"}


def _job(template: str, conv: Conversation) -> dict[str, Any]:
    job: dict[str, Any] = {"template": template, "messages": [_ollama_message(m) for m in conv.messages]}
    if conv.tools:
        job["tools"] = list(conv.tools)
    for k, v in (conv.vars or {}).items():
        if k not in _VAR_NAMES:
            raise ValueError(f"unknown template variable {k!r}; valid: {', '.join(sorted(_VAR_NAMES))}")
        job[k] = v
    return job


def render_many(jobs: Iterable[tuple[str, Conversation]]) -> list[str | GoTemplateError]:
    """Render many (template, conversation) pairs in one Go process.

    Returns, per job, the rendered text or the GoTemplateError it raised (not raised, so one bad
    case does not hide the others).
    """
    payload = [_job(t, c) for t, c in jobs]
    if not payload:
        return []
    exe = binary_path()
    proc = subprocess.run([str(exe)], input=json.dumps({"jobs": payload}, ensure_ascii=False),
                          capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        raise ToolError("gotemplate", f"the renderer {exe} exited with {proc.returncode}", proc.stderr[-2000:])
    results = json.loads(proc.stdout)["results"]
    return [GoTemplateError(f"Go template error: {r['error']}", "fix the TEMPLATE text")
            if r["error"] is not None else r["text"] for r in results]


def render(template: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
           **vars: Any) -> str:
    """The prompt Ollama would build from `template` for these messages (and tools).

    `vars`: think, think_level, is_think_set, prompt + suffix (suffix mode), force_legacy.
    Raises GoTemplateError when the template does not parse or fails to execute.
    """
    out = render_many([(template, Conversation(tuple(messages), tuple(tools) if tools else None, vars))])[0]
    if isinstance(out, GoTemplateError):
        raise out
    return out


def check_parses(template: str) -> None:
    """Raise GoTemplateError if Ollama's server would refuse this TEMPLATE (`template error: …`).

    Only parse errors count: what a template does with particular messages is the parity check's job.
    """
    out = render_many([(template, Conversation(({"role": "user", "content": "x"},)))])[0]
    if isinstance(out, GoTemplateError) and "template parse:" in out.message:
        raise out
