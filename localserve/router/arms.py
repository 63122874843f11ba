"""Arms of an A/B experiment and the sticky weighted assignment of users to them.

    arms = parse_arms("demo", ["demo:v2=90", "demo:v3=10@openai:http://127.0.0.1:8000#demo-v3"], upstream)
    arm = assign("demo", "alice", arms)          # the same user, the same arm, on every request and restart

An arm is a version (NAME:vN) with a weight and where it is served: a model on the Ollama upstream
(the default: the model NAME:vN, as `localserve register` names it) or a model on a runtime that speaks
OpenAI's API: vLLM (`@openai:URL#MODEL`, `@vllm:URL#MODEL`), llama-server (`@llama-server:URL#MODEL`, e.g.
`localserve serve` with MODEL an export or a tenant), LM Studio (`@lmstudio:URL#MODEL`), Jan (`@jan:URL#MODEL`).

Assignment is weighted rendezvous hashing: every (user, arm) pair gets a uniform number u from
sha256(experiment, user key, arm), the arm's score is -ln(u) / weight, and the user goes to the arm with
the lowest score. These scores are exponential draws with rate = weight, so an arm wins with
probability weight / sum of weights; no state is kept, so a user keeps the arm across requests and
restarts. When weights change at run time, a user moves only if the arm they are on lost weight or
another arm gained enough to win their score: raising one arm's weight moves only users onto that
arm, lowering it moves only users off it — exactly the share that must move, and no one else.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from ..errors import InputError, UnknownName
from ..lifecycle.store import parse_version_ref

ENGINES = ("ollama", "openai")  # the protocol the router speaks to an arm's server
# where an arm may live -> its protocol
RUNTIMES = {"ollama": "ollama", "openai": "openai", "vllm": "openai", "llama-server": "openai", "lmstudio": "openai",
            "jan": "openai"}
ARM_FORM = ("NAME:vN=WEIGHT, or NAME:vN=WEIGHT@RUNTIME:URL#MODEL for a model on a server that speaks OpenAI's API "
            "(RUNTIME: openai or vllm, llama-server, lmstudio, jan)")


@dataclass(frozen=True)
class Arm:
    version: str  # NAME:vN
    weight: float
    engine: str  # the protocol: ollama | openai
    url: str  # the server's root URL
    model: str  # the model name the server knows
    runtime: str | None = None  # what serves it when that is not the protocol's name (vllm, llama-server, ...)

    def to_json(self) -> dict:
        return {"version": self.version, "weight": self.weight, "engine": self.engine, "url": self.url,
                "model": self.model, **({"runtime": self.runtime} if self.runtime else {})}

    @classmethod
    def from_json(cls, data: Mapping) -> "Arm":
        return cls(str(data["version"]), float(data["weight"]), str(data["engine"]), str(data["url"]),
                   str(data["model"]), data.get("runtime"))


def parse_weight(text: str, what: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise InputError(f"{what}: the weight {text!r} is not a number >= 0", f"write {ARM_FORM}")
    return weight


def parse_arm(name: str, text: str, upstream: str) -> Arm:
    """'demo:v3=10' (on the Ollama `upstream`) or 'demo:v3=10@openai:http://host:8000#served-name' (any of
    RUNTIMES in place of openai)."""
    spec, at, where = text.partition("@")
    version, eq, weight_text = spec.partition("=")
    version = version.strip()
    if not eq:
        raise InputError(f"arm {text!r} has no weight", f"write {ARM_FORM}")
    arm_name, _number = parse_version_ref(version)
    if arm_name != name:
        raise InputError(f"arm {version} is not a version of {name}", f"name versions of {name}, e.g. {name}:v2=90")
    weight = parse_weight(weight_text.strip(), f"arm {text!r}")
    if not at:
        return Arm(version, weight, "ollama", upstream, version)
    runtime, colon, rest = where.partition(":")
    if runtime not in RUNTIMES or not colon:
        raise UnknownName("arm server", where, [f"{r}:URL..." for r in RUNTIMES], f"write {ARM_FORM}")
    if runtime == "ollama":
        return Arm(version, weight, "ollama", normalise_url(rest), version)
    url, hash_, model = rest.rpartition("#")
    if not hash_ or not url or not model:
        raise InputError(f"arm {text!r} lacks the served model's name", f"write {ARM_FORM}")
    return Arm(version, weight, RUNTIMES[runtime], normalise_url(url).removesuffix("/v1"), model,
               None if runtime == "openai" else runtime)


def parse_arms(name: str, texts: Iterable[str], upstream: str) -> list[Arm]:
    arms = [parse_arm(name, t, upstream) for t in texts]
    if not arms:
        raise InputError(f"no arms for {name}", f"give two or more --arm options: {ARM_FORM}")
    seen = set()
    for arm in arms:
        if arm.version in seen:
            raise InputError(f"arm {arm.version} is given twice", "give each version once")
        seen.add(arm.version)
    check_weights(arms)
    return arms


def check_weights(arms: Sequence[Arm]) -> None:
    total = sum(a.weight for a in arms)
    if not total > 0:
        raise InputError("the weights " + ", ".join(f"{a.version}={a.weight:g}" for a in arms) +
                         " do not sum to a positive number", "give at least one arm a weight above 0")


def with_weights(arms: Sequence[Arm], changes: Mapping[str, float]) -> list[Arm]:
    """`arms` with the weights in `changes` (version -> weight) applied; refuses an arm not in `arms`."""
    known = {a.version for a in arms}
    for version, weight in changes.items():
        if version not in known:
            raise UnknownName("arm", version, sorted(known), "`localserve ab report NAME` lists the arms")
        parse_weight(str(weight), f"arm {version}")
    new = [replace(a, weight=float(changes.get(a.version, a.weight))) for a in arms]
    check_weights(new)
    return new


def parse_weight_changes(texts: Iterable[str]) -> dict[str, float]:
    """['demo:v3=50'] -> {'demo:v3': 50.0}."""
    changes = {}
    for text in texts:
        version, eq, weight = text.partition("=")
        if not eq:
            raise InputError(f"{text!r} is not VERSION=WEIGHT", "write e.g. demo:v3=50")
        parse_version_ref(version.strip())
        changes[version.strip()] = parse_weight(weight.strip(), text)
    return changes


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        url = f"http://{url}"
    return url


def _uniform(experiment: str, user_key: str, version: str) -> float:
    digest = hashlib.sha256(f"{experiment}\0{user_key}\0{version}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0 ** 64  # in (0, 1), never 0


def assign(experiment: str, user_key: str, arms: Sequence[Arm]) -> Arm:
    """The arm of this user: the lowest -ln(u)/weight over the arms with a weight above 0."""
    best, best_score = None, math.inf
    for arm in arms:
        if arm.weight > 0:
            score = -math.log(_uniform(experiment, user_key, arm.version)) / arm.weight
            if score < best_score:
                best, best_score = arm, score
    if best is None:
        raise InputError(f"no arm of {experiment} has a weight above 0", "set one with `localserve ab set`")
    return best


def user_hash(experiment: str, user_key: str) -> str:
    """What the request log keeps of a user: a hash that groups their requests, not their key."""
    return hashlib.sha256(f"{experiment}\0user\0{user_key}".encode()).hexdigest()[:16]


def shares(arms: Sequence[Arm]) -> dict[str, float]:
    total = sum(a.weight for a in arms)
    return {a.version: a.weight / total for a in arms}
