"""What every runtime's chat target is: `answer(messages)` -> Answer, timed, bounded, closed after use.

    with open_target("llama-server:http://127.0.0.1:8080") as target:     # localserve.lifecycle.targets
        target.answer([{"role": "user", "content": "What is the codename?"}])

An engine failing on one case gives an `Answer` with its `error`; a target that cannot be opened at all raises a
LocalserveError (TargetUnreachable when its server does not answer).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..errors import InputError


@dataclass(frozen=True)
class Answer:
    """One target's reply to one case."""

    text: str
    latency_s: float  # request to last token
    ttft_s: float | None = None  # request to first token, where the engine streams
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop", "length", ...
    error: str | None = None  # the engine failed on this case (the text is then empty)

    def to_json(self) -> dict:
        return asdict(self)


class TargetUnreachable(InputError):
    """The server a target names does not answer."""

    exit_code = 3


class Target(Protocol):
    label: str  # the spec as the user typed it
    info: dict[str, Any]  # what it resolved to: engine, file or model, sha256 or digest where known

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Target": ...

    def __exit__(self, *exc) -> None: ...


class Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


def failed(start: float, engine: str, error: BaseException | str) -> Answer:
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return Answer("", time.perf_counter() - start, error=f"{engine}: {' '.join(text.split())}")


