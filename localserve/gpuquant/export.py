"""The quantize stage of `export --target vllm --quant FORMAT`: plan (checked before anything is
written), then quantize the written model folder in place, and measure it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..fsutil import human_bytes
from ..progress import step
from .calibration import calibration_samples
from .formats import GpuFormat, GroupChoice, choose_group_size, get_format, quantized_input_widths
from .run import gpuquant_python, run_child

@dataclass(frozen=True)
class QuantPlan:
    format: GpuFormat
    group: GroupChoice | None
    python: Path

    @property
    def serve_notes(self) -> tuple[str, ...]:
        notes = [f"{self.format.name}: {self.format.display} (compressed-tensors, written by llm-compressor)."]
        if self.format.weight_bits == 4:
            notes.append("On CPU, vLLM runs W4A16 only in its AVX-512 build (the AVX2 one has no cpu_gemm_wna16 "
                         "kernel) and not in float32: keep dtype bfloat16 and add --enforce-eager "
                         "(./launch.sh --enforce-eager). GPUs run it as written.")
        return tuple(notes)


@dataclass(frozen=True)
class CalibrationOptions:
    data: Path | None
    samples: int
    seq_len: int


@dataclass(frozen=True)
class QuantResult:
    format: str
    group_size: int | None
    group_reason: str | None
    calibration: dict | None
    seconds: float
    quality: object | None  # QualityTable
    tools: dict

    def to_json(self) -> dict:
        return {"format": self.format, "scheme": "compressed-tensors", "group_size": self.group_size,
                "group_reason": self.group_reason, "lm_head": "unquantized", "calibration": self.calibration,
                "seconds": self.seconds,
                "quality": ({**self.quality.to_json(), "chart": "quality.png"} if self.quality else None)}


def plan_quant(name: str, model_dir: Path, group_size: int | None = None) -> QuantPlan:
    """The format, its group size (read from the weights' headers) and the venv that will run it."""
    fmt = get_format(name)
    group = choose_group_size(quantized_input_widths(model_dir), group_size) if fmt.grouped else None
    python = gpuquant_python()
    if group is not None:
        step(group.reason)
    return QuantPlan(fmt, group, python)


def quantize_folder(plan: QuantPlan, model_dir: Path, work: Path, calibration: CalibrationOptions,
                    measure: Callable[[Path, Path], Any] | None = None) -> QuantResult:
    """Quantize the complete HF folder `model_dir` in place: its weights and config.json are replaced by
    the compressed-tensors ones; tokenizer, chat template and generation_config stay as written.
    With `measure(quantized_folder, model_dir)`, the quantized folder is first measured against the
    folder as it was (the caller's quality table, kept in the result)."""
    fmt = plan.format
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    calib = (calibration_samples(model_dir, calibration.data, calibration.samples, calibration.seq_len)
             if fmt.calibrated else None)
    staged = work / f".{fmt.name}"
    step(f"quantizing to {fmt.name} with llm-compressor (lm_head stays unquantized)")
    answer = run_child({"task": "quantize", "model": str(model_dir), "out": str(staged), "dtype": dtype,
                        "modifier": fmt.modifier, "group_size": plan.group.size if plan.group else None,
                        "samples": [list(s) for s in calib.samples] if calib else []})
    quality = measure(staged, model_dir) if measure is not None else None
    for old in [*model_dir.glob("*.safetensors"), model_dir / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    for new in [*staged.glob("*.safetensors"), staged / "model.safetensors.index.json", staged / "config.json",
                staged / "recipe.yaml"]:  # recipe.yaml: llm-compressor's own record of what it did
        if new.is_file():
            shutil.move(str(new), model_dir / new.name)
    shutil.rmtree(staged)
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    step(f"{fmt.name}: {human_bytes(size)} in {answer['seconds']} s")
    return QuantResult(fmt.name, plan.group.size if plan.group else None, plan.group.reason if plan.group else None,
                       calib.to_json() if calib else None, answer["seconds"], quality, _tools(plan.python))


def _tools(python: Path) -> dict:
    import subprocess

    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('llmcompressor', 'compressed-tensors')}))")
    try:
        return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                         timeout=60).stdout)
    except (ValueError, OSError, subprocess.SubprocessError):
        return {}
