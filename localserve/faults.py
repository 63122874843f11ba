"""Fault injection for the tests of interrupted runs.

With `LOCALSERVE_KILL_AT=POINT` in its environment, a localserve process kills itself with SIGKILL —
as `kill -9` or the kernel's out-of-memory killer would — when it reaches the point of that name: no
handler runs, no temporary file is removed. With `LOCALSERVE_HOLD_AT=POINT` it stops there instead,
for as long as nobody signals it: a test waits for the stage's own progress line and then sends the
signal a terminal's Ctrl-C sends, knowing the stage is still under way — on a tiny model most stages
are over before a test could react. The points sit inside each stage's work (in the child process
where a child does it). Unset, as they always are outside tests, `fault_point` does nothing.
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "LOCALSERVE_KILL_AT"
HOLD_ENV = "LOCALSERVE_HOLD_AT"
HOLD_SECONDS = 600.0

# The points, where they are reached.
RESOLVE = "resolve"  # the inputs are found and checked, their content is being hashed
TEMPLATE_CHECK = "template check"  # the chat family is chosen, the parity check is running
CONVERT = "convert"  # the converter child has written its first tensor into the temporary GGUF
QUANTIZE = "quantize"  # "quantize:Q8_0": the quantizer child for that type runs, its temporary output exists
SMOKE = "smoke"  # the smoke test's model has produced its first token
BUNDLE = "bundle"  # the bundle's first file is in its temporary tar
STORE_INSTALL = "store install"  # the model's blobs are in the Ollama store, its manifest is not
REGISTRATION_RECORD = "registration record"  # NAME:vN exists at its place, the version store does not know yet
SERVER_REGISTRATION = "server registration"  # the GGUF's blob is on the Ollama server, the model is not created
SHARDS = "shards"  # a safetensors shard of a merged folder is written, the folder is not complete
MERGE = "merge"  # mergekit has written the merged model into its temporary folder
FINETUNE = "finetune"  # the fine-tune's first optimizer step is done, its adapter folder is not written


def fault_point(name: str) -> None:
    """Die (LOCALSERVE_KILL_AT) or stop until signalled (LOCALSERVE_HOLD_AT) at the point `name`."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(HOLD_ENV) == name:
        time.sleep(HOLD_SECONDS)


