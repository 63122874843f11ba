"""Ollama's Modelfile grammar (docs/ollama.md#modelfile-grammar), as its CLI parses it (`parser/parser.go`).

Written by hand rather than with a parser library because the grammar is defined by a rune-by-rune
state machine with odd corners (no escapes; a quoted value ends at the first line end where the
trimmed text so far closes its quote; non-printable runes dropped) that a generic grammar would not
reproduce.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ..errors import InputError

log = logging.getLogger("localserve.modelfile")

COMMANDS = ("from", "adapter", "template", "system", "parameter", "message", "license",
            "renderer", "parser", "requires", "draft")
ROLES = ("system", "user", "assistant")

# PARAMETER names and types (`api/types.go: Options`/`Runner`); values parse with Go strconv.
INT_PARAMS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
                        "num_keep", "seed", "num_predict", "top_k", "repeat_last_n"})
FLOAT_PARAMS = frozenset({"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                          "frequency_penalty"})
BOOL_PARAMS = frozenset({"use_mmap"})
LIST_PARAMS = frozenset({"stop"})
# Accepted by the current CLI with a warning, then dropped.
DEPRECATED_PARAMS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
                               "mirostat", "mirostat_tau", "mirostat_eta"})
PARAM_TYPES: dict[str, type] = {**{n: int for n in INT_PARAMS}, **{n: float for n in FLOAT_PARAMS},
                                **{n: bool for n in BOOL_PARAMS}, **{n: list for n in LIST_PARAMS}}

_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
_GO_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\Z",
                       re.IGNORECASE)
_GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_SEMVER = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?\Z")


class ModelfileSyntaxError(InputError):
    """A Modelfile that Ollama's parser would reject; the message carries the line number."""


@dataclass(frozen=True)
class Command:
    name: str  # lowercased command
    args: str  # parameter name or message role ("" otherwise)
    value: str  # unquoted value
    line: int


def unquote(s: str) -> tuple[str, bool]:
    """Ollama's `unquote`: `\"\"\"…\"\"\"` or `"…"` or bare; False while a quote is still open."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _printable(ch: str) -> bool:
    # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space; this is
    # exactly Python's str.isprintable() set.
    return ch.isprintable()


def _error(line: int, msg: str, hint: str | None = None) -> ModelfileSyntaxError:
    return ModelfileSyntaxError(f"Modelfile line {line}: {msg}", hint)


def tokenize(text: str) -> list[Command]:
    """Split a Modelfile into commands, following the parser's states; raises with the line number."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[Command] = []
    i, n, line = 0, len(text), 1

    def skip_blanks(j: int) -> int:
        while j < n and text[j] in " \t":
            j += 1
        return j

    while i < n:
        i = skip_blanks(i)
        if i >= n:
            break
        ch = text[i]
        if ch in "\r\n":
            line += ch == "\n"
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start_line = line
        j = i
        while j < n and text[j].isascii() and text[j].isalpha():
            j += 1
        name = text[i:j].lower()
        if j == i or j >= n or text[j] not in " \t":
            shown = text[i:j] or text[i]
            raise _error(start_line, f"{shown!r} is not a command followed by a value; command must be one of "
                         + ", ".join(f'"{c}"' for c in COMMANDS),
                         "every line is `COMMAND value`; comments start the line with #")
        if name not in COMMANDS:
            raise _error(start_line, f"unknown command {text[i:j]!r}; command must be one of "
                         + ", ".join(f'"{c}"' for c in COMMANDS))
        i = skip_blanks(j)
        args = ""
        if name in ("parameter", "message"):
            j = i
            while j < n and text[j] not in " \t\n":
                j += 1
            args = text[i:j]
            if name == "parameter" and not re.fullmatch(r"[A-Za-z0-9_]+", args):
                raise _error(start_line, f"invalid parameter name {args!r}", "names are letters, digits and _")
            if name == "message":
                if not re.fullmatch(r"[A-Za-z]+", args) or args not in ROLES:
                    raise _error(start_line, f'message role must be one of "system", "user", or "assistant", '
                                 f"not {args!r}", "roles are lowercase")
            if j >= n or text[j] == "\n":
                raise _error(start_line, f"{name} {args} has no value")
            i = skip_blanks(j)
        # The value runs to the line end; while its trimmed text leaves a quote open, line ends join it.
        buf: list[str] = []
        while True:
            while i < n and text[i] != "\n":
                c = text[i]
                if c in " \t\r" or _printable(c):
                    buf.append(c)
                i += 1
            raw = "".join(buf).strip(" \t\r\n")
            value, complete = unquote(raw)
            if complete:
                break
            if i >= n:
                raise _error(start_line, f"unexpected EOF: the quoted {name.upper()} value opened here is never "
                             "closed", 'a value that starts with " must end with " on some line, and nothing may '
                             'follow the closing quote; there are no escape sequences')
            buf.append("\n")
            i += 1
            line += 1
        if not raw and name not in ("system", "template", "license"):
            raise _error(start_line, f"{name.upper()} has no value")
        commands.append(Command(name, args, value, start_line))
        if i < n:
            i += 1
            line += 1
    return commands


def parse_param_value(name: str, value: str, line: int | None = None) -> int | float | bool | str:
    """One PARAMETER value typed as Ollama's CLI types it (Go strconv), or a clear error."""
    where = f"Modelfile line {line}: " if line else ""
    kind = PARAM_TYPES.get(name)
    if kind is None:
        raise ModelfileSyntaxError(f"{where}unknown parameter {name!r}",
                                   "valid: " + ", ".join(sorted(PARAM_TYPES)))
    if kind is int:
        if not _GO_INT.match(value):
            raise ModelfileSyntaxError(f"{where}parameter {name} needs a base-10 integer, got {value!r}",
                                       "write e.g. 4096, not 4096.0")
        return int(value)
    if kind is float:
        if not _GO_FLOAT.match(value):
            raise ModelfileSyntaxError(f"{where}parameter {name} needs a number, got {value!r}")
        return float(value)
    if kind is bool:
        if value not in _GO_BOOL:
            raise ModelfileSyntaxError(f"{where}parameter {name} needs true or false, got {value!r}")
        return _GO_BOOL[value]
    return value


def check_requires(value: str, line: int) -> str:
    m = _SEMVER.match(value)
    if not m:
        raise _error(line, f"REQUIRES needs a semantic version like 0.14.0, got {value!r}")
    return ".".join(m.groups())
