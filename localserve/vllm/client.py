"""Manage LoRA adapters on a running vLLM server: load, unload, list.

vLLM's endpoints: POST /v1/load_lora_adapter {lora_name, lora_path}, POST /v1/unload_lora_adapter
{lora_name}, GET /v1/models (the base and every adapter, an adapter's `parent` naming its base).
The load/unload routes exist only when the server runs with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterRefused, RuntimeLoraDisabled, VllmError, VllmUnreachable

DEFAULT_HOST = "http://127.0.0.1:8000"


def resolve_host(host: str | None = None) -> str:
    """--host, else $VLLM_HOST, else http://127.0.0.1:8000; a bare host:port gets http://."""
    host = host or os.environ.get("VLLM_HOST") or DEFAULT_HOST
    return (host if "://" in host else f"http://{host}").rstrip("/")


@dataclass(frozen=True)
class ServedModel:
    name: str
    parent: str | None  # the base model an adapter runs on; None for the base itself
    root: str | None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


class VllmClient:
    def __init__(self, host: str | None = None, timeout: float = 120.0):
        self.host = resolve_host(host)
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict | None = None, what: str = "") -> tuple[int, str]:
        what = what or f"{method} {path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.host}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except urllib.error.URLError as e:  # no connection at all: refused, no route, unknown name
            raise VllmUnreachable(f"vLLM is not reachable at {self.host} ({e.reason})",
                                  "start it with the export's ./launch.sh, or pass --host URL") from None
        except TimeoutError:
            raise VllmError(f"vLLM at {self.host} did not answer {what} within {self.timeout:g} s",
                            "it may be busy or stuck: check its log, then run the command again") from None
        # connected, then the answer broke off: RemoteDisconnected, IncompleteRead, a reset
        except (http.client.HTTPException, ConnectionError) as e:
            raise VllmError(f"vLLM at {self.host} closed the connection during {what} ({e or type(e).__name__})",
                            "it may have crashed (out of memory?): check its log, restart it with ./launch.sh, "
                            f"then run the command again (`localserve vllm ls --host {self.host}` shows what is "
                            "loaded)") from None
        except OSError as e:
            raise VllmUnreachable(f"vLLM is not reachable at {self.host} ({e})",
                                  "start it with the export's ./launch.sh, or pass --host URL") from None

    def models(self) -> list[ServedModel]:
        status, text = self._request("GET", "/v1/models", what="the list of models")
        if status != 200:
            raise VllmError(f"GET {self.host}/v1/models answered {status}: {_message(text)}")
        try:
            return [ServedModel(m["id"], m.get("parent"), m.get("root")) for m in json.loads(text).get("data", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            raise VllmError(f"{self.host}/v1/models did not answer like vLLM: {text[:120]!r}",
                            "check that --host points at a vLLM server and that it is healthy") from None

    def metrics_text(self) -> str:
        """The server's /metrics: Prometheus' text exposition format."""
        status, text = self._request("GET", "/metrics", what="its metrics")
        if status != 200:
            raise VllmError(f"GET {self.host}/metrics answered {status}: {_message(text)}",
                            "pass the server's root URL (/metrics is added)")
        return text

    def load(self, name: str, path: str | Path) -> None:
        """Load the adapter folder `path` (as the server sees it) under `name`."""
        what = f"loading adapter {name!r} from {path}"
        status, text = self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)},
                                     what)
        self._check(status, text, what)

    def unload(self, name: str) -> None:
        what = f"unloading adapter {name!r}"
        status, text = self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name}, what)
        self._check(status, text, what)

    def _check(self, status: int, text: str, what: str) -> None:
        if status == 200:
            return
        if status in (404, 405) and not _is_vllm_error(text):
            raise RuntimeLoraDisabled(
                f"{self.host} does not allow {what}: runtime LoRA updating is disabled",
                "restart vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (the export's launch.sh sets it) and --enable-lora")
        raise AdapterRefused(f"vLLM at {self.host} refused {what}: {_message(text)}")


def _is_vllm_error(text: str) -> bool:
    try:
        return isinstance(json.loads(text).get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _message(text: str) -> str:
    """The one-line message of a vLLM/FastAPI error body."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip().splitlines()[0] if text.strip() else "(empty answer)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return " ".join(str(error["message"]).split())
        if body.get("detail"):
            return str(body["detail"])
        if body.get("message"):
            return " ".join(str(body["message"]).split())
    return text.strip()[:300]
