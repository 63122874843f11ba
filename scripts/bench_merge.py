#!/usr/bin/env python3
"""Benchmark: the memory a `localserve merge` needs, against the size of its largest input shard.

Inputs: the embedded SmolLM2-135M-Instruct (fp32, one 538 MB shard) as the base and two
"fine-tunes" of it (base + 0.01·N(0, 1) per tensor), merged with TIES (density 0.5): three inputs,
and a method that stacks the task vectors. Each variant runs in a fresh process; the process
reports its peak RSS during the merge (VmHWM, reset just before it) above what it held before,
its peak anonymous memory (RssAnon, sampled every 5 ms: what cannot be paged out; the rest of
the RSS is the memory-mapped input files), and both as a ratio to the largest input shard, all
measured in the same run.

    python scripts/bench_merge.py [--work DIR] [--keep]

Variants: the inputs as published (one shard each) with the default 1 GB output shards; then
the same weights re-saved in 100 MB shards, merged with --shard-size 1GB and with 100MB.

Measured here (2 shared cores, 24 GB RAM, mergekit 0.1.5, 2026-11-29, one run):

    variant                                   largest input shard  peak RSS +  ratio  peak anon +  ratio  seconds
    one 538 MB shard per input, out 1GB                    538 MB     2223 MB   4.13      1026 MB   1.91     89.6
    100 MB input shards, out 1GB                           113 MB     1372 MB  12.11      1020 MB   9.00     38.6
    100 MB input shards, out 100MB                         113 MB     1372 MB  12.11      1026 MB   9.06     96.5

Reading, honestly: the inputs are read lazily (memory-mapped, one shard per input mapped at a
time): re-sharding the inputs cut the peak RSS from 2.2 GB to 1.4 GB. But the anonymous peak,
about 1 GB, did not move with the output shard size: it is TIES on the single largest tensor
(SmolLM2's 113 MB tied embedding: base, two fine-tunes, their stacked deltas, the sign mask...),
i.e. about 9x the largest tensor, which the shard options cannot bound. So for this model the
bound is "a few times the largest tensor plus one output shard", not "a couple of shards"; with
the 100 MB input shards that is 9x a shard. Models whose largest tensor is small against their
shards (most 7B+ checkpoints: 0.5 GB embedding against 2-5 GB shards) should fare better;
not measured here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path

    from localserve.merging import MergeSpec, load_recipe, merge_models
    from localserve.progress import set_quiet

    def status():
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    recipe, out, shard_size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    set_quiet(True)
    spec = MergeSpec(load_recipe(recipe), out, shard_size=shard_size, write_yaml=False)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status()
    peak_anon, done = [before["RssAnon"]], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak_anon[0] = max(peak_anon[0], status()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    merge_models(spec, hashes=[])
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    after = status()
    print(json.dumps({"rss_before": before["VmRSS"], "peak_rss": after["VmHWM"], "anon_before": before["RssAnon"],
                      "peak_anon": max(peak_anon[0], after["RssAnon"]), "seconds": seconds}))
""")


def finetune(base: Path, out: Path, seed: int) -> Path:
    """`base` + 0.01·N(0, 1) per tensor, saved like `base` (one shard)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, out)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(base / "model.safetensors")
    weights = {k: (v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype)).contiguous()
               for k, v in weights.items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def reshard(model: Path, out: Path, max_bytes: int) -> Path:
    """The same model with its weights in shards of at most `max_bytes`, as transformers writes them."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for f in model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copyfile(f, out / f.name)
    weights = load_file(model / "model.safetensors")
    shards: list[dict] = [{}]
    size = 0
    for name, tensor in weights.items():
        n = tensor.numel() * tensor.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    return out


def largest_shard(model: Path) -> int:
    return max(f.stat().st_size for f in model.glob("*.safetensors"))


def measure(models: list[Path], work: Path, label: str, shard_size: int) -> dict:
    base, *fts = models
    recipe = work / f"{label}.yaml"
    recipe.write_text(f"merge_method: ties\nbase_model: {base}\ndtype: float32\nmodels:\n" + "".join(
        f"  - model: {m}\n    parameters: {{weight: 1.0, density: 0.5}}\n" for m in fts))
    out = work / f"{label}-merged"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(recipe), str(out), str(shard_size)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"the {label} merge failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["largest_input_shard"] = max(largest_shard(m) for m in models)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder.")
    args = parser.parse_args()

    from localserve.models.embedded import embedded_base

    work = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.work))
    try:
        base = embedded_base()
        whole = [base, finetune(base, work / "ft1", 1), finetune(base, work / "ft2", 2)]
        sharded = [reshard(m, work / f"{m.name}-100MB", 100_000_000) for m in whole]
        variants = [("one 538 MB shard per input, out 1GB", whole, 1_000_000_000),
                    ("100 MB input shards, out 1GB", sharded, 1_000_000_000),
                    ("100 MB input shards, out 100MB", sharded, 100_000_000)]
        mb = 1e6
        print(f"{'variant':40}  {'largest input shard':>19}  {'peak RSS +':>10}  {'ratio':>5}  "
              f"{'peak anon +':>11}  {'ratio':>5}  {'seconds':>7}")
        for i, (label, models, shard_size) in enumerate(variants):
            r = measure(models, work, f"v{i}", shard_size)
            shard = r["largest_input_shard"]
            rss, anon = r["peak_rss"] - r["rss_before"], r["peak_anon"] - r["anon_before"]
            print(f"{label:40}  {shard / mb:16.0f} MB  {rss / mb:7.0f} MB  {rss / shard:5.2f}  "
                  f"{anon / mb:8.0f} MB  {anon / shard:5.2f}  {r['seconds']:7.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
