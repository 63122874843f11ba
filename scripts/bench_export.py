#!/usr/bin/env python3
"""Benchmark: the whole `localserve export` against the same steps done by hand, in one run.

Two parts:
- the embedded default (below): localserve's export against the bare steps by hand;
- `--synthetic 1b,3b,8b`: synthetic Llama-shaped models (scripts/synthetic_llama.py: the tensor
  shapes of Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B, random bf16, a random all-linear LoRA r=16),
  exported to Q4_K_M with the streamed merge (the default) and with today's peft path done by hand
  (peft merge_and_unload in fp32 + save_pretrained + convert + quantize): wall time, peak RSS of the
  process tree, peak disk of the output folder. A path that cannot fit this machine's memory is not
  run, and the table says so.

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
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from measure import Measured, run_measured as measure_run  # noqa: E402

# By hand: peft's merge_and_unload in fp32 + save_pretrained, llama.cpp's converter, llama_model_quantize.
PEFT_BY_HAND = textwrap.dedent("""
    import subprocess, sys, llama_cpp
    from pathlib import Path
    from localserve.llamacpp.vendor import locate
    from localserve.models.merge import merge_adapter
    from localserve.models.resolve import BaseModel, load_adapter
    adapter, base, work, quant = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    merge_adapter(load_adapter(adapter), BaseModel(base, "--base", None), work / "merged")
    tree = locate()
    subprocess.run([sys.executable, str(tree.convert_hf), str(work / "merged"), "--outtype", "f16",
                    "--outfile", str(work / "f16.gguf")], check=True, env=tree.python_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + quant)
    assert llama_cpp.llama_model_quantize(str(work / "f16.gguf").encode(), str(work / "out.gguf").encode(), params) == 0
""")
SYNTHETIC = {"1b": "llama-3.2-1b", "3b": "llama-3.2-3b", "8b": "llama-3.1-8b"}


def synthetic(sizes: list[str], quant: str, root: Path) -> None:
    """Streamed export against the peft path by hand, per synthetic size; prints the table."""
    from synthetic_llama import SHAPES, base_tensors, write_adapter, write_base

    ram = psutil.virtual_memory().total
    rows = []
    for size in sizes:
        shape = SYNTHETIC[size]
        work = root / size
        base = write_base(work / "base", shape)
        adapter = write_adapter(work / "adapter", base, shape)
        n_params = sum(_count(s) for _, s in base_tensors(SHAPES[shape]))
        stream_out = work / "stream"
        stream = measure_run([sys.executable, "-m", "localserve", "--quiet", "export", str(adapter), "--base", str(base),
                              "--quant", quant, "--out", str(stream_out), "--no-smoke", "--no-register"],
                             watch=(stream_out,))
        outputs = sum(p.stat().st_size for p in stream_out.glob("*.gguf"))
        shutil.rmtree(stream_out)
        # peft's path peaked at 5.7 bytes per weight on a Llama-3.2-3B shape (18.3 GB, measured here):
        # the fp32 model, then save_pretrained's copy in the base's dtype
        peft_needs = n_params * 6
        peft: Measured | None = None
        if peft_needs < ram * 0.9:
            (work / "peft").mkdir()
            peft = measure_run([sys.executable, "-c", PEFT_BY_HAND, str(adapter), str(base), str(work / "peft"), quant],
                               watch=(work / "peft",))
            shutil.rmtree(work / "peft")
        rows.append((shape, n_params, base_bytes(base), outputs, stream, peft, peft_needs))
        shutil.rmtree(work)
    print(f"\nsynthetic Llama shapes, random all-linear LoRA r=16, export to {quant} (no smoke test), this machine: "
          f"{psutil.cpu_count()} cores, {ram / 1e9:.0f} GB RAM")
    print(f"{'shape':<14} {'params':>7} {'bf16':>8} {'path':<8} {'time':>8} {'peak RSS':>9} {'peak disk':>10} "
          f"{'outputs':>8}  ratios (stream / peft)")
    for shape, n, size, outputs, stream, peft, needs in rows:
        print(f"{shape:<14} {n / 1e9:6.2f}B {size / 1e9:6.2f}GB {'stream':<8} {stream.seconds:7.0f}s "
              f"{stream.peak_rss / 1e9:7.2f}GB {stream.peak_disk / 1e9:8.2f}GB {outputs / 1e9:6.2f}GB"
              + (f"  time x{stream.seconds / peft.seconds:.2f}, RSS x{stream.peak_rss / peft.peak_rss:.2f}, "
                 f"disk x{stream.peak_disk / peft.peak_disk:.2f}" if peft else ""))
        if peft:
            print(f"{'':<14} {'':>7} {'':>8} {'peft':<8} {peft.seconds:7.0f}s {peft.peak_rss / 1e9:7.2f}GB "
                  f"{peft.peak_disk / 1e9:8.2f}GB")
        else:
            print(f"{'':<14} {'':>7} {'':>8} {'peft':<8} not run: its fp32 merge needs about {needs / 1e9:.0f} GB "
                  f"of RAM, this machine has {ram / 1e9:.0f} GB")


def base_bytes(base: Path) -> int:
    return sum(p.stat().st_size for p in base.glob("*.safetensors"))


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--synthetic", help="comma-separated sizes of synthetic Llamas to run instead: 1b,3b,8b")
    ap.add_argument("--work", type=Path, help="where the synthetic models go (default: a temporary folder)")
    args = ap.parse_args()
    if args.synthetic:
        sizes = [s.strip().lower() for s in args.synthetic.split(",")]
        unknown = [s for s in sizes if s not in SYNTHETIC]
        if unknown:
            sys.exit(f"unknown size {unknown[0]!r}; valid: {', '.join(SYNTHETIC)}")
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            synthetic(sizes, args.quant, args.work)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                synthetic(sizes, args.quant, Path(tmp))
        return
    adapter = REPO / "examples" / "demo-adapter"
    from localserve.models.embedded import embedded_base

    base = embedded_base()  # materialise once, outside the timings
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "hand").mkdir()
            hand = measure_run([sys.executable, "-c", PEFT_BY_HAND, str(adapter), str(base), str(tmp / "hand"), args.quant])
            ours = measure_run([sys.executable, "-m", "localserve", "--quiet", "export", str(adapter),
                                "--quant", args.quant, "--out", str(tmp / "ours"), "--no-register"])
            rerun = measure_run([sys.executable, "-m", "localserve", "--quiet", "export", str(adapter),
                                 "--quant", args.quant, "--out", str(tmp / "ours"), "--no-register"])
            rows.append((hand, ours, rerun))

    def fmt(label: str, m: Measured, ref: Measured | None) -> str:
        ratio = (f"   time x{m.seconds / ref.seconds:.2f}  RSS x{m.peak_rss / ref.peak_rss:.2f}" if ref
                 else "   (reference)")
        return f"{label:<34} {m.seconds:7.1f} s  {m.peak_rss / 1e9:6.2f} GB{ratio}"

    print(f"export of examples/demo-adapter to {args.quant} on the embedded SmolLM2-135M-Instruct")
    for n, (hand, ours, rerun) in enumerate(rows, 1):
        print(f"run {n}:")
        print(fmt("by hand (merge+convert+quantize)", hand, None))
        print(fmt("localserve export (all checks)", ours, hand))
        print(fmt("localserve export, re-run (cached)", rerun, hand))


if __name__ == "__main__":
    main()
