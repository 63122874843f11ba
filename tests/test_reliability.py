"""Bad input and faults a user meets — a mislabeled adapter, a diverged run, a re-run while the first is
still going, a kill -9 at any stage — each end in one clear line, and leave nothing that
looks complete (tiny model, real CLI processes). Ctrl-C and SIGTERM at every stage: test_interrupts.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
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
    out = tmp_path / "o"
    result = invoke("--quiet", "export", tiny_adapter, "--out", out, "--no-register", "--no-smoke")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{out / 'adapter-Q4_K_M.gguf'}  "), result.output  # what it wrote, first
    assert (out / "localserve.json").is_file() and not (tmp_path / ".o.lock").exists()


@pytest.mark.parametrize("stop, code", [("KeyboardInterrupt", 130), ("Terminated", 143)])
def test_a_stop_that_lands_inside_a_finalizer_still_stops_the_run(stop, code):
    # Python prints and drops an exception raised in a finalizer; the command line sends the signal again
    script = f"""
import sys, time
from localserve.cli import cli, _redeliver_stops
from localserve.errors import Terminated
sys.unraisablehook = _redeliver_stops
class Finalised:
    def __del__(self):
        raise {stop}()
@cli.command("finalise")
def finalise():
    Finalised()
    time.sleep(30)
    print("ran to the end")
cli(["finalise"], prog_name="localserve")
"""
    if stop == "Terminated":
        script = script.replace("import sys, time", "import signal, sys, time\nfrom localserve.cli import _terminate\n"
                                "signal.signal(signal.SIGTERM, _terminate)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert run.returncode == code and "ran to the end" not in run.stdout, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(("interrupted", "terminated")), run.stderr


def test_a_context_above_what_the_model_was_trained_for_is_refused(tiny_export, tiny_adapter, tmp_path):
    # the tiny model is trained for 512 tokens of context
    assert_one_line_error(invoke("plan", tiny_export, "--ctx", "100000000000"), "above the 512 tokens", "--ctx 512")
    planned = invoke("--quiet", "plan", tiny_export, "--json")
    assert planned.exit_code == 0 and json.loads(planned.output)["ctx"] == 512  # the default follows the model
    assert_one_line_error(invoke("export", tiny_adapter, "--target", "vllm", "--out", tmp_path / "v", "--gpu-memory",
                                 "24GB", "--ctx", "4096"), "above the 512 tokens")
    assert not (tmp_path / "v").exists()


# --- kill -9 at any stage, then the same command again ------------------------------------------------
# A killed run leaves nothing that looks complete: no localserve.json, no final-named file that is not
# whole, no manifest whose blobs are missing. The run after it takes the folder over, removes what was
# half-written, and redoes only the stages that had not finished (localserve.json's `stages`).

def _child(run: subprocess.Popen, needle: str) -> psutil.Process:
    """The child process of `run` whose command line holds `needle`, once it runs."""
    found = []

    def running() -> bool:
        if run.poll() is not None:
            raise AssertionError(f"the run ended before {needle!r} started: {run.communicate()}")
        for child in psutil.Process(run.pid).children(recursive=True):
            try:
                if any(needle in part for part in child.cmdline()):
                    found.append(child)
                    return True
            except psutil.NoSuchProcess:
                continue
        return False

    _wait_for(running)
    return found[0]


def _kill_9(run: subprocess.Popen, child: psutil.Process) -> None:
    """kill -9 the run; the child it was waiting for dies with it instead of writing on."""
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    _, alive = psutil.wait_procs([child], timeout=5)
    assert all(_zombie(p) for p in alive), f"{child.cmdline()} outlived its parent"


def _zombie(process: psutil.Process) -> bool:
    """Dead, and not yet reaped (by whatever adopted it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _nothing_looks_complete(out: Path) -> None:
    from gguf import GGUFReader

    assert not (out / "localserve.json").exists()
    for gguf in out.glob("*.gguf"):  # a final name is only ever given to a whole file
        GGUFReader(gguf)


def _stages(out: Path) -> dict[str, bool]:
    """Each stage of the last run: whether it was skipped (finished by an earlier run)."""
    return {s["name"]: s["skipped"] for s in json.loads((out / "localserve.json").read_text())["stages"]}


EXPORT = ("--quant", "Q4_K_M,Q8_0", "--no-register", "--no-smoke")


def test_kill_9_during_conversion_takes_the_converter_with_it_and_the_rerun_finishes(tiny_adapter, tmp_path):
    out = tmp_path / "o"
    run = _cli("export", tiny_adapter, "--out", out, *EXPORT)
    _kill_9(run, _child(run, "localserve.llamacpp.merged_convert"))
    _nothing_looks_complete(out)
    again = invoke("--quiet", "export", tiny_adapter, "--out", out, *EXPORT)
    assert again.exit_code == 0, again.output
    assert _stages(out) == {"convert": False, "quantize:Q4_K_M": False, "quantize:Q8_0": False}
    assert not list(out.rglob("*.partial")) and not (tmp_path / ".o.lock").exists()


def test_a_killed_converter_is_one_line_and_a_kill_9_mid_quant_redoes_only_that_quant(tiny_adapter, tmp_path):
    from localserve.fsutil import sha256_file

    out = tmp_path / "o"
    run = _cli("export", tiny_adapter, "--out", out, *EXPORT)
    _child(run, "localserve.llamacpp.merged_convert").kill()  # as the out-of-memory killer would
    _, err = run.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("localserve: ")]
    assert run.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: convert_hf_to_gguf.py: the conversion of ") and "killed by SIGKILL" in lines[0]
    assert "run the same command again" in lines[0]
    _nothing_looks_complete(out)

    run = _cli("export", tiny_adapter, "--out", out, *EXPORT)
    _kill_9(run, _child(run, "Q8_0.gguf"))  # the first quant is written, the second is being written
    _nothing_looks_complete(out)
    first = out / "adapter-Q4_K_M.gguf"
    state = json.loads((out / ".localserve" / "state.json").read_text())
    assert state["quantize:Q4_K_M"]["info"]["sha256"] == sha256_file(first) and not (out / "adapter-Q8_0.gguf").exists()

    again = invoke("--quiet", "export", tiny_adapter, "--out", out, *EXPORT)
    assert again.exit_code == 0, again.output
    assert _stages(out) == {"convert": True, "quantize:Q4_K_M": True, "quantize:Q8_0": False}
    assert not list(out.rglob("*.partial"))


def test_kill_9_during_the_importance_matrix_redoes_it_and_not_the_conversion(tiny_adapter, tmp_path):
    import random

    from tinymodel import WORDS

    rng = random.Random(3)
    data = tmp_path / "domain.txt"  # enough text that llama-imatrix runs for a few seconds
    data.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(1500)))
    out = tmp_path / "o"
    args = ("--quant", "Q4_K_M", "--imatrix-data", data, "--no-register", "--no-smoke")
    run = _cli("export", tiny_adapter, "--out", out, *args)
    _kill_9(run, _child(run, "llama-imatrix"))
    _nothing_looks_complete(out)
    assert not (out / "imatrix.gguf").exists()
    again = invoke("--quiet", "export", tiny_adapter, "--out", out, *args)
    assert again.exit_code == 0, again.output
    assert _stages(out) == {"convert": True, "imatrix": False, "quantize:Q4_K_M": False}
    assert not list(out.rglob("*.partial"))


def test_kill_9_during_the_bundle_write_leaves_no_bundle_and_the_rerun_writes_only_it(tiny_adapter, tmp_path):
    from localserve.ollama.bundle import extract_verified

    out, bundle = tmp_path / "o", tmp_path / "tiny.tar"
    args = ("--out", out, "--quant", "Q4_K_M", "--no-register", "--no-smoke", "--bundle", bundle)
    run = _cli("export", tiny_adapter, *args, env={**os.environ, "LOCALSERVE_KILL_AT": "bundle"})
    run.communicate(timeout=300)
    assert run.returncode == -signal.SIGKILL
    assert not bundle.exists()  # its first file was in the temporary tar
    again = invoke("--quiet", "export", tiny_adapter, *args)
    assert again.exit_code == 0, again.output
    assert _stages(out) == {"quantize:Q4_K_M": True}
    assert (extract_verified(bundle, tmp_path / "x") / "localserve.json").is_file()


def _manifests_point_at_blobs(store: Path) -> list[str]:
    """The names of the models in an Ollama store; each manifest's blobs are all there."""
    names = []
    for manifest in sorted((store / "manifests").glob("*/*/*/*")):
        m = json.loads(manifest.read_bytes())
        for digest in [m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]:
            assert (store / "blobs" / digest.replace(":", "-")).is_file(), (manifest, digest)
        names.append(f"{manifest.parent.name}:{manifest.name}")
    return names


@pytest.mark.parametrize("point", ["store install", "registration record"])
def test_kill_9_during_a_registration_into_a_store_and_the_rerun_registers(tiny_export, tmp_path, point):
    from localserve.lifecycle.store import VersionStore

    export, store = tmp_path / "tiny", tmp_path / "models"
    shutil.copytree(tiny_export, export)
    run = _cli("register", export, "--store", store, env={**os.environ, "LOCALSERVE_KILL_AT": point})
    run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL
    # killed before the manifest: no model; killed after it: tiny:v1 is whole, only not recorded yet
    assert _manifests_point_at_blobs(store) == ([] if point == "store install" else ["tiny:v1"])
    assert json.loads((export / "localserve.json").read_text()).get("registered") is None
    again = invoke("--quiet", "register", export, "--store", store)
    assert again.exit_code == 0, again.output
    assert _manifests_point_at_blobs(store) == ["tiny:q4_k_m", "tiny:v1"]
    with VersionStore() as versions:
        (version,) = versions.versions("tiny")
        assert len(versions.registrations(version)) == 1 and not versions.pending_registration(
            version, f"store:{store.resolve()}", "tiny:v1")
    assert not list(store.glob(".localserve*"))


def test_kill_9_during_a_bundle_install_into_a_store_and_the_rerun_cleans_up_and_installs(tiny_export, tmp_path):
    bundle, store = tmp_path / "tiny.tar", tmp_path / "models"
    assert invoke("--quiet", "bundle", tiny_export, "-o", bundle).exit_code == 0
    run = _cli("install", bundle, "--store", store, env={**os.environ, "LOCALSERVE_KILL_AT": "store install"})
    run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert _manifests_point_at_blobs(store) == [] and list(store.glob(".localserve-install-*"))  # the unpacked bundle
    again = invoke("--quiet", "install", bundle, "--store", store)
    assert again.exit_code == 0, again.output
    assert _manifests_point_at_blobs(store) == ["tiny:q4_k_m"]
    assert not list(store.glob(".localserve*"))
