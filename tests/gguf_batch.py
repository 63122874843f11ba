"""Several llama.cpp conversions in one child process, for tests that convert many tiny models: torch,
transformers and the converter are imported once instead of once per file (seconds each).

    python tests/gguf_batch.py JOBS.json
    JOBS.json: [{"model": DIR, "outfile": F16.gguf, "plan": PLAN.json or null}, ...]

A job with a plan runs `localserve.llamacpp.merged_convert.convert`, the function `export`'s converter
child runs (the adapters merged as the converter streams the base); one without runs the converter's
own `main()`, unwrapped. Each job's error, if any, is written to JOBS.json's `.errors.json` sibling
(outfile -> the traceback's last line), so one failing model fails only its own test.
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from pathlib import Path


def run(jobs_file: Path) -> dict[str, str]:
    from localserve.llamacpp.merged_convert import convert
    from localserve.llamacpp.vendor import locate

    script = str(locate().convert_hf)
    errors = {}
    for job in json.loads(jobs_file.read_text()):
        try:
            if job["plan"]:
                convert(Path(job["model"]), Path(job["outfile"]), "f16", Path(job["plan"]))
            else:
                sys.argv = [script, job["model"], "--outfile", job["outfile"], "--outtype", "f16"]
                runpy.run_path(script, run_name="__main__")
        except BaseException as e:  # noqa: BLE001 - reported per job, the batch goes on (SystemExit too)
            errors[job["outfile"]] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    return errors


def convert_all(jobs: list[dict], scratch: Path) -> dict[str, str]:
    """Run `jobs` in one child process with the converter's environment; outfile -> error of those that failed."""
    import subprocess

    from localserve.llamacpp.vendor import locate

    scratch.mkdir(parents=True, exist_ok=True)
    jobs_file = scratch / "jobs.json"
    jobs_file.write_text(json.dumps([{k: str(v) if v is not None else None for k, v in job.items()} for job in jobs]))
    done = subprocess.run([sys.executable, __file__, str(jobs_file)], env=locate().python_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the conversion batch failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(jobs_file.with_suffix(".errors.json").read_text())


if __name__ == "__main__":
    jobs_path = Path(sys.argv[1])
    jobs_path.with_suffix(".errors.json").write_text(json.dumps(run(jobs_path)))
