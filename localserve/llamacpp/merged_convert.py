"""llama.cpp's converter with LoRA adapters merged into its stream: run as a child process.

    python -m localserve.llamacpp.merged_convert MODEL_DIR --outfile F.gguf --outtype f16 --plan PLAN.json

The vendored converter (unmodified) indexes every base tensor as a thunk and reads each only when it
writes it. This wraps the thunks of the tensors the plan changes — and of those whose dtype the
merged model changes — so that each is merged (localserve.models.merge.MergePlan.apply: exactly
peft's arithmetic, in fp32, cast to the base's dtype) at the moment the converter writes it. No
merged Hugging Face folder is written and no full model is ever in memory.

It mirrors the converter's own `main()` for a text model: the same class lookup, the same writer.
A failure of ours is one line on stderr, `localserve-error: {json}`, and exit code 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ERROR_PREFIX = "localserve-error: "
ERROR_EXIT = 3


def _merging_class(model_class, plan, reader):
    import torch
    from conversion.base import LazyTorchTensor

    from localserve.faults import CONVERT, fault_point

    out_dtype = getattr(torch, plan.dtype)
    seen: set[str] = set()
    merged_count = 0

    def merge(name, tensor):
        nonlocal merged_count
        merged_count += 1
        if merged_count == 2:  # the first merged tensor is in the temporary GGUF by now
            fault_point(CONVERT)
        return plan.apply(name, tensor, reader)

    class Merged(model_class):
        model_arch = model_class.model_arch  # the converter checks every subclass declares its own

        def filter_tensors(self, item):
            name, gen = item

            def merged(gen=gen, name=name):
                base = gen()
                if name not in plan.steps and (not base.dtype.is_floating_point or base.dtype == out_dtype):
                    return base
                seen.add(name)
                dtype = out_dtype if base.dtype.is_floating_point else base.dtype
                # The shape stays; the dtype becomes the base's published one. The merge itself runs
                # when the writer asks for the values.
                return LazyTorchTensor._wrap_fn(lambda t: merge(name, t), meta_noop=dtype)(base)

            return super().filter_tensors((name, merged))

    return Merged, seen


def convert(model_dir: Path, outfile: Path, outtype: str, plan_file: Path) -> None:
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    from localserve.models.merge import AdapterTensors, MergePlan

    plan = MergePlan.from_json(json.loads(plan_file.read_text(encoding="utf-8")))
    reader = AdapterTensors(plan.weights)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    with torch.inference_mode():
        hparams = ModelBase.load_hparams(model_dir, False)
        architecture = get_model_architecture(hparams, ModelType.TEXT)
        model_class, seen = _merging_class(get_model_class(architecture), plan, reader)
        model = model_class(model_dir, ftype, outfile)
        model.write()
    unseen = sorted(set(plan.steps) - seen)
    if unseen:  # the converter dropped a tensor the adapter changes: the GGUF would lack the fine-tune
        raise LookupError(f"llama.cpp's converter never wrote {unseen[0]}, which the adapter changes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localserve.llamacpp.merged_convert")
    parser.add_argument("model", type=Path)
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--outtype", choices=("f32", "f16", "bf16"), default="f16")
    parser.add_argument("--plan", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from localserve.errors import LocalserveError

    try:
        convert(args.model, args.outfile, args.outtype, args.plan)
    except (LocalserveError, LookupError) as e:
        hint = getattr(e, "hint", None)
        print("\n" + ERROR_PREFIX + json.dumps({"type": type(e).__name__, "message": getattr(e, "message", str(e)),
                                         "hint": hint}), file=sys.stderr, flush=True)
        return ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
