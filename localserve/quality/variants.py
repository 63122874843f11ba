"""Each quant again with an importance matrix, so the table shows it with and without one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..lineage import find_record, record_path
from ..llamacpp import evaluate
from ..progress import step

# Types an importance matrix cannot change: nothing is rounded to fewer bits in them.
UNQUANTIZED = ("F32", "F16", "BF16")


def with_imatrix(ggufs: Sequence[Path], reference: Path, imatrix_data: Path, out_dir: Path) -> list[Path]:
    """Quantize each GGUF's type again, with an importance matrix computed over `imatrix_data`.

    `reference` is the F16 GGUF to quantize from, or the HF folder (converted to a temporary F16).

    Writes `out_dir/imatrix.gguf` (IMATRIX_FILE, the name export uses too) and
    `out_dir/<stem>-imatrix.gguf` per quantized input (kept, so
    they can be served or recorded); returns the new files. Inputs that are unquantized or were
    already made with an imatrix are skipped.
    """
    reference = Path(reference)
    if reference.is_dir():
        from ..llamacpp.convert import convert_hf_to_gguf

        with tempfile.TemporaryDirectory(prefix="localserve-f16-", dir=out_dir) as tmp:
            step(f"converting {reference} to a temporary F16 GGUF to quantize from")
            f16 = convert_hf_to_gguf(reference, Path(tmp) / "reference-F16.gguf", outtype="f16")
            return _with_imatrix(ggufs, f16, imatrix_data, out_dir)
    return _with_imatrix(ggufs, reference, imatrix_data, out_dir)


def _with_imatrix(ggufs: Sequence[Path], f16_gguf: Path, imatrix_data: Path, out_dir: Path) -> list[Path]:
    from ..llamacpp.imatrix import IMATRIX_FILE, compute_imatrix
    from ..llamacpp.quant_types import quant_types
    from ..llamacpp.quantize import quantize

    f16 = evaluate.gguf_info(f16_gguf)
    if f16.quant not in UNQUANTIZED:
        raise InputError(f"{f16_gguf} is {f16.quant}, not a 16/32-bit GGUF to quantize from",
                         "pass the F16 GGUF (or the HF folder) as --reference")
    todo = []
    for g in ggufs:
        info = evaluate.gguf_info(Path(g))
        if info.quant in UNQUANTIZED or info.imatrix is not None:
            continue
        if info.quant not in quant_types():
            raise InputError(f"{g} is of type {info.quant}, which the linked llama.cpp cannot write",
                             "leave it out of --imatrix-data runs")
        todo.append(info)
    if not todo:
        raise InputError("none of the GGUFs is a quant that an importance matrix could change",
                         "pass quantized files (Q4_K_M, Q2_K, ...) along with --imatrix-data")
    out_dir = Path(out_dir)
    _refuse_an_exports_imatrix(out_dir / IMATRIX_FILE)
    imatrix = compute_imatrix(f16_gguf, imatrix_data, out_dir / IMATRIX_FILE)
    made = []
    for info in todo:
        dst = out_dir / f"{info.path.stem}-imatrix.gguf"
        step(f"quantizing {info.quant} with the importance matrix into {dst}")
        made.append(quantize(f16_gguf, dst, info.quant, imatrix))
    return made


def _refuse_an_exports_imatrix(path: Path) -> None:
    """An export folder's imatrix.gguf is recorded (sha256) in its localserve.json: never replace it."""
    found = find_record(path) if path.exists() else None
    if found is None:
        return
    folder, record = found
    if record.imatrix is not None and record.imatrix.file == path.name:
        raise InputError(f"{path} is the importance matrix {record_path(folder)} records; --imatrix-data would replace it",
                         "copy the GGUFs to another folder to measure them with a new importance matrix")
