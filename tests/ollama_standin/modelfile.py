"""The pre-0.5.5 server-side Modelfile parse, for the stand-in's legacy create (docs/ollama.md#modelfile-grammar).

Independent of localserve's own Modelfile code on purpose: the stand-in checks localserve, so it
must not share its mistakes.
"""

from __future__ import annotations

COMMANDS_LEGACY = ("from", "license", "template", "system", "adapter", "parameter", "message")

INT = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
       "top_k", "repeat_last_n", "mirostat"}
FLOAT = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
         "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z"}
BOOL = {"use_mmap", "use_mlock", "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "numa"}


class ModelfileError(ValueError):
    pass


def _unquote(value: str) -> tuple[str, bool]:
    """(value, complete): a value opened with \"\"\" or \" is complete once it ends with the same."""
    if value.startswith('"""'):
        if len(value) >= 6 and value.endswith('"""'):
            return value[3:-3], True
        return value, False
    if value.startswith('"'):
        if len(value) >= 2 and value.endswith('"'):
            return value[1:-1], True
        return value, False
    return value, True


def parse(text: str) -> list[tuple[str, str]]:
    """[(command, value)] with Ollama's rules: case-insensitive commands, no trailing comments,
    quoted values may span lines, no escapes. Raises ModelfileError."""
    text = text.lstrip("\ufeff")
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].lstrip(" \t")
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        head, sep, rest = line.replace("\t", " ").partition(" ")
        if not sep or not head.isalpha():
            raise ModelfileError(f"command must be one of {', '.join(repr(c) for c in COMMANDS_LEGACY)}")
        cmd = head.lower()
        if cmd not in COMMANDS_LEGACY:
            raise ModelfileError(f"command must be one of {', '.join(repr(c) for c in COMMANDS_LEGACY)}")
        value = rest.strip(" \t")
        value_full, complete = _unquote(value)
        while not complete:
            if i >= len(lines):
                raise ModelfileError("unexpected EOF")
            value = value + "\n" + lines[i]
            i += 1
            value_full, complete = _unquote(value.rstrip(" \t"))
        if cmd == "message":
            role, _, content = value_full.partition(" ")
            if role not in ("system", "user", "assistant"):
                raise ModelfileError("role must be one of \"system\", \"user\", or \"assistant\"")
            content, _ = _unquote(content.strip())
            out.append(("message", role + "\x00" + content))
            continue
        if cmd == "parameter":
            name, _, pval = value_full.partition(" ")
            pval, _ = _unquote(pval.strip())
            out.append(("parameter", name + "\x00" + pval))
            continue
        out.append((cmd, value_full))
    if not any(c == "from" for c, _ in out):
        raise ModelfileError("no FROM line")
    return out


def typed_param(name: str, value: str):
    """api.FormatParams: Go strconv on each value; unknown names are errors."""
    try:
        if name in INT:
            return int(value, 10)
        if name in FLOAT:
            return float(value)
        if name in BOOL:
            if value.lower() not in ("true", "false", "1", "0", "t", "f"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "t")
    except ValueError:
        raise ModelfileError(f"invalid value for parameter {name!r}: {value!r}") from None
    if name == "stop":
        return value
    raise ModelfileError(f"unknown parameter '{name}'")
