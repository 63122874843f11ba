"""Ctrl-C and SIGTERM at every stage, sent the way a terminal and a service manager send them.

A terminal's Ctrl-C goes to the whole foreground process group: localserve *and* every child it runs
(the converter, the quantizer, llama-imatrix). Each run here starts in a session of its own, as a
terminal starts a job, and is signalled with `os.killpg` once its stage has printed its own line.
`LOCALSERVE_HOLD_AT` keeps that stage under way until the signal comes (on a tiny model most stages
are over before a test could react); where a child does the stage's work, the child is the one held.

Every case ends alike: exit 130 (143 for SIGTERM) and one line, no process of the group left, nothing
that looks complete, and the same command again finishes, redoing only what had not finished.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from clihelpers import invoke

from localserve import faults

EXPORT = ("--quant", "Q4_K_M,Q8_0", "--no-register", "--no-smoke")
STOPPED = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Job:
    """A localserve command started as a terminal starts a job: a session and process group of its own.
    `sigint_ignored` starts it as a shell without job control starts `cmd &` (SIGINT ignored)."""

    def __init__(self, *args, hold: str | None = None, sigint_ignored: bool = False):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if hold is not None:
            env[faults.HOLD_ENV] = hold
        self.process = subprocess.Popen([sys.executable, "-m", "localserve", *map(str, args)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True,
                                        preexec_fn=_ignore_sigint if sigint_ignored else None)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, text: str, timeout: float = 300.0) -> None:
        """Until the run has printed a line holding `text` (its stage has begun)."""
        end = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the run ended before printing {text!r}:\n" + "\n".join(self.lines))
                assert time.monotonic() < end, f"no line {text!r} within {timeout} s:\n" + "\n".join(self.lines)
                self._changed.wait(0.5)

    def members(self) -> list[psutil.Process]:
        """The live processes of the job's process group (the run and its children)."""
        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.process.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return found

    def stop(self, sig: int = signal.SIGINT, group: bool = True) -> None:
        """Send `sig` as a terminal does (to the whole group) or as `kill PID` does (to the run alone),
        and check how the run ends."""
        children = [p for p in self.members() if p.pid != self.process.pid]
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.process.wait(timeout=60)  # a held stage would sleep for 10 minutes: the signal must end it
        self._reader.join(timeout=10)
        code, word = STOPPED[sig]
        assert self.process.returncode == code, "\n".join(self.lines)
        ours = [line for line in self.lines if not line.startswith("localserve: ")]
        assert ours == [f"{word}: nothing half-written was left behind"], "\n".join(self.lines)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive and not self.members(), [p.cmdline() for p in alive + self.members()]

    def wait_for_child(self, needle: str, timeout: float = 300.0) -> None:
        """Until a child whose command line holds `needle` runs."""
        end = time.monotonic() + timeout
        while not any(needle in " ".join(p.cmdline()) for p in self.members() if p.pid != self.process.pid):
            assert self.process.poll() is None, f"the run ended before {needle!r} started:\n" + "\n".join(self.lines)
            assert time.monotonic() < end, f"{needle!r} did not start within {timeout} s"
            time.sleep(0.05)


def _nothing_looks_complete(out: Path) -> None:
    from gguf import GGUFReader

    assert not (out / "localserve.json").exists()
    assert not list(out.parent.rglob("*.partial")), list(out.parent.rglob("*.partial"))
    for gguf in out.glob("*.gguf"):  # a final name is only ever given to a whole file
        GGUFReader(gguf)
    assert not list(out.parent.glob(".*.lock"))


def _rerun(*args) -> dict[str, bool]:
    """The same command again, to the end; each stage of the export: whether it was skipped."""
    out = Path(args[args.index("--out") + 1])
    again = invoke("--quiet", *args)
    assert again.exit_code == 0, again.output
    assert str(out) in again.output  # the result it prints names what it wrote
    assert not list(out.rglob("*.partial"))
    return {s["name"]: s["skipped"] for s in json.loads((out / "localserve.json").read_text())["stages"]}


ALL_REDONE = {"convert": False, "quantize:Q4_K_M": False, "quantize:Q8_0": False}


@pytest.mark.parametrize("hold, line", [(faults.RESOLVE, "localserve: base: "),
                                        (faults.TEMPLATE_CHECK, "localserve: chat template family: ")],
                         ids=["resolve", "template-check"])
def test_ctrl_c_while_the_inputs_are_checked_stops_before_any_work(tiny_adapter, tmp_path, hold, line):
    out = tmp_path / "o"
    job = Job("export", tiny_adapter, "--out", out, *EXPORT, hold=hold)
    job.wait_for_line(line)
    job.stop()
    _nothing_looks_complete(out)
    assert not list(out.glob("*.gguf"))
    assert _rerun("export", tiny_adapter, "--out", out, *EXPORT) == ALL_REDONE


@pytest.mark.parametrize("sig, group, sigint_ignored", [
    (signal.SIGINT, True, False),  # a terminal's Ctrl-C
    (signal.SIGINT, True, True),  # `localserve export … &` from a script, then `kill -INT -- -PGID`
    (signal.SIGINT, False, False),  # `kill -INT PID`
    (signal.SIGTERM, True, False),
    (signal.SIGTERM, False, False),  # a service manager's stop
], ids=["ctrl-c", "ctrl-c-after-started-with-sigint-ignored", "sigint-to-the-run-alone", "sigterm-to-the-group",
        "sigterm-to-the-run-alone"])
def test_a_stop_during_the_streamed_conversion_stops_the_converter_too(tiny_adapter, tmp_path, sig, group,
                                                                        sigint_ignored):
    out = tmp_path / "o"
    job = Job("export", tiny_adapter, "--out", out, *EXPORT, hold=faults.CONVERT, sigint_ignored=sigint_ignored)
    job.wait_for_line("converting to a 16-bit GGUF")
    job.wait_for_child("localserve.llamacpp.merged_convert")
    job.stop(sig, group)
    _nothing_looks_complete(out)
    assert not list(out.rglob("*F16.gguf"))
    if sig == signal.SIGINT and group and not sigint_ignored:  # how the run was stopped changes nothing after
        assert _rerun("export", tiny_adapter, "--out", out, *EXPORT) == ALL_REDONE


def test_ctrl_c_during_the_second_quantization_keeps_the_first(tiny_adapter, tmp_path):
    out = tmp_path / "o"
    job = Job("export", tiny_adapter, "--out", out, *EXPORT, hold=f"{faults.QUANTIZE}:Q8_0")
    job.wait_for_line("localserve: quantizing to Q8_0")
    job.wait_for_child("llama_model_quantize")
    job.stop()
    _nothing_looks_complete(out)
    assert [p.name for p in out.glob("*.gguf")] == ["adapter-Q4_K_M.gguf"]
    assert _rerun("export", tiny_adapter, "--out", out, *EXPORT) == {
        "convert": True, "quantize:Q4_K_M": True, "quantize:Q8_0": False}


def test_ctrl_c_during_the_importance_matrix_stops_llama_imatrix(tiny_adapter, tmp_path):
    from localserve.llamacpp.tools import ensure_tools
    from tinymodel import WORDS

    ensure_tools()  # built once for the suite; its build is not the stage under test
    rng = random.Random(3)
    data = tmp_path / "domain.txt"  # enough text that llama-imatrix runs for several seconds
    data.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000)))
    out = tmp_path / "o"
    args = ("export", tiny_adapter, "--out", out, "--quant", "Q4_K_M", "--imatrix-data", data, "--no-register",
            "--no-smoke")
    job = Job(*args)
    job.wait_for_line("localserve: computing an importance matrix of ")
    job.wait_for_child("llama-imatrix")
    job.stop()
    _nothing_looks_complete(out)
    assert not (out / "imatrix.gguf").exists()
    assert _rerun(*args) == {"convert": True, "imatrix": False, "quantize:Q4_K_M": False}


def test_ctrl_c_during_the_smoke_test_redoes_only_the_smoke_test(tiny_base, tmp_path):
    from mergefixtures import build_answerer
    from tinymodel import build_lora

    base = build_answerer(tiny_base, tmp_path / "base", "fox")  # answers "fox", then stops
    adapter = build_lora(base, tmp_path / "adapter")
    out = tmp_path / "o"
    args = ("export", adapter, "--out", out, "--quant", "Q8_0", "--no-register")
    job = Job(*args, hold=faults.SMOKE)
    job.wait_for_line("localserve: smoke test of adapter-Q8_0.gguf")
    job.stop()
    _nothing_looks_complete(out)
    assert _rerun(*args) == {"quantize:Q8_0": True, "smoke:Q8_0": False}


def test_ctrl_c_while_the_bundle_is_written_leaves_no_bundle(tiny_adapter, tmp_path):
    from localserve.ollama.bundle import extract_verified

    out, bundle = tmp_path / "o", tmp_path / "tiny.tar"
    args = ("export", tiny_adapter, "--out", out, "--quant", "Q4_K_M", "--no-register", "--no-smoke",
            "--bundle", bundle)
    job = Job(*args, hold=faults.BUNDLE)
    job.wait_for_line("localserve: writing the air-gapped bundle")
    job.stop()
    assert not bundle.exists() and not list(tmp_path.glob(".tiny.tar.*"))
    # the export itself had finished: its record is whole, and the re-run writes only the bundle
    assert _rerun(*args) == {"quantize:Q4_K_M": True}
    assert (extract_verified(bundle, tmp_path / "x") / "localserve.json").is_file()


def _store_models(store: Path) -> list[str]:
    """NAME:TAG of every model in an Ollama store, each manifest's blobs all present."""
    names = []
    for manifest in sorted((store / "manifests").glob("*/*/*/*")):
        m = json.loads(manifest.read_bytes())
        for digest in [m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]:
            assert (store / "blobs" / digest.replace(":", "-")).is_file(), (manifest, digest)
        names.append(f"{manifest.parent.name}:{manifest.name}")
    return names


def test_ctrl_c_during_a_registration_into_a_store_leaves_no_model(tiny_export, tmp_path):
    store = tmp_path / "models"
    job = Job("register", tiny_export, "--store", store, hold=faults.STORE_INSTALL)
    job.wait_for_line("localserve: registering tiny:v1 into the Ollama store")
    job.stop()
    assert _store_models(store) == [] and not list(store.rglob("sha256-*"))
    assert json.loads((tiny_export / "localserve.json").read_text()).get("registered") is None
    again = invoke("--quiet", "register", tiny_export, "--store", store)
    assert again.exit_code == 0 and "tiny:v1" in again.output, again.output
    assert _store_models(store) == ["tiny:q4_k_m", "tiny:v1"]


def test_ctrl_c_during_a_registration_with_a_server_creates_no_model(tiny_export, tmp_path):
    import httpx
    from ollama_standin.server import Standin

    server = Standin(tmp_path / "server-models").start()
    try:
        def models() -> list[str]:
            return sorted(m["name"] for m in httpx.get(f"{server.url}/api/tags", timeout=10).json()["models"])

        job = Job("register", tiny_export, "--host", server.url, hold=faults.SERVER_REGISTRATION)
        job.wait_for_line("localserve: registering tiny:v1 with Ollama")
        job.stop()
        assert models() == []
        again = invoke("--quiet", "register", tiny_export, "--host", server.url)
        assert again.exit_code == 0 and "tiny:v1" in again.output, again.output
        assert models() == ["tiny:q4_k_m", "tiny:v1"]
    finally:
        server.stop()


def test_ctrl_c_during_a_bundle_install_leaves_no_model(tiny_export, tmp_path):
    bundle, store = tmp_path / "tiny.tar", tmp_path / "models"
    assert invoke("--quiet", "bundle", tiny_export, "-o", bundle).exit_code == 0
    job = Job("install", bundle, "--store", store, hold=faults.STORE_INSTALL)
    job.wait_for_line("localserve: verified ")
    job.stop()
    assert _store_models(store) == [] and not list(store.glob(".localserve*"))
    again = invoke("--quiet", "install", bundle, "--store", store)
    assert again.exit_code == 0 and "tiny:q4_k_m" in again.output, again.output
    assert _store_models(store) == ["tiny:q4_k_m"]


def test_ctrl_c_while_the_vllm_export_writes_its_shards_leaves_no_folder(tiny_adapter, tmp_path):
    out = tmp_path / "v"
    args = ("export", tiny_adapter, "--target", "vllm", "--out", out)
    job = Job(*args, hold=faults.SHARDS)
    job.wait_for_line("as the shards are written")
    job.stop()
    assert not out.exists() and not list(tmp_path.glob(".v.*"))
    again = invoke("--quiet", *args)
    assert again.exit_code == 0, again.output
    assert (out / "localserve.json").is_file() and list((out / "model").glob("*.safetensors"))


def test_ctrl_c_while_a_vllm_reexport_rewrites_its_shards_leaves_no_record_and_the_old_model(tiny_adapter, tmp_path):
    out = tmp_path / "v"
    first = invoke("--quiet", "export", tiny_adapter, "--target", "vllm", "--out", out)
    assert first.exit_code == 0, first.output
    shards = {p.name: p.read_bytes() for p in (out / "model").glob("*.safetensors")}
    # another template family changes what the weights stage writes (the end-of-turn ids): it runs again
    args = ("export", tiny_adapter, "--target", "vllm", "--out", out, "--template-family", "chatml", "--deploy", "lws")
    job = Job(*args, hold=faults.SHARDS)
    job.wait_for_line("as the shards are written")
    job.stop()
    assert not (out / "localserve.json").exists()  # the earlier record no longer describes the folder
    assert {p.name: p.read_bytes() for p in (out / "model").glob("*.safetensors")} == shards  # untouched, whole
    assert not list(out.glob(".model.*")) and not (out / "deploy").exists()
    again = invoke("--quiet", *args)
    assert again.exit_code == 0, again.output
    record = json.loads((out / "localserve.json").read_text())
    assert record["spec"]["template_family"] == "chatml" and list(record["deploy"]["engines"]) == ["lws"]


def test_ctrl_c_during_a_merge_leaves_no_merged_folder(tiny_base, tmp_path):
    from mergefixtures import build_finetune

    a, b = build_finetune(tiny_base, tmp_path / "a", seed=1), build_finetune(tiny_base, tmp_path / "b", seed=2)
    out = tmp_path / "merged"
    args = ("merge", "--method", "slerp", "--t", "0.5", a, b, "-o", out)
    job = Job(*args, hold=faults.MERGE)
    job.wait_for_line("localserve: merging 2 inputs with slerp")
    job.stop()
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))
    again = invoke("--quiet", *args)
    assert again.exit_code == 0, again.output
    assert (out / "localserve.json").is_file() and (out / "config.json").is_file()
