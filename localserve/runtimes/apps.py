"""LM Studio and Jan: a GGUF export placed where each desktop app looks for models, and served the way the app
serves it (both run llama.cpp; Jan starts llama-server itself). No app binary runs here: the layouts follow
the apps' documented rules and their source, at the versions named below and in the README.

LM Studio 0.3 (its Import Models page; `lms` CLI 0.3.38, lmstudio-ai/lms src/subcommands/importCmd.ts):
    MODELS/<publisher>/<model>/<file>.gguf — two folder levels, no file directly in MODELS; MODELS is the
    `downloadsFolder` of `$XDG_CONFIG_HOME/LM Studio/settings.json` (Linux; ~/.config when unset), else
    ~/.lmstudio/models. Folder names: at most 100 characters, none of / < > : " \\ | ? *, not starting or
    ending with '.', no surrounding spaces. `lms import FILE --user-repo PUBLISHER/MODEL --hard-link --yes`
    does the same placement; localserve runs it when `lms` is on PATH. The chat template and the end-of-turn
    tokens come from the GGUF itself; LM Studio has no documented file for a local model's load defaults
    (its model.yaml is a draft for its hub), so the context length is given at load: `lms load KEY
    --context-length N`.

Jan 0.6 (its llama.cpp extension: janhq/jan extensions/llamacpp-extension/src/index.ts, load()):
    DATA/llamacpp/models/<id>/model.yml with `model_path` (relative to DATA, or absolute), `name`,
    `size_bytes` (and `mmproj_path` for vision models); a downloaded model's GGUF sits beside it as
    model.gguf. An id is letters, digits, '/', '_', '-', '.' with no empty, '.' or '..' part. DATA defaults to
    $XDG_DATA_HOME/Jan/data (~/.local/share/Jan/data) on Linux; Jan shows it under Settings > Advanced. To
    serve, Jan starts `llama-server --no-webui --api-key KEY --jinja -m DATA/<model_path> -a <id> --port P`
    plus its engine settings (context size, threads...; later versions pass the key as $LLAMA_API_KEY, the
    same for the server): model.yml has no place for stops or a context,
    which are Jan's settings; the chat template and end-of-turn tokens come from the GGUF (`--jinja`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, ToolError
from ..lineage import ExportRecord, read_record

PUBLISHER = "localserve"
_LMS_BAD = re.compile(r'[/<>:"\\|?*]')
_JAN_ID = re.compile(r"^[A-Za-z0-9/_\-.]+$")


@dataclass(frozen=True)
class Installed:
    """An export placed for an app: where its GGUF is, the name the app lists it by, how it got there."""

    runtime: str  # lmstudio | jan
    model: str  # LM Studio's model key (publisher/model), Jan's model id
    gguf: Path  # the placed file
    root: Path  # the app's models folder (LM Studio) or data folder (Jan)
    how: str  # "hard link", "copy", "lms import --hard-link"
    config: Path | None = None  # Jan's model.yml
    context: int | None = None  # the Modelfile's num_ctx, for the app's load
    stops: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "model": self.model, "gguf": str(self.gguf), "root": str(self.root),
                "how": self.how, "config": str(self.config) if self.config else None, "context": self.context,
                "stops": list(self.stops), "notes": list(self.notes)}


def _gguf_export(export_dir: Path, quant: str | None) -> tuple[ExportRecord, Path]:
    record = read_record(export_dir)
    if record.kind != "gguf":
        raise InputError(f"{export_dir} is a {record.kind} export; LM Studio and Jan load one GGUF model",
                         "install a GGUF export (`localserve export ADAPTER`); a tenants export is served with "
                         "`localserve serve`" if record.kind == "tenants" else "install a GGUF export")
    artifact = record.artifact(quant)
    path = export_dir / artifact.file
    if not path.is_file():
        raise InputError(f"{path} is listed in {export_dir / 'localserve.json'} but missing",
                         "re-run `localserve export`, or restore the file")
    return record, path


def _parameters(record: ExportRecord) -> tuple[int | None, tuple[str, ...]]:
    params = (record.modelfile or {}).get("parameters") or {}
    ctx = params.get("num_ctx")
    return (int(ctx) if ctx else None), tuple(params.get("stop") or ())


def _place(source: Path, dest: Path) -> str:
    """`source` at `dest`: a hard link when both are on one filesystem, else a copy (renamed into place whole)."""
    from ..fsutil import atomic_path

    if dest.exists():
        if dest.stat().st_ino == source.stat().st_ino or _same_bytes(source, dest):
            return "already there"
        raise InputError(f"{dest} exists and holds another file", "remove it, or install under another --name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
        return "hard link"
    except OSError:  # another filesystem, or links not allowed there
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
        return "copy"


def _same_bytes(a: Path, b: Path) -> bool:
    from ..fsutil import sha256_file

    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


# --- LM Studio -----------------------------------------------------------------------------------------

def lmstudio_models_dir() -> Path:
    """LM Studio's models folder: settings.json's downloadsFolder (as `lms import` reads it), else the default."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    settings = config / "LM Studio" / "settings.json"
    try:
        folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
        if isinstance(folder, str) and folder:
            return Path(folder).expanduser()
    except (OSError, ValueError, AttributeError):
        pass
    return Path.home() / ".lmstudio" / "models"


def check_lmstudio_name(what: str, name: str) -> str:
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > 100:
        problem = "is longer than 100 characters"
    elif name.startswith(".") or name.endswith("."):
        problem = "starts or ends with '.'"
    elif name.strip() != name:
        problem = "has leading or trailing spaces"
    elif _LMS_BAD.search(name):
        problem = 'holds one of / < > : " \\ | ? *'
    if problem:
        raise InputError(f"LM Studio's {what} {name!r} {problem}", "pass another --name")
    return name


def install_lmstudio(export_dir: Path, models_dir: Path | None = None, name: str | None = None,
                     quant: str | None = None, lms: str | None = None) -> Installed:
    """Place the export's GGUF at MODELS/localserve/<name>/<file>.gguf (with `lms import` when `lms` is on
    PATH and no folder is given)."""
    export_dir = Path(export_dir)
    record, gguf = _gguf_export(export_dir, quant)
    model = check_lmstudio_name("model folder", name or record.name)
    check_lmstudio_name("publisher folder", PUBLISHER)
    ctx, stops = _parameters(record)
    lms = lms if lms is not None else (shutil.which("lms") if models_dir is None else None)
    root = Path(models_dir).expanduser() if models_dir else lmstudio_models_dir()
    dest = root / PUBLISHER / model / gguf.name
    notes = ("the chat template and end-of-turn tokens are read from the GGUF",
             f"load it with its context: lms load {PUBLISHER}/{model} --context-length {ctx}" if ctx else
             f"load it: lms load {PUBLISHER}/{model}")
    if lms:
        command = [lms, "import", str(gguf.resolve()), "--user-repo", f"{PUBLISHER}/{model}", "--hard-link", "--yes"]
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=600)
        if done.returncode != 0:
            raise ToolError("lms", f"`{' '.join(command)}` exited with code {done.returncode}",
                            (done.stderr or done.stdout)[-2000:], "or place it yourself: localserve install "
                            f"{export_dir} --runtime lmstudio --dir {root}")
        return Installed("lmstudio", f"{PUBLISHER}/{model}", dest, root, "lms import --hard-link", None, ctx, stops,
                         notes)
    how = _place(gguf, dest)
    return Installed("lmstudio", f"{PUBLISHER}/{model}", dest, root, how, None, ctx, stops, notes)


# --- Jan ---------------------------------------------------------------------------------------------

def jan_data_dir() -> Path:
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "Jan" / "data"


def check_jan_id(model_id: str) -> str:
    if not _JAN_ID.match(model_id) or any(p in ("", ".", "..") for p in model_id.split("/")):
        raise InputError(f"Jan's model id {model_id!r} may hold only letters, digits and / _ - . (no empty, '.' or "
                         "'..' part)", "pass another --name")
    return model_id


def install_jan(export_dir: Path, data_dir: Path | None = None, name: str | None = None,
                quant: str | None = None) -> Installed:
    """Place the export's GGUF at DATA/llamacpp/models/<id>/model.gguf with its model.yml."""
    import yaml

    from ..fsutil import write_text

    export_dir = Path(export_dir)
    record, gguf = _gguf_export(export_dir, quant)
    model_id = check_jan_id(name or gguf.stem)
    ctx, stops = _parameters(record)
    root = Path(data_dir).expanduser() if data_dir else jan_data_dir()
    folder = root / "llamacpp" / "models" / model_id
    config = folder / "model.yml"
    relative = f"llamacpp/models/{model_id}/model.gguf"  # as Jan writes a downloaded model's path
    if config.exists():
        existing = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if existing.get("model_path") != relative:
            raise InputError(f"Jan already has a model {model_id!r} ({config})", "pass another --name")
    how = _place(gguf, folder / "model.gguf")
    write_text(config, yaml.safe_dump({"model_path": relative, "name": model_id,
                                       "size_bytes": gguf.stat().st_size}, sort_keys=False))
    notes = ("the chat template and end-of-turn tokens are read from the GGUF (Jan starts llama-server with --jinja)",
             f"model.yml has no context field: set Context Size to {ctx} in Jan's llama.cpp settings" if ctx else "")
    return Installed("jan", model_id, folder / "model.gguf", root, how, config, ctx, stops,
                     tuple(n for n in notes if n))


def jan_command(data_dir: Path, model_id: str, port: int, api_key: str, ctx: int | None = None) -> list[str]:
    """The llama-server arguments Jan's llama.cpp extension builds to load `model_id` (its load())."""
    import yaml

    config = yaml.safe_load((Path(data_dir) / "llamacpp" / "models" / model_id / "model.yml").read_text())
    model = Path(data_dir) / config["model_path"]  # Jan joins it to the data folder (an absolute path stays one)
    args = ["--no-webui", "--api-key", api_key, "--jinja", "-m", str(model), "-a", model_id, "--port", str(port)]
    if ctx:
        args += ["-c", str(ctx)]
    return args


def lmstudio_models(models_dir: Path) -> dict[str, list[Path]]:
    """What LM Studio lists from its models folder: publisher/model -> its GGUF files (files must sit two
    folder levels down)."""
    found: dict[str, list[Path]] = {}
    for gguf in sorted(Path(models_dir).glob("*/*/*.gguf")):
        found.setdefault(f"{gguf.parent.parent.name}/{gguf.parent.name}", []).append(gguf)
    return found


RUNTIMES = {"lmstudio": install_lmstudio, "jan": install_jan}


def install(runtime: str, export_dir: Path, folder: Path | None = None, name: str | None = None,
            quant: str | None = None) -> Installed:
    from ..errors import UnknownName

    if runtime not in RUNTIMES:
        raise UnknownName("app runtime", runtime, sorted(RUNTIMES))
    return RUNTIMES[runtime](export_dir, folder, name=name, quant=quant)
