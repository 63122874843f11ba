#!/usr/bin/env python3
"""What each quant costs on the embedded default model, with and without an importance matrix.

Converts SmolLM2-135M-Instruct to F16 once, computes an importance matrix from one half of the
shipped corpus, writes every quant from Q2_K to Q8_0 (plus IQ4_XS, which needs the imatrix) with
and without it, and measures all of them against the HF model in fp32 on the other half. Prints
the table and the seconds each step took; writes quality.json and quality.png into --out.

    python scripts/bench_quality.py [--out bench-quality] [--quants Q2_K,Q4_K_M,Q8_0] [--max-tokens 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from localserve.fsutil import write_json
from localserve.llamacpp.convert import convert_hf_to_gguf
from localserve.llamacpp.imatrix import compute_imatrix
from localserve.llamacpp.quantize import needs_imatrix, quantize
from localserve.models.embedded import embedded_base
from localserve.quality import default_corpus, measure

QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS")


def split_corpus(folder: Path) -> tuple[Path, Path]:
    """(evaluation half, imatrix half) of the shipped corpus, cut at a paragraph boundary."""
    paragraphs = default_corpus().read_text(encoding="utf-8").split("\n\n")
    half = len(paragraphs) // 2
    evaluation, domain = folder / "eval.txt", folder / "imatrix-data.txt"
    evaluation.write_text("\n\n".join(paragraphs[half:]), encoding="utf-8")
    domain.write_text("\n\n".join(paragraphs[:half]), encoding="utf-8")
    return evaluation, domain


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-quality"))
    p.add_argument("--quants", default=",".join(QUANTS), help="comma-separated llama.cpp types")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate on at most this many tokens")
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t0, 2)
        return result

    hf = embedded_base()
    evaluation, domain = split_corpus(out)
    f16 = out / "smollm2-F16.gguf"
    if not f16.is_file():
        timed("convert F16", convert_hf_to_gguf, hf, f16, outtype="f16")
    imatrix = timed("imatrix", compute_imatrix, f16, domain, out / "imatrix.gguf")

    files = [f16]
    for q in [q.strip() for q in args.quants.split(",") if q.strip()]:
        if not needs_imatrix(q):
            files.append(timed(f"quantize {q}", quantize, f16, out / f"smollm2-{q}.gguf", q))
        files.append(timed(f"quantize {q}+imatrix", quantize, f16, out / f"smollm2-{q}-imatrix.gguf", q, imatrix))

    table = timed("measure (all files)", measure, files, hf, text=evaluation, max_tokens=args.max_tokens)
    table.write_chart(out / "quality.png", title="SmolLM2-135M-Instruct: quantization cost (HF fp32 reference)")
    write_json(out / "quality.json", {"table": table.to_json(), "seconds": timings})

    print(table.format())
    print()
    print("seconds per step:")
    for name, s in timings.items():
        print(f"  {name:<28} {s:8.2f}")
    print(f"  reference evaluation (HF fp32) {table.reference['seconds']:6.2f}")
    for r in table.rows:
        print(f"  measure {r.label:<20} {r.seconds:8.2f}")
    print(f"\nwrote {out / 'quality.json'} and {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
