#!/usr/bin/env python3
"""Benchmark: the whole `localserve export` against the same steps done by hand, in one run.

On the embedded default (SmolLM2-135M-Instruct + examples/demo-adapter), each variant runs in its
own process; wall time and the peak RSS of its process tree (sampled every 50 ms) are reported,
with localserve's numbers as ratios to the by-hand reference measured in the same run.

By hand = peft merge_and_unload + save_pretrained, llama.cpp's convert_hf_to_gguf.py to F16,
llama_model_quantize to Q4_K_M: the minimum any exporter must do. localserve adds the adapter
checks, the template parity proof, hashing for the lineage and the llama.cpp smoke test.

    python scripts/bench_export.py [--quant Q4_K_M] [--repeat 1]

Measured on our machine (2 cores, no GPU), Q4_K_M:

    by hand (merge+convert+quantize)      18.6 s    1.61 GB   (reference)
    localserve export (all checks)        23.3 s    1.50 GB   time x1.25  RSS x0.93
    localserve export, re-run (cached)     9.0 s    0.41 GB   time x0.49  RSS x0.26
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent

BY_HAND = textwrap.dedent("""
    import subprocess, sys, torch, llama_cpp
    from pathlib import Path
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from localserve.llamacpp.vendor import locate
    from localserve.models.embedded import embedded_base
    adapter, work, quant = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    base = embedded_base()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(work / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(work / "merged")
    tree = locate()
    subprocess.run([sys.executable, str(tree.convert_hf), str(work / "merged"), "--outtype", "f16",
                    "--outfile", str(work / "f16.gguf")], check=True, env=tree.python_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + quant)
    assert llama_cpp.llama_model_quantize(str(work / "f16.gguf").encode(), str(work / "out.gguf").encode(), params) == 0
""")


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the whole process tree of `cmd`."""
    # stderr goes to a file: a pipe nobody reads while polling fills up and stalls the child for good.
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"benchmark step failed: {' '.join(cmd[:4])}…\n{log.read()[-2000:]}")
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    adapter = REPO / "examples" / "demo-adapter"
    from localserve.models.embedded import embedded_base

    embedded_base()  # materialise once, outside the timings
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "hand").mkdir()
            hand = run_measured([sys.executable, "-c", BY_HAND, str(adapter), str(tmp / "hand"), args.quant])
            ours = run_measured([sys.executable, "-m", "localserve", "--quiet", "export", str(adapter),
                                 "--quant", args.quant, "--out", str(tmp / "ours"), "--no-register"])
            rerun = run_measured([sys.executable, "-m", "localserve", "--quiet", "export", str(adapter),
                                  "--quant", args.quant, "--out", str(tmp / "ours"), "--no-register"])
            rows.append((hand, ours, rerun))

    def fmt(label: str, m: tuple[float, int], ref: tuple[float, int] | None) -> str:
        ratio = f"   time x{m[0] / ref[0]:.2f}  RSS x{m[1] / ref[1]:.2f}" if ref else "   (reference)"
        return f"{label:<34} {m[0]:7.1f} s  {m[1] / 1e9:6.2f} GB{ratio}"

    print(f"export of examples/demo-adapter to {args.quant} on the embedded SmolLM2-135M-Instruct")
    for n, (hand, ours, rerun) in enumerate(rows, 1):
        print(f"run {n}:")
        print(fmt("by hand (merge+convert+quantize)", hand, None))
        print(fmt("localserve export (all checks)", ours, hand))
        print(fmt("localserve export, re-run (cached)", rerun, hand))


if __name__ == "__main__":
    main()
