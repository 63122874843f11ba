"""The model's own chat template, as Hugging Face renders it.

A model folder gives its template in `chat_template.jinja` or `tokenizer_config.json`
(`chat_template`, a string or a list of named templates). When the folder holds a full tokenizer
(tokenizer.json, tokenizer.model or vocab.json), rendering goes through the real
`AutoTokenizer.apply_chat_template`, and prompts can be tokenized. Otherwise (a folder with only
the template and token strings, like the published templates kept in tests/data) rendering uses
transformers' own `render_jinja_template`, the function `apply_chat_template` calls, with the
special-token strings from tokenizer_config.json.

A folder without a template of its own (a pretrained base) is read with `require_template=False`;
`HFChat.with_template` then gives it the template a chat family supplies.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}", "repair or re-download that file") from e


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class HFChat:
    """A model folder's chat template plus the token facts stops are built from."""

    model_dir: Path
    template: str | None  # None: the folder has none (load_hf_chat(..., require_template=False))
    special: Mapping[str, str]
    id_to_token: Mapping[int, str]
    generation_eos_ids: tuple[int, ...]
    max_position_embeddings: int | None
    has_tokenizer: bool
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def bos_token(self) -> str | None:
        return self.special.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    def with_template(self, template: str) -> "HFChat":
        """The same folder rendered with `template` (a chosen family's) instead of its own."""
        return dataclasses.replace(self, template=template, _cache=self._cache)  # the tokenizer is shared

    def missing_tokens(self, tokens) -> tuple[str, ...] | None:
        """Those of `tokens` that are not one token of this vocabulary (the tokenizer would split
        them into pieces); None when the folder has no tokenizer to say."""
        tok = self.tokenizer()
        if tok is None:
            return None
        missing = []
        for text in tokens:
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tok.unk_token_id:
                missing.append(text)
        return tuple(missing)

    def tokenizer(self):
        """The real transformers tokenizer (only when the folder has one), loaded once."""
        if not self.has_tokenizer:
            return None
        if "tok" not in self._cache:
            from transformers import AutoTokenizer

            self._cache["tok"] = AutoTokenizer.from_pretrained(str(self.model_dir), trust_remote_code=False)
        return self._cache["tok"]

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, context: Mapping[str, Any] | None = None) -> str:
        """What `apply_chat_template(messages, tools=tools, add_generation_prompt=True)` returns
        (`context`: more variables for the template, as apply_chat_template's keyword arguments).

        Raises jinja2's TemplateError when the template itself refuses the conversation
        (e.g. Gemma 2 raising on a system message).
        """
        msgs = [dict(m) for m in messages]
        tools_list = [dict(t) for t in tools] if tools else None
        tok = self.tokenizer()
        if tok is not None:
            return tok.apply_chat_template(msgs, tools=tools_list, tokenize=False,
                                           add_generation_prompt=add_generation_prompt,
                                           chat_template=self.template, **(context or {}))
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[msgs], tools=tools_list, chat_template=self.template,
                                            add_generation_prompt=add_generation_prompt,
                                            **{**self.special, **(context or {})})
        return rendered[0]

    def decode_id(self, token_id: int) -> str | None:
        if token_id in self.id_to_token:
            return self.id_to_token[token_id]
        tok = self.tokenizer()
        if tok is not None:
            text = tok.convert_ids_to_tokens(token_id)
            return text if isinstance(text, str) else None
        return None


def _template_from(model_dir: Path, tokenizer_config: dict) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    tpl = tokenizer_config.get("chat_template")
    if isinstance(tpl, list):  # named templates: the "default" one is what apply_chat_template uses
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default")
    return tpl if isinstance(tpl, str) and tpl.strip() else None


NO_TEMPLATE = "has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)"


def load_hf_chat(model_dir: Path, require_template: bool = True) -> HFChat:
    """Read a model folder's chat template and token facts; InputError when it has no template,
    unless `require_template` is False (then `template` is None)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"model folder {model_dir} does not exist", "pass a Hugging Face model or adapter folder")
    # Cached per folder and file state: detection, parity and export read the same folder repeatedly.
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(model_dir.iterdir())
                  if p.is_file() and p.suffix in (".json", ".jinja", ".model"))
    hf = _load_hf_chat(model_dir.resolve(), stamp)
    if hf.template is None and require_template:
        raise InputError(f"{hf.model_dir} {NO_TEMPLATE}",
                         "add the chat template the model was trained with, as chat_template.jinja")
    return hf


@functools.lru_cache(maxsize=32)
def _load_hf_chat(model_dir: Path, stamp: tuple) -> HFChat:
    tc = _read_json(model_dir / "tokenizer_config.json")
    template = _template_from(model_dir, tc)
    special = {k: t for k in SPECIAL_KEYS if (t := _token_text(tc.get(k)))}
    id_to_token: dict[int, str] = {}
    for key, entry in (tc.get("added_tokens_decoder") or {}).items():
        text = _token_text(entry)
        if text is not None and str(key).isdigit():
            id_to_token[int(key)] = text
    gen = _read_json(model_dir / "generation_config.json")
    eos = gen.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    config = _read_json(model_dir / "config.json")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    max_pos = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    has_tok = any((model_dir / f).is_file() for f in TOKENIZER_FILES)
    return HFChat(model_dir, template, special, id_to_token, eos_ids,
                  int(max_pos) if isinstance(max_pos, int) else None, has_tok)
