"""Calibration samples: the fine-tune's own chat data, or the shipped CC0 corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..progress import step

DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 512


@dataclass(frozen=True)
class Calibration:
    samples: tuple[tuple[int, ...], ...]  # token ids, each at most seq_len long
    source: str
    sha256: str
    seq_len: int

    def to_json(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "samples": len(self.samples), "seq_len": self.seq_len,
                "tokens": sum(map(len, self.samples))}


def calibration_samples(model_dir: Path, data_jsonl: Path | None, samples: int = DEFAULT_SAMPLES,
                        seq_len: int = DEFAULT_SEQ_LEN) -> Calibration:
    """Up to `samples` token sequences of at most `seq_len` tokens, tokenized by the model's tokenizer.

    Chat JSONL is rendered through the model's own chat template, one conversation per sample, so
    the scales are fitted to what the fine-tune will be prompted with. Without it, the shipped
    corpus (the quality gate's) is cut into consecutive windows of `seq_len` tokens.
    """
    from transformers import AutoTokenizer

    from ..textdata import load_chat_jsonl, load_text

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if data_jsonl is not None:
        template = (tokenizer.chat_template, tokenizer.bos_token or "", tokenizer.eos_token or "")
        text = load_chat_jsonl(Path(data_jsonl), template)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:seq_len] for t in text.texts[:samples]]
    else:
        text = load_text(None)
        stream = tokenizer(text.texts[0], add_special_tokens=False)["input_ids"]
        ids = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)][:samples]
    ids = [s for s in ids if len(s) >= 8]
    if not ids:
        raise InputError(f"{text.source} gives no calibration sample of 8 tokens or more",
                         "pass --calibration with the fine-tune's chat JSONL")
    if len(ids) < samples:
        step(f"calibration: {text.source} gives {len(ids)} sample(s) of <= {seq_len} tokens, not {samples}")
    return Calibration(tuple(tuple(s) for s in ids), text.source, text.sha256, seq_len)
