"""transformers (+ peft): a Hugging Face model folder, with an adapter on top (unmerged) when given — the
fine-tune as trained."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..errors import InputError
from .chat import Answer, Closing, failed


class _FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.puts = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class TransformersTarget(Closing):
    """A Hugging Face model folder in transformers, with a peft adapter on top (unmerged) when given:
    the fine-tune as trained. The prompt is the model's own chat template (the adapter's when it
    carries one), the decoding greedy."""

    def __init__(self, label: str, model_dir: Path, seed: int, max_tokens: int, info: dict | None = None,
                 adapter: Path | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from ..models.resolve import BaseModel, check_base_weights

        self.label, self.seed, self.max_tokens = label, seed, max_tokens
        check_base_weights(BaseModel(model_dir, "path", None), allow_pickle=False)
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self._device == "cpu" else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            with tempfile.TemporaryDirectory(prefix="localserve-tokenizer-") as tmp:
                self._tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(adapter, model_dir, Path(tmp)),
                                                                trust_remote_code=False)
            generation_from = adapter if adapter is not None and (adapter / "generation_config.json").is_file() \
                else model_dir
            generation = (GenerationConfig.from_pretrained(generation_from)
                          if (generation_from / "generation_config.json").is_file() else model.generation_config)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: an adapter whose shapes do not fit
            raise InputError(f"target {label!r}: transformers cannot load {model_dir}"
                             f"{f' with {adapter}' if adapter else ''} ({' '.join(str(e).split())[:300]})",
                             "check that the folder is a complete Hugging Face model (and the adapter fits it)") \
                from None
        if not self._tokenizer.chat_template:
            raise InputError(f"target {label!r}: {model_dir} has no chat template",
                             "evaluate a chat (instruct) model, or add its chat_template.jinja")
        self._model = model.to(self._device).eval()
        eos = generation.eos_token_id if generation.eos_token_id is not None else self._tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = generation.pad_token_id if generation.pad_token_id is not None else self._tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), None)
        self.info = {"engine": "transformers+peft" if adapter is not None else "transformers",
                     "model": str(Path(model_dir).resolve()), **(info or {}), "device": self._device,
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}

    def answer(self, messages: list[dict], json_schema: dict | None = None) -> Answer:
        import torch

        start = time.perf_counter()
        if json_schema is not None:
            return failed(start, "transformers", "cannot constrain an answer to a JSON schema; evaluate the "
                                                  "served model (openai:URL#MODEL, ollama:NAME) or its GGUF")
        clock = _FirstTokenClock()
        try:
            prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = self._tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self._device)
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                # greedy: no sampling, no beams, and no repetition penalty a generation_config may set
                out = self._model.generate(**inputs, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                           max_new_tokens=self.max_tokens, eos_token_id=sorted(self._eos) or None,
                                           pad_token_id=self._pad, streamer=clock)
        except Exception as e:  # a template that refuses the messages, a too-long prompt, an out-of-memory
            return failed(start, "transformers", e)
        end = time.perf_counter()
        n_prompt = inputs["input_ids"].shape[1]
        new = out[0, n_prompt:].tolist()
        stopped = bool(new) and new[-1] in self._eos
        text = self._tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
        # the count leaves out the stop token, as llama.cpp's streamed pieces do
        return Answer(text, end - start, ttft_s=(clock.first or end) - start, prompt_tokens=n_prompt,
                      completion_tokens=len(new) - stopped, finish_reason="stop" if stopped else "length")

    def close(self) -> None:
        self._model = None


def _tokenizer_folder(adapter: Path | None, model_dir: Path, scratch: Path) -> Path:
    """The folder to load the tokenizer from: the model's, or, when the adapter saved tokenizer or
    chat-template files, a view where each of the adapter's files wins over the base's (as an export
    of the adapter gets them)."""
    from ..models.lora import tokenizer_files, tokenizer_sources

    own = tokenizer_files(adapter) if adapter is not None else None
    if own is None or not own.files:
        return model_dir
    for name, src in tokenizer_sources(own, model_dir).items():
        (scratch / name).symlink_to(src.resolve())
    if (model_dir / "config.json").is_file():  # AutoTokenizer reads the model type from it
        (scratch / "config.json").symlink_to((model_dir / "config.json").resolve())
    return scratch


