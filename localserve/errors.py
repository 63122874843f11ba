"""One error hierarchy for the whole library.

Library code raises these and never prints or exits; `localserve.cli.main` maps them to one line
of text and an exit code. Every message names the thing, the place and the next step.
"""

from __future__ import annotations


class LocalserveError(Exception):
    """Base of every error a user can cause or fix. `hint` is the next step to take."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class InputError(LocalserveError):
    """Bad input the user gave: a path, an option value, a file's content."""

    exit_code = 2


class AdapterError(InputError):
    """The adapter folder is missing, malformed, or does not fit its base."""


class BaseModelNotFound(InputError):
    """The base model named by the adapter could not be found locally."""


class UnsafeWeights(InputError):
    """Weights that can only be loaded by unpickling, refused unless --allow-pickle."""


class UnknownName(InputError):
    """A name typed by the user that is not in a registry (quant type, family, method)."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], hint: str | None = None):
        listed = ", ".join(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {listed}", hint)
        self.name = name
        self.valid = tuple(valid)


class UnsupportedArchitecture(InputError):
    """llama.cpp's converter does not know the model's architecture."""


class DiskSpaceError(LocalserveError):
    """Not enough free disk for the files a run plans to write."""


class ToolError(LocalserveError):
    """An external tool (llama.cpp converter/quantizer, Go, Ollama) failed.

    The message names the tool and the command; `stderr_tail` holds its last lines.
    """

    def __init__(self, tool: str, message: str, stderr_tail: str = "", hint: str | None = None):
        tail = f"\n{stderr_tail.rstrip()}" if stderr_tail.strip() else ""
        super().__init__(f"{tool}: {message}{tail}", hint)
        self.tool = tool
        self.stderr_tail = stderr_tail


class SetupError(LocalserveError):
    """A required component is not installed (the converter, Go, an optional extra)."""


class QualityBoundNotMet(LocalserveError):
    """No measured quant (or not the requested one) meets --max-kl / --max-size; the message shows the table."""


class SmokeTestFailed(LocalserveError):
    """The exported model produced nothing, or never stopped, in llama.cpp."""


class TemplateMismatch(LocalserveError):
    """The Ollama TEMPLATE does not render what the model's own chat template renders."""


class OllamaError(LocalserveError):
    """Ollama answered with an error, or cannot be reached."""


class OllamaUnreachable(OllamaError):
    exit_code = 3


class ChecksumMismatch(LocalserveError):
    """A file's content does not match its recorded sha256."""


class UnsafeArchive(InputError):
    """An archive member with an absolute path, `..`, a link or a device."""


class VllmError(LocalserveError):
    """A running vLLM server answered with an error."""


class VllmUnreachable(VllmError):
    exit_code = 3


class RuntimeLoraDisabled(VllmError):
    """The vLLM server runs without VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: no load/unload routes."""


class AdapterRefused(VllmError):
    """vLLM refused a LoRA adapter (incompatible with its base or limits, unknown name, already loaded)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C (temporary files removed, children stopped), exit 143.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""
