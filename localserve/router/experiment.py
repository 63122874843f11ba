"""An A/B experiment and the router process that runs it.

    start("demo", ["demo:v2=90", "demo:v3=10"], port=11435, upstream="http://127.0.0.1:11434")
    set_weights("demo", {"demo:v3": 50})       # the running router takes them at once, no restart
    stop("demo")

The experiment is a JSON file in the state directory (STATE/router/NAME.json, mode 0600: it holds the
admin token): its arms and weights, the control arm (the first), the upstream, the port, when it
started, the pid of its router, and whether it captures conversations (router.capture; off by default). The router runs in the background (`python -m localserve.router
NAME`, on uvicorn, bound to 127.0.0.1), owns that file while it runs, and takes weight changes through
an admin route that answers loopback clients holding the token. `start NAME` without arms resumes
the experiment a killed router left: same arms, weights and start time, the log going on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import httpx

from ..errors import InputError, LocalserveError
from ..fsutil import atomic_path
from ..ollama.names import parse_name
from ..paths import state_dir
from ..progress import step
from .arms import Arm, parse_arms, shares, with_weights
from .capture import CaptureSettings

DEFAULT_PORT = 11435
HOST = "127.0.0.1"
ADMIN = "/_localserve"
TOKEN_HEADER = "X-Localserve-Token"


class RouterError(LocalserveError):
    """The router could not be started, reached or stopped."""


class NoExperiment(InputError):
    """No experiment of that name was started."""


@dataclass
class Experiment:
    name: str  # the model name clients ask for
    arms: list[Arm]
    control: str  # the version the others are compared with
    upstream: str  # the Ollama server: default arms, and every request the router does not route
    port: int
    started_at: float
    token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    pid: int | None = None
    stopped_at: float | None = None
    capture: CaptureSettings | None = None  # None: conversations are not kept (the default)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def arm(self, version: str) -> Arm:
        from ..errors import UnknownName

        for a in self.arms:
            if a.version == version:
                return a
        raise UnknownName("arm", version, [a.version for a in self.arms], f"the arms of {self.name}")

    def weights(self) -> dict[str, float]:
        return {a.version: a.weight for a in self.arms}

    def to_json(self) -> dict:
        return {"name": self.name, "arms": [a.to_json() for a in self.arms], "control": self.control,
                "upstream": self.upstream, "port": self.port, "started_at": self.started_at, "token": self.token,
                "pid": self.pid, "stopped_at": self.stopped_at,
                "capture": self.capture.to_json() if self.capture else None}

    @classmethod
    def from_json(cls, data: dict) -> "Experiment":
        return cls(data["name"], [Arm.from_json(a) for a in data["arms"]], data["control"], data["upstream"],
                   int(data["port"]), float(data["started_at"]), data["token"], data.get("pid"),
                   data.get("stopped_at"), CaptureSettings.from_json(data["capture"]) if data.get("capture") else None)

    def public(self) -> dict:
        """What commands show: everything but the token."""
        out = self.to_json()
        del out["token"]
        out["shares"] = shares(self.arms)
        out["running"] = is_running(self)
        out["url"] = self.url
        return out


# --- the file ---------------------------------------------------------------------------------------

def experiments_dir() -> Path:
    return state_dir() / "router"


def experiment_path(name: str) -> Path:
    return experiments_dir() / f"{quote(name, safe='')}.json"


def check_name(name: str) -> str:
    parsed = parse_name(name)
    if ":" in name.rsplit("/", 1)[-1] and parsed.tag != "latest":
        raise InputError(f"{name!r} names a tag; an experiment is named by the model clients ask for",
                         f"use the name without its tag, e.g. {name.rsplit(':', 1)[0]}")
    return name.removesuffix(":latest")


def load(name: str) -> Experiment:
    path = experiment_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.stem for p in experiments_dir().glob("*.json")) if experiments_dir().is_dir() else []
        raise NoExperiment(f"no A/B experiment named {name!r}" + (f" (there are: {', '.join(known)})" if known else ""),
                           f"start one: localserve ab start {name} --arm {name}:v1=90 --arm {name}:v2=10") from None
    except ValueError as e:
        raise InputError(f"the experiment file {path} cannot be read ({e})",
                         "remove it and start the experiment again") from None
    return Experiment.from_json(data)


def save(experiment: Experiment) -> Path:
    path = experiment_path(experiment.name)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(experiment.to_json(), indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
    return path


def log_path(name: str) -> Path:
    """Where the background router writes its own output (startup errors, tracebacks)."""
    return experiments_dir() / f"{quote(name, safe='')}.out"


# --- the process --------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie child of ours is reaped and counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def is_running(experiment: Experiment) -> bool:
    """Its router process lives and answers as itself (not another process that got the pid since)."""
    if not experiment.pid or not _alive(experiment.pid):
        return False
    try:
        health = httpx.get(experiment.url + ADMIN + "/health", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    return health.get("pid") == experiment.pid and health.get("name") == experiment.name


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {HOST} is in use",
                                 "pass another --port, or stop what listens there "
                                 "(`localserve ab stop NAME` for a router)") from None
            raise InputError(f"cannot listen on {HOST}:{port} ({e.strerror})", "pass another --port") from None


def served_models(arm: Arm, timeout: float = 10.0) -> list[str]:
    """The models the arm's server has: /api/tags (Ollama) or /v1/models (OpenAI-compatible)."""
    path = "/api/tags" if arm.engine == "ollama" else "/v1/models"
    try:
        r = httpx.get(arm.url + path, timeout=timeout)
        data = r.json()
        if arm.engine == "ollama":
            return [m.get("model") or m.get("name") for m in data.get("models") or []]
        return [m["id"] for m in data.get("data") or []]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RouterError(f"the {arm.engine} server {arm.url} of arm {arm.version} does not answer {path} "
                          f"({type(e).__name__}: {e})",
                          "start it, or point the arm elsewhere (--upstream URL, or @openai:URL#MODEL)") from None


def check_arms_served(arms: Sequence[Arm]) -> None:
    """Every arm's model is registered where the arm says it is."""
    for arm in arms:
        models = served_models(arm)
        if arm.engine == "ollama":
            want = parse_name(arm.model).key()
            found = any(_key(m) == want for m in models)
        else:
            found = arm.model in models
        if not found:
            raise InputError(f"{arm.model} is not registered on {arm.url} (arm {arm.version}); it has: "
                             f"{', '.join(sorted(filter(None, models))) or 'no models'}",
                             "register the version there first (`localserve register EXPORT_DIR --host URL`)")


def _key(model: str | None):
    try:
        return parse_name(model or "").key()
    except InputError:
        return None


KEEP = "keep"  # `capture=KEEP`: a resumed experiment captures as it did, a new one does not


def start(name: str, arms: Sequence[str] = (), *, port: int | None = None, upstream: str | None = None,
          capture: CaptureSettings | None | str = KEEP, wait_s: float = 60.0) -> Experiment:
    """Start the router of experiment `name` in the background and wait until it answers.

    With `arms` ('NAME:vN=WEIGHT', the first is the control) a new experiment; without, the one a
    stopped or killed router left, resumed. `capture`: CaptureSettings to keep conversations, None not
    to, KEEP for the resumed experiment's own setting (off for a new one)."""
    return launch(prepare(name, arms, port=port, upstream=upstream, capture=capture), wait_s)


def prepare(name: str, arms: Sequence[str] = (), *, port: int | None = None,
            upstream: str | None = None, capture: CaptureSettings | None | str = KEEP) -> Experiment:
    """Check and save the experiment a router is about to serve (see `start`)."""
    from ..ollama.client import resolve_host

    name = check_name(name)
    previous = None
    with contextlib.suppress(NoExperiment):
        previous = load(name)
    if previous is not None and is_running(previous):
        raise InputError(f"the router of {name} already runs on {previous.url} (pid {previous.pid})",
                         f"change its weights with `localserve ab set`, or stop it with `localserve ab stop {name}`")
    if arms:
        base = resolve_host(upstream)
        parsed = parse_arms(name, arms, base)
        experiment = Experiment(name, parsed, parsed[0].version, base, port or DEFAULT_PORT, time.time())
    elif previous is not None:
        experiment = replace(previous, port=port or previous.port, pid=None, stopped_at=None)
        if upstream:
            raise InputError("--upstream is set when an experiment starts", "give --arm options to start a new one")
    else:
        load(name)  # says how to start one
        raise AssertionError("unreachable")
    if capture is not KEEP:
        experiment.capture = capture
    check_port_free(experiment.port)
    check_arms_served(experiment.arms)
    save(experiment)
    return experiment


def launch(experiment: Experiment, wait_s: float = 60.0) -> Experiment:
    """Run the saved experiment's router in the background; returns it once it answers."""
    out = log_path(experiment.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "localserve.router", experiment.name],
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = out.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise RouterError(f"the router of {experiment.name} exited at start ({tail[0]})", f"its output is in {out}")
        try:
            health = httpx.get(experiment.url + ADMIN + "/health", timeout=2.0).json()
            if health.get("pid") == proc.pid:
                started = load(experiment.name)
                step(f"router of {experiment.name} on {started.url} (pid {proc.pid}): " +
                     ", ".join(f"{v} {s:.0%}" for v, s in shares(started.arms).items()))
                return started
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    raise RouterError(f"the router of {experiment.name} did not answer on {experiment.url} within {wait_s:.0f} s",
                      f"its output is in {out}")


def _admin(experiment: Experiment, method: str, path: str, body: dict | None = None) -> dict:
    try:
        r = httpx.request(method, experiment.url + ADMIN + path, json=body, timeout=30.0,
                          headers={TOKEN_HEADER: experiment.token})
    except httpx.HTTPError as e:
        raise RouterError(f"the router of {experiment.name} on {experiment.url} does not answer ({e})",
                          f"restart it: localserve ab start {experiment.name}") from None
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code == 400:
        raise InputError(data.get("error") or r.text)
    if r.status_code >= 300:
        raise RouterError(f"the router of {experiment.name} answered {r.status_code}: {data.get('error') or r.text}")
    return data


def set_weights(name: str, changes: dict[str, float], reason: str = "ab set") -> Experiment:
    """New weights for some arms; a running router takes them at once (and records them in the log),
    a stopped experiment keeps them for when it resumes."""
    from .log import RequestLog

    experiment = load(check_name(name))
    arms = with_weights(experiment.arms, changes)  # refuses an unknown arm or weights summing to 0
    if is_running(experiment):
        _admin(experiment, "PUT", "/weights", {"weights": changes, "reason": reason})
        return load(experiment.name)
    experiment.arms = arms
    save(experiment)
    with RequestLog() as log:
        log.add_weights(experiment.name, experiment.weights(), reason)
    return experiment


def stop(name: str, wait_s: float = 30.0) -> Experiment:
    """End the router: SIGTERM, in-flight requests finish, then it exits."""
    experiment = load(check_name(name))
    if not is_running(experiment):
        raise InputError(f"the router of {experiment.name} is not running",
                         f"nothing to stop; `localserve ab start {experiment.name}` resumes it")
    os.kill(experiment.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while _alive(experiment.pid):
        if time.monotonic() > deadline:
            os.kill(experiment.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    experiment = load(experiment.name)
    experiment.pid, experiment.stopped_at = None, time.time()
    save(experiment)
    step(f"router of {experiment.name} stopped")
    return experiment
