"""llama.cpp's quant types, keyed by the name users type: the one registry export, quality and plan read.

    quant_type("q4_k_m")                 # QuantType("Q4_K_M", ftype=15, ggml_type="Q4_K", bits_per_weight=4.5, ...)
    canonical_quants(["q4_k_m", "Q8_0"])  # ("Q4_K_M", "Q8_0")
    gguf_file_bytes(1.7e9, "Q4_K_M")      # what a 1.7B-parameter model's Q4_K_M file takes, about

The names are read from the installed llama-cpp-python (its LLAMA_FTYPE_* constants), so the
registry is exactly what the linked llama.cpp can write, no more and no less. Bits per weight come
from gguf's GGML_QUANT_SIZES (block size, bytes per block), never from a hand-written table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from ..errors import InputError, UnknownName

DEFAULT_QUANT = "Q4_K_M"

# llama.cpp's quantize tool refuses these without an importance matrix: at so few bits the
# result is garbage unless the important weights are kept more precisely.
NEEDS_IMATRIX_PREFIXES = ("IQ1", "IQ2", "IQ3_XXS", "Q2_K_S")

# File types whose main tensor type is neither their name nor their name without _S/_M/_L: the
# type llama.cpp's quantizer (llama-quant.cpp) gives most tensors of such a file.
_MAIN_TYPE = {"IQ2_M": "IQ2_S", "IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S", "MXFP4_MOE": "MXFP4"}

# llama.cpp keeps 1-D tensors (norms, biases) in F32 whatever the quant.
ONE_D_TYPE = "F32"

# The quantizer stores a tensor whose rows do not divide into the chosen type's blocks in this
# type instead, and in F16 when that does not divide either (llama-quant.cpp).
_ROW_FALLBACK = {
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    **{t: "IQ4_NL" for t in ("Q2_K", "Q3_K", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                            "IQ1_S", "IQ1_M")},
}

# A quantized file is larger than its parameters x the main type's bits: llama.cpp keeps the 1-D
# tensors in F32, usually the output head at Q6_K or more, and the K mixes (_S/_M/_L) give
# attn_v/ffn_down a larger type. Half a bit per weight covers that for the usual models.
MIX_EXTRA_BITS = 0.5


@dataclass(frozen=True)
class QuantType:
    """One type `localserve export --quant` accepts, as llama.cpp names it."""

    name: str  # canonical spelling: "Q4_K_M"
    ftype: int  # llama.cpp's LLAMA_FTYPE value, what its quantizer takes
    ggml_type: str | None  # the tensor type most weights are stored in ("Q4_K"); None if gguf has none
    bits_per_weight: float | None  # of ggml_type, nominal (bytes per block x 8 / block size)
    needs_imatrix: bool

    @property
    def quantized(self) -> bool:
        """Fewer than 16 bits per weight (F32, F16 and BF16 are not)."""
        return self.bits_per_weight is not None and self.bits_per_weight < 16


@lru_cache(maxsize=1)
def registry() -> dict[str, QuantType]:
    """Every type the linked llama.cpp can write, by canonical name, in alphabetical order."""
    import llama_cpp

    ftypes = {}
    for attr in dir(llama_cpp):
        m = re.fullmatch(r"LLAMA_FTYPE_(?:MOSTLY_|ALL_)?([A-Z0-9_]+)", attr)
        if m and m.group(1) != "GUESSED":
            ftypes[m.group(1)] = int(getattr(llama_cpp, attr))
    out = {}
    for name, ftype in sorted(ftypes.items()):
        main = _main_type(name)
        out[name] = QuantType(name, ftype, main, _bits(main) if main else None, needs_imatrix(name))
    return out


@lru_cache(maxsize=1)
def _ggml_sizes() -> dict[str, tuple[int, int]]:
    """ggml type name -> (elements per block, bytes per block), as gguf knows them."""
    import gguf

    return {t.name: size for t, size in gguf.GGML_QUANT_SIZES.items()}


def _main_type(name: str) -> str | None:
    sizes = _ggml_sizes()
    for candidate in (name, re.sub(r"_(S|M|L)$", "", name), _MAIN_TYPE.get(name)):
        if candidate in sizes:
            return candidate
    return None


def _bits(ggml_type: str) -> float:
    block, type_size = _ggml_sizes()[ggml_type]
    return type_size * 8 / block


def quant_types() -> tuple[str, ...]:
    """Every type name the linked llama.cpp can write, in canonical spelling (e.g. 'Q4_K_M')."""
    return tuple(registry())


@lru_cache(maxsize=1)
def _by_upper_name() -> dict[str, QuantType]:
    return {n.upper(): t for n, t in registry().items()}


def is_quant_type(name: str) -> bool:
    """Whether `name` (any case) is a llama.cpp type name."""
    return str(name).strip().upper() in _by_upper_name()


def quant_type(name: str) -> QuantType:
    """The type `name` (any case) stands for; UnknownName lists the valid ones."""
    found = _by_upper_name().get(str(name).strip().upper())
    if found is None:
        raise UnknownName("quant type", name, quant_types(),
                          hint="pass one or more of these, comma-separated (case does not matter)")
    return found


def quant_of_file_type(ftype: int) -> str | None:
    """The type name of a GGUF's `general.file_type`; None when llama.cpp has no such type."""
    return next((t.name for t in registry().values() if t.ftype == int(ftype)), None)


def needs_imatrix(qtype: str) -> bool:
    return qtype.startswith("IQ") or qtype.startswith(NEEDS_IMATRIX_PREFIXES)


def canonical_quants(names, have_imatrix: bool = False) -> tuple[str, ...]:
    """Case-insensitive names -> canonical, de-duplicated, in the order given.

    'auto' passes through (the quality gate resolves it).
    """
    out: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        if name.lower() == "auto":
            canon = "auto"
        else:
            qt = quant_type(name)
            canon = qt.name
            if qt.needs_imatrix and not have_imatrix:
                raise InputError(f"{canon} needs an importance matrix",
                                 "pass --imatrix-data FILE (text in your model's domain), or choose a K-quant such as Q4_K_M")
        if canon not in out:
            out.append(canon)
    if not out:
        raise InputError("no quant type given", f"pass --quant {DEFAULT_QUANT} (or several: {DEFAULT_QUANT},Q8_0)")
    return tuple(out)


# ------------------------------------------------------------------------------------------- sizes

def bytes_for(n_elements: int, ggml_type: str) -> int:
    """Bytes that `n_elements` weights take in a ggml type (rounded up to whole blocks)."""
    block, type_size = _ggml_sizes()[ggml_type]
    return -(-n_elements // block) * type_size


def storage_type(ggml_type: str, row: int) -> str:
    """The type llama.cpp actually writes for a tensor with rows of `row` elements."""
    sizes = _ggml_sizes()
    if row % sizes[ggml_type][0] == 0:
        return ggml_type
    fallback = _ROW_FALLBACK.get(ggml_type, "F16")
    return fallback if row % sizes[fallback][0] == 0 else "F16"


def stored_type(quant: str, row: int, one_d: bool) -> str:
    """The ggml type a tensor is written in by `llama-quantize` to `quant`, before the mixes' choices:
    F32 for 1-D tensors, else the quant's main type or its fallback for rows of `row` elements."""
    if one_d:
        return ONE_D_TYPE
    main = quant_type(quant).ggml_type
    if main is None:
        raise InputError(f"gguf does not know the tensor type of {quant}", "upgrade the gguf package")
    return storage_type(main, row)


def gguf_file_bytes(n_params: float, quant: str) -> int:
    """About the bytes a GGUF of `n_params` weights takes as `quant` (any case): the main type's bits
    per weight, plus MIX_EXTRA_BITS for a quantized type (16 bits when gguf does not know the type)."""
    qt = quant_type(quant)
    bits = qt.bits_per_weight if qt.bits_per_weight is not None else 16.0
    if qt.quantized:
        bits += MIX_EXTRA_BITS
    return math.ceil(n_params * bits / 8)
