"""The quality gate: what each quant costs on *this* model and text, and picking one from that.

    from localserve.quality import measure, choose_quant
    table = measure([Path("m-Q4_K_M.gguf"), Path("m-Q8_0.gguf")], reference=Path("merged/"))
    print(table.format()); table.write_chart("quality.png")
    row = choose_quant(table, max_kl=0.05)          # the smallest file with mean KL <= 0.05
"""

from __future__ import annotations

from ..textdata import default_corpus
from .measure import DEFAULT_N_CTX, measure
from .table import QualityRow, QualityTable, check_quant, choose_quant, parse_size

__all__ = ["DEFAULT_N_CTX", "QualityRow", "QualityTable", "check_quant", "choose_quant", "default_corpus",
           "measure", "parse_size"]
