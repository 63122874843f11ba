"""What planning needs to know about a model: its architecture and its weight bytes per quant.

Three inputs are understood:
- a GGUF file: hyperparameters from its KV metadata (`<arch>.block_count`, ...), weight bytes
  exact from its tensor table (each tensor's elements x its ggml type's bytes per block);
- a Hugging Face folder (config.json): hyperparameters from the config, parameter counts from the
  config's shapes, weight bytes = parameters x the chosen quant's bits per weight;
- an export folder (localserve.json + GGUFs): every GGUF artifact it lists, exactly.

What a quant type is and how many bytes a tensor takes in it is llama.cpp's, read from the one
registry (localserve.llamacpp.quant_types).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from ..errors import InputError, UnknownName
from ..lineage import read_record, record_path
from ..llamacpp.quant_types import DEFAULT_QUANT, bytes_for, quant_of_file_type, quant_type, registry, stored_type
from ..llamacpp.quant_types import storage_type  # noqa: F401 (tests read the row fallback from here)


@dataclass(frozen=True)
class ModelShape:
    """Architecture hyperparameters, as read from GGUF metadata or an HF config."""

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    key_length: int  # per-head dimension of K
    value_length: int  # per-head dimension of V
    embedding_length: int
    vocab_size: int
    context_length: int | None
    source: str  # the file the figures were read from


@dataclass(frozen=True)
class Weights:
    """Weight bytes of one quant: per transformer layer, and the rest (embeddings, output head)."""

    quant: str
    layer_bytes: tuple[int, ...]
    other_bytes: int
    exact: bool  # True: summed from a GGUF's tensor table; False: parameters x bits per weight
    how: str  # one line saying how the number was obtained
    n_params: int = 0
    file: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes) + self.other_bytes


class TensorCount(NamedTuple):
    """One weight tensor, as much as pricing it at another quant needs."""

    n: int  # elements
    one_d: bool  # norms and biases: kept in F32 by llama.cpp
    layer: int  # transformer block index, -1 for embeddings / output head / final norm
    row: int  # elements per row (ggml ne[0]); quant blocks must divide it


@dataclass(frozen=True)
class PlannedModel:
    shape: ModelShape
    weights: tuple[Weights, ...]
    tensors: tuple[TensorCount, ...] = field(default=(), repr=False)


def _ggml():
    import gguf

    return gguf


def canonical_quant(name: str) -> str:
    """`name` (any case) in canonical spelling, if plan can price it (gguf knows its tensor type)."""
    plannable = [n for n, t in registry().items() if t.ggml_type is not None]
    canon = {n.upper(): n for n in plannable}.get(name.strip().upper())
    if canon is None:
        raise UnknownName("quant type", name, plannable, hint="pass --quant with one of these, comma-separated")
    return canon


def _estimate(quant: str, tensors, how: str) -> Weights:
    """Weight bytes of `quant` from tensor element counts: each tensor in the type llama.cpp stores it
    in before a mix's upgrades, so a lower bound for the K-quant mixes."""
    qt = quant_type(quant)
    base = qt.ggml_type
    layers: dict[int, int] = {}
    other = 0
    n_params = 0
    fell_back: dict[str, int] = {}
    for t in tensors:
        n_params += t.n
        kind = stored_type(quant, t.row, t.one_d)
        if kind != base and not t.one_d:
            fell_back[kind] = fell_back.get(kind, 0) + 1
        b = bytes_for(t.n, kind)
        if t.layer >= 0:
            layers[t.layer] = layers.get(t.layer, 0) + b
        else:
            other += b
    notes = [f"{count} tensors whose rows do not divide into {base} blocks stored as {kind}, as llama.cpp does"
             for kind, count in fell_back.items()]
    if base != quant:
        notes.append("a K-quant mix keeps some tensors at a higher type, so the real file is larger")
    return Weights(quant=quant, layer_bytes=tuple(layers[i] for i in sorted(layers)), other_bytes=other,
                   exact=False, n_params=n_params,
                   how=f"{how}: {n_params:,} parameters x {qt.bits_per_weight:.3g} bits ({base}), 1-D tensors F32"
                       + "".join(f"; {n}" for n in notes))


# ------------------------------------------------------------------------------------------- GGUF

def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_gguf(path: Path) -> tuple[ModelShape, Weights, tuple[TensorCount, ...]]:
    """Shape and exact weight bytes of a GGUF file (header and tensor table only; data is mmapped)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", "pass an existing .gguf file") from None
    return _read_gguf(str(path.resolve()), st.st_size, st.st_mtime_ns, path.name)


# GGUFReader walks every metadata array (a 50k-entry vocabulary takes seconds), so a file is read
# once per process; the key includes size and mtime so a rewritten file is read again.
@lru_cache(maxsize=16)
def _read_gguf(resolved: str, _size: int, _mtime_ns: int, shown_name: str):
    path = Path(resolved)
    gguf = _ggml()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise InputError(f"{path} is not a readable GGUF file: {e}", "pass a .gguf written by llama.cpp") from None
    arch = _field(reader, "general.architecture")
    if not arch:
        raise InputError(f"{path} has no general.architecture", "pass a GGUF written by llama.cpp's converter")

    def kv(key: str, default=None, required=True):
        value = _field(reader, f"{arch}.{key}", default)
        if value is None and required:
            raise InputError(f"{path} lacks {arch}.{key}", "planning needs the architecture hyperparameters")
        # per-layer arrays (e.g. head_count_kv of hybrid models): plan with the largest
        return max(value) if isinstance(value, list) else value

    n_heads = int(kv("attention.head_count"))
    n_embd = int(kv("embedding_length"))
    key_length = int(kv("attention.key_length", n_embd // n_heads))
    tokens = _field(reader, "tokenizer.ggml.tokens") if "tokenizer.ggml.tokens" in reader.fields else None
    vocab = kv("vocab_size", None, required=False) or (len(tokens) if tokens else 0)
    shape = ModelShape(
        name=str(_field(reader, "general.name") or path.stem), architecture=str(arch),
        n_layers=int(kv("block_count")), n_heads=n_heads,
        n_kv_heads=int(kv("attention.head_count_kv", n_heads)),
        key_length=key_length, value_length=int(kv("attention.value_length", key_length)),
        embedding_length=n_embd, vocab_size=int(vocab),
        context_length=kv("context_length", None, required=False), source=str(path))

    layers: dict[int, int] = {}
    other = 0
    elements = []
    for t in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        layer = int(m.group(1)) if m else -1
        if layer >= 0:
            layers[layer] = layers.get(layer, 0) + int(t.n_bytes)
        else:
            other += int(t.n_bytes)
        elements.append(TensorCount(int(t.n_elements), len(t.shape) == 1, layer, int(t.shape[0])))
    file_type = _field(reader, "general.file_type")
    quant = "?" if file_type is None else quant_of_file_type(file_type) or f"file_type {file_type}"
    weights = Weights(quant=quant, layer_bytes=tuple(layers[i] for i in sorted(layers)), other_bytes=other,
                      exact=True, n_params=sum(e[0] for e in elements), file=shown_name,
                      how=f"exact: sum of the {len(reader.tensors)} tensors' data sizes in {shown_name}")
    return shape, weights, tuple(elements)


# ---------------------------------------------------------------------------------------- HF config

def _hf_shape(config_path: Path) -> tuple[ModelShape, tuple[TensorCount, ...]]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {config_path}: {e}", "pass a Hugging Face model folder with a config.json") from None
    return hf_config_shape(config, config_path.parent.name, str(config_path))


def hf_config_shape(config: dict, name: str = "model", source: str = "config") -> tuple[ModelShape, tuple[TensorCount, ...]]:
    """Shape and (elements, is 1-D, layer) per tensor of a llama-style decoder, from an HF config dict."""
    text = config.get("text_config") or config  # multimodal configs nest the language model
    try:
        hidden = int(text["hidden_size"])
        n_layers = int(text["num_hidden_layers"])
        n_heads = int(text["num_attention_heads"])
        inter = int(text["intermediate_size"])
        vocab = int(text["vocab_size"])
    except KeyError as e:
        raise InputError(f"{source} lacks {e.args[0]}",
                         "planning from a config needs hidden_size, num_hidden_layers, num_attention_heads, "
                         "intermediate_size, vocab_size; convert to GGUF and plan the .gguf instead") from None
    n_kv = int(text.get("num_key_value_heads") or n_heads)
    head_dim = int(text.get("head_dim") or hidden // n_heads)
    experts = int(text.get("num_local_experts") or text.get("num_experts") or 1)
    shape = ModelShape(name=name, architecture=str((config.get("architectures") or ["?"])[0]),
                       n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, key_length=head_dim,
                       value_length=head_dim, embedding_length=hidden, vocab_size=vocab,
                       context_length=text.get("max_position_embeddings"), source=source)
    # A llama-style decoder block: q, k, v, o projections, a gated MLP (x experts), two norms.
    bias = bool(text.get("attention_bias", False))
    # (elements, is 1-D, row length = input features)
    per_layer = [
        (hidden * n_heads * head_dim, False, hidden), (hidden * n_kv * head_dim, False, hidden),
        (hidden * n_kv * head_dim, False, hidden), (n_heads * head_dim * hidden, False, n_heads * head_dim),
        (2 * hidden * inter * experts, False, hidden), (inter * hidden * experts, False, inter),
        (hidden, True, hidden), (hidden, True, hidden),
    ]
    if experts > 1:
        per_layer.append((hidden * experts, False, hidden))
    if bias:
        per_layer += [(n_heads * head_dim, True, n_heads * head_dim), (n_kv * head_dim, True, n_kv * head_dim),
                      (n_kv * head_dim, True, n_kv * head_dim)]
    tensors = [TensorCount(n, one_d, layer, row) for layer in range(n_layers) for n, one_d, row in per_layer]
    tensors.append(TensorCount(vocab * hidden, False, -1, hidden))  # token embeddings
    tensors.append(TensorCount(hidden, True, -1, hidden))  # final norm
    if not text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)):
        tensors.append(TensorCount(vocab * hidden, False, -1, hidden))  # output head
    return shape, tuple(tensors)


# -------------------------------------------------------------------------------------------- entry

def load_model(path: str | Path, quants: tuple[str, ...] = ()) -> PlannedModel:
    """A GGUF, an HF folder or an export folder, with weights for each quant asked for.

    For a GGUF (or an export folder) the file's own quant is exact; other quants asked for are
    estimated from its tensors' element counts.
    """
    path = Path(path)
    quants = tuple(canonical_quant(q) for q in quants)
    if path.is_file() and path.suffix.lower() == ".gguf":
        shape, exact, tensors = read_gguf(path)
        weights = [exact] + [_estimate(q, tensors, f"estimated from {path.name}")
                             for q in quants if q != exact.quant]
        return PlannedModel(shape, tuple(weights), tensors)
    if path.is_dir() and record_path(path).is_file():
        record = read_record(path)
        files = [path / a.file for a in record.artifacts if a.file.endswith(".gguf") and (path / a.file).is_file()]
        if files:
            results = [read_gguf(f) for f in files]
            shape, _, tensors = results[0]
            have = {w.quant for _, w, _ in results}
            weights = [w for _, w, _ in results] + [_estimate(q, tensors, f"estimated from {files[0].name}")
                                                    for q in quants if q not in have]
            return PlannedModel(shape, tuple(weights), tensors)
    if path.is_dir() and (path / "config.json").is_file():
        shape, tensors = _hf_shape(path / "config.json")
        weights = [_estimate(q, tensors, "from config.json") for q in (quants or (DEFAULT_QUANT,))]
        return PlannedModel(shape, tuple(weights), tensors)
    if path.is_file() and path.name == "config.json":
        return load_model(path.parent, quants)
    raise InputError(f"{path} is neither a .gguf file, an export folder nor a Hugging Face model folder",
                     "pass a .gguf, a folder written by `localserve export`, or a folder with config.json")
