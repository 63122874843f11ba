"""Ollama model names (docs/ollama.md#names): `[host/][namespace/]model[:tag]`, validated the way Ollama does.

A name maps to one manifest file, `manifests/<host>/<namespace>/<model>/<tag>`; listing globs exactly
four levels below `manifests/`, so every part must be present and valid or the model is invisible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import InputError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")

RULES = ("each part starts with a letter, digit or '_' and continues with letters, digits, '_', '.' "
         "or '-' (1-80 characters); the namespace may not contain '.'; e.g. demo, demo:v2, me/demo:q4_k_m")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """Ollama's `DisplayShortest`: the default host and `library` namespace dropped, tag kept."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def manifest_relpath(self) -> PurePosixPath:
        return PurePosixPath("manifests", self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, ...]:
        """Ollama looks names up case-insensitively."""
        return tuple(p.lower() for p in (self.host, self.namespace, self.model, self.tag))

    def with_tag(self, tag: str) -> "ModelName":
        return parse_name(f"{self.host}/{self.namespace}/{self.model}:{tag}")

    def __str__(self) -> str:
        return self.display


def _invalid(name: str, why: str) -> InputError:
    return InputError(f"invalid Ollama model name {name!r}: {why}", f"Ollama's rules: {RULES}")


def parse_name(name: str) -> ModelName:
    """Parse and validate a model name; missing parts get Ollama's defaults."""
    raw = name
    if not name or name != name.strip():
        raise _invalid(raw, "empty or surrounded by spaces")
    if "@" in name:
        raise _invalid(raw, "digests (@sha256:...) are not accepted here; name the model by tag")
    # the tag is after the last ':' that follows the last '/' (a ':' before it is a host port)
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = DEFAULT_TAG
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    parts = name.split("/")
    if len(parts) > 3:
        raise _invalid(raw, "too many '/' (at most host/namespace/model)")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    for label, value, limit in (("model", model, 80), ("tag", tag, 80), ("namespace", namespace, 80)):
        if not value or len(value) > limit or not _PART.match(value):
            raise _invalid(raw, f"bad {label} {value!r}")
    if "." in namespace:
        raise _invalid(raw, f"the namespace {namespace!r} may not contain '.'")
    if not host or len(host) > 350 or not _HOST.match(host):
        raise _invalid(raw, f"bad host {host!r}")
    low = tag.lower()
    if low in ("cloud", "local") or low.endswith("-cloud"):
        # at HEAD these tags route to the cloud proxy or are stripped (internal/modelref)
        raise _invalid(raw, f"the tag {tag!r} is reserved by Ollama for cloud models")
    return ModelName(host, namespace, model, tag)
