"""The measured table: one row per quantized model (GGUF file or GPU-format folder), its text and JSON forms, and choosing a quant from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import InputError, QualityBoundNotMet
from ..fsutil import human_bytes


@dataclass(frozen=True)
class QualityRow:
    """One quantized model measured against the reference on the same tokens."""

    file: str  # file (or folder) name
    path: str
    quant: str  # "Q4_K_M", "F16", ..., or a GPU format ("gptq-w4a16")
    imatrix: bool  # quantized with an importance matrix (llama-quantize recorded one)
    size: int  # file bytes
    bpw: float  # bits per weight of the tensor data
    ppl: float
    ppl_ratio: float  # ppl / the reference's ppl
    kl_mean: float  # mean KL(reference || this file) per position, in nats
    kl_p99: float
    top1: float  # fraction of positions where both pick the same most likely token
    seconds: float  # wall time to load and evaluate this file
    runtime: str = "llama.cpp"  # what serves this format: "llama.cpp" (GGUF) or "vllm" (GPU folders)

    @property
    def label(self) -> str:
        return f"{self.quant}+imatrix" if self.imatrix else self.quant


@dataclass(frozen=True)
class QualityTable:
    """Rows sorted largest file first, plus what they were measured against and on."""

    rows: tuple[QualityRow, ...]
    reference: dict = field(default_factory=dict)  # path, kind ("hf" | "gguf"), ppl, seconds
    text: dict = field(default_factory=dict)  # source, sha256, n_tokens, n_positions, n_ctx, chunks

    def to_json(self) -> dict:
        """A JSON-ready dict (what `localserve.json` records and `--json` prints)."""
        return {"reference": dict(self.reference), "text": dict(self.text),
                "rows": [asdict(r) | {"label": r.label} for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict) -> "QualityTable":
        names = {f.name for f in fields(QualityRow)}
        rows = tuple(QualityRow(**{k: v for k, v in r.items() if k in names}) for r in data["rows"])
        return cls(rows, dict(data.get("reference", {})), dict(data.get("text", {})))

    def write_chart(self, path, title: str | None = None):
        """PNG: file size against mean KL per quant, llama.cpp's published band marked (chart.py)."""
        from ..models.folders import display_name
        from .chart import write_chart

        return write_chart(self.rows, path,
                           title or f"Quantization cost: {display_name(self.reference.get('path', ''))}")

    def row(self, label_or_file: str) -> QualityRow:
        """The row whose label ("Q4_K_M", "Q2_K+imatrix") or file name matches."""
        for r in self.rows:
            if label_or_file in (r.label, r.file, r.path):
                return r
        raise InputError(f"no measured row for {label_or_file!r}; measured: "
                         f"{', '.join(r.label for r in self.rows)}")

    def format(self) -> str:
        """The table as aligned text, with a footer saying what it was measured against."""
        head = ("quant", "file", "size", "bpw", "ppl", "ppl/ref", "KL mean", "KL p99", "top-1", "time")
        body = [(r.label, r.file, human_bytes(r.size), f"{r.bpw:.2f}", _num(r.ppl), f"{r.ppl_ratio:.3f}",
                 _num(r.kl_mean, 5), _num(r.kl_p99, 4), f"{100 * r.top1:.1f}%", f"{r.seconds:.1f} s")
                for r in self.rows]
        widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
        left = {0, 1}

        def line(cells) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [line(head), line(["-" * w for w in widths]), *map(line, body)]
        ref, text = self.reference, self.text
        if ref:
            kind = "HF model, fp32" if ref.get("kind") == "hf" else "GGUF"
            out.append(f"reference: {ref.get('path')} ({kind}), ppl {_num(ref.get('ppl', math.nan))}")
        if text:
            out.append(f"text: {text.get('source')}: {text.get('n_tokens')} tokens, "
                       f"{text.get('n_positions')} positions scored in {text.get('chunks')} chunk(s) "
                       f"of <= {text.get('n_ctx')} tokens")
        return "\n".join(out)


def choose_quant(table: QualityTable, max_kl: float | None = None, max_size: int | str | None = None) -> QualityRow:
    """The row to keep under the given bounds.

    With --max-kl (alone or with --max-size): the smallest file meeting every bound (ties: the lower
    KL). With --max-size alone: the most faithful file that fits, i.e. the lowest mean KL (ties: the
    smaller file) — the smallest file that fits would just be the worst quant.
    Raises QualityBoundNotMet, showing the table, when no row meets the bounds.
    """
    if max_kl is None and max_size is None:
        raise InputError("choosing a quant automatically needs a bound", "pass --max-kl and/or --max-size")
    limit = parse_size(max_size) if max_size is not None else None
    ok = [r for r in table.rows if _misses(r, max_kl, limit) == []]
    if not ok:
        raise QualityBoundNotMet(
            f"no measured quant meets {_bounds(max_kl, limit)}:\n{table.format()}",
            "loosen the bound, or add larger quants to the candidates")
    if max_kl is None:
        return min(ok, key=lambda r: (r.kl_mean, r.size))
    return min(ok, key=lambda r: (r.size, r.kl_mean))


def check_quant(table: QualityTable, label_or_file: str, max_kl: float | None = None,
                max_size: int | str | None = None) -> QualityRow:
    """The row of a requested quant, or QualityBoundNotMet (showing the table) if it misses a bound."""
    row = table.row(label_or_file)
    limit = parse_size(max_size) if max_size is not None else None
    missed = _misses(row, max_kl, limit)
    if missed:
        # a larger quant fixes a KL miss, a smaller one a size miss; both missed: only loosening helps
        larger, smaller = row.kl_mean > (max_kl or math.inf), row.size > (limit or math.inf)
        pick = "" if larger and smaller else "pick a larger quant, " if larger else "pick a smaller quant, "
        raise QualityBoundNotMet(f"{row.label} ({row.file}) misses {' and '.join(missed)}:\n{table.format()}",
                                 f"{pick}use --quant auto, or loosen the bound")
    return row


def parse_size(value: int | float | str) -> int:
    """Bytes from a number or a size text like `4GB` (the same reading as `export --max-size`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    from ..spec import parse_size as parse_size_text

    return parse_size_text(str(value))


def _misses(row: QualityRow, max_kl: float | None, max_size: int | None) -> list[str]:
    missed = []
    if max_kl is not None and not row.kl_mean <= max_kl:
        missed.append(f"--max-kl {max_kl:g} (KL {row.kl_mean:.4g})")
    if max_size is not None and row.size > max_size:
        missed.append(f"--max-size {human_bytes(max_size)} (size {human_bytes(row.size)})")
    return missed


def _bounds(max_kl: float | None, max_size: int | None) -> str:
    parts = []
    if max_kl is not None:
        parts.append(f"mean KL <= {max_kl:g}")
    if max_size is not None:
        parts.append(f"size <= {human_bytes(max_size)}")
    return " and ".join(parts)


def _num(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"
