"""One progress style — ours — silenced everywhere by one switch (`set_quiet`, i.e. `--quiet`).

The command line also silences the libraries' own bars, info logs and warnings (transformers,
huggingface_hub, peft, llama.cpp) unless `--debug` (`set_debug`), so a long run prints our step
lines and bars only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from tqdm.auto import tqdm

log = logging.getLogger("localserve")

_quiet = False
_debug = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def set_debug(debug: bool) -> None:
    """--debug: tracebacks, and the libraries' own logs, bars and warnings; otherwise they are silenced."""
    global _debug
    _debug = debug
    logging.getLogger().setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        silence_libraries()


def is_debug() -> bool:
    return _debug


def silence_libraries() -> None:
    """The libraries' progress bars, info logs and deprecation chatter off (ours stay)."""
    import warnings

    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "llama-cpp-python", "hf-to-gguf",
                 "gguf", "mergekit", "datasets", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "peft", "torch", "mergekit", "accelerate", "huggingface_hub"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


@contextlib.contextmanager
def library_bars_off(module_name: str) -> Iterator[None]:
    """Within the block, `module_name`'s own tqdm bars are off unless --debug. For libraries that
    import tqdm directly rather than through a switch silence_libraries can reach (transformers'
    GGUF loader draws "Converting and de-quantizing GGUF tensors" that way)."""
    import functools
    import importlib

    module = importlib.import_module(module_name)
    drawn = getattr(module, "tqdm", None)
    if _debug or drawn is None:
        yield
        return
    module.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        module.tqdm = drawn


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "B") -> Iterator[tqdm]:
    """A progress bar on stderr; bytes are shown with SI prefixes."""
    scale = unit == "B"
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay readable.
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1000, mininterval=0.5,
              disable=True if _quiet else None, file=sys.stderr, leave=False, dynamic_ncols=True) as b:
        yield b


def step(message: str) -> None:
    """One line announcing a stage or a decision (a heuristic that was applied)."""
    if not _quiet:
        print(f"localserve: {message}", file=sys.stderr, flush=True)
