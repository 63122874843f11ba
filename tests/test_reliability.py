"""Bad input and faults a user meets — a mislabeled adapter, a diverged run, a re-run while the first is
still going, Ctrl-C or a TERM from the system — each end in one clear line, and leave nothing that
looks complete (tiny model, real CLI processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clihelpers import assert_one_line_error, invoke


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "localserve", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_out_naming_a_file_is_one_line(tiny_adapter, tmp_path):
    (tmp_path / "o").write_text("not a folder")
    assert_one_line_error(invoke("export", tiny_adapter, "--out", tmp_path / "o"), "--out", "is a file")


def test_out_inside_the_adapter_is_refused(tiny_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    assert_one_line_error(invoke("export", adapter, "--out", adapter / "out"), "inside the input")
    assert not (adapter / "out").exists()


def test_a_config_whose_rank_disagrees_with_its_tensors_is_one_line(tiny_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 64
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = invoke("export", adapter, "--out", tmp_path / "o", "--no-register")
    assert_one_line_error(result, "rank 64", "its tensors have rank 8")
    assert not (tmp_path / "o").exists()


def test_a_nan_in_the_adapter_names_the_tensor(tiny_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    key = sorted(k for k in weights if "lora_B" in k)[0]
    weights[key][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    result = invoke("export", adapter, "--out", tmp_path / "o", "--no-register", "--no-smoke")
    assert_one_line_error(result, "NaN or Inf", key)
    assert not (tmp_path / "o" / "localserve.json").exists() and not list((tmp_path / "o").glob("*.gguf"))


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tiny_adapter, tmp_path):
    out = tmp_path / "o"
    first = _cli("export", tiny_adapter, "--out", out, "--no-register", "--no-smoke")
    lock = tmp_path / ".o.lock"
    _wait_for(lock.exists)
    second = invoke("export", tiny_adapter, "--out", out, "--no-register", "--no-smoke")
    assert_one_line_error(second, f"another localserve export (pid {first.pid}) is writing {out}")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (out / "localserve.json").is_file() and not lock.exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tiny_adapter, tmp_path):
    (tmp_path / ".o.lock").write_text("999999")  # a run killed with -9 leaves its file, but no lock on it
    result = invoke("--quiet", "export", tiny_adapter, "--out", tmp_path / "o", "--no-register", "--no-smoke")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_term_and_ctrl_c_end_with_one_line_and_nothing_half_written(tiny_adapter, tmp_path, sig, code, word):
    out = tmp_path / "o"
    run = _cli("export", tiny_adapter, "--out", out, "--quant", "Q4_K_M,Q8_0", "--no-register", "--no-smoke",
               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _wait_for(lambda: (out / ".localserve" / "state.json").exists() or list(out.rglob("*.partial")))
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    lines = [line for line in err.splitlines() if not line.startswith("localserve: ")]
    assert lines == [f"{word}: nothing half-written was left behind"], err
    assert not list(out.rglob("*.partial")) and not (out / "localserve.json").exists()
    assert not (tmp_path / ".o.lock").exists()
    again = invoke("--quiet", "export", tiny_adapter, "--out", out, "--quant", "Q4_K_M,Q8_0", "--no-register",
                   "--no-smoke")
    assert again.exit_code == 0 and (out / "localserve.json").is_file(), again.output


def test_a_context_above_what_the_model_was_trained_for_is_refused(tiny_export, tiny_adapter, tmp_path):
    # the tiny model is trained for 512 tokens of context
    assert_one_line_error(invoke("plan", tiny_export, "--ctx", "100000000000"), "above the 512 tokens", "--ctx 512")
    planned = invoke("--quiet", "plan", tiny_export, "--json")
    assert planned.exit_code == 0 and json.loads(planned.output)["ctx"] == 512  # the default follows the model
    assert_one_line_error(invoke("export", tiny_adapter, "--target", "vllm", "--out", tmp_path / "v", "--gpu-memory",
                                 "24GB", "--ctx", "4096"), "above the 512 tokens")
    assert not (tmp_path / "v").exists()
