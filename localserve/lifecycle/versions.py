"""Versions: every export registered under a model name becomes the immutable version NAME:vN.

    register_version(export_dir, place)  -> NAME:vN registered (and NAME:<quant>, or the tag asked for)

A version keeps the export's whole record (every artifact's sha256, base and adapter sha256, the
resolved spec, tool versions), what the adapter folder says about its training (adapter_config.json,
trainer_state.json, `localserve finetune`'s training.json, the model card's front matter — never
training_args.bin, which is a pickle),
the dataset file named with --data and its sha256, its parent (what NAME:latest was when it came),
and the manifest digest of every registration. The same export registered again is the same version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError, LocalserveError, OllamaError
from ..faults import REGISTRATION_RECORD, fault_point
from ..fsutil import sha256_file
from ..lineage import ExportRecord, read_record
from ..progress import step
from .places import Place, Registered
from .store import Version, VersionStore

LATEST = "latest"


@dataclass(frozen=True)
class VersionRegistration:
    version: Version
    new: bool  # False: this export was already that version
    models: tuple[str, ...]  # the Ollama names created: NAME:vN first
    manifest_digest: str
    place: str

    def to_json(self) -> dict:
        return {"version": self.version.ref, "new": self.new, "models": list(self.models),
                "manifest_digest": self.manifest_digest, "place": self.place}


def register_version(export_dir: Path, place: Place, *, store: VersionStore | None = None,
                     record: ExportRecord | None = None, tag: str | None = None, quant: str | None = None,
                     data_file: Path | None = None) -> VersionRegistration:
    """Make the export in `export_dir` a version and register it at `place` as NAME:vN, plus NAME:<quant>
    (or NAME:TAG with `tag`). Recorded in the version store and in the export's localserve.json."""
    from ..lineage import write_record
    from ..ollama.names import parse_name

    record = record if record is not None else read_record(export_dir)
    if record.kind != "gguf":
        raise InputError(f"{export_dir} is a {record.kind} export; versions are made of merged GGUF exports",
                         "export one adapter (or a merge recipe) for Ollama")
    store = store or VersionStore()
    name = record.name
    data_file = data_file or (Path(record.spec["data"]) if record.spec.get("data") else None)
    data_sha256 = sha256_file(data_file) if data_file else None
    parent = _champion(store, place, name)
    version, new = store.add_version(name, record, export_dir, parent=parent, data_file=data_file,
                                     data_sha256=data_sha256, training=training_facts(record))
    version_tag = f"{name}:v{version.number}"
    existing = place.manifest_digest(version_tag)
    known = {r.manifest_digest for r in store.registrations(version, place.id)}
    # a run stopped between creating NAME:vN and recording it left that NAME:vN: this run replaces it
    interrupted = store.pending_registration(version, place.id, version_tag)
    if existing is not None and existing not in known and not interrupted:
        raise OllamaError(f"{version_tag} already exists on {place.id} with other content ({existing[:19]}); versions "
                          "are immutable", "remove it there, or use another export name")
    artifact = record.artifact(quant)
    models = [version_tag, tag if tag and ":" in tag else f"{name}:{(tag or artifact.quant).lower()}"]
    digest, prompt_path = existing, None
    if existing is None or existing not in known:
        done = _register_at(place, store, version, new, export_dir, record, version_tag, artifact.quant)
        digest, prompt_path = done.manifest_digest, done.recipe.get("prompt_path")
    for model in models[1:]:
        try:
            place.copy(version_tag, model)
        except LocalserveError as e:
            _reword(e, f"{version_tag} is registered on {place.id}, but {model} could not be pointed at it: "
                       f"{e.message}", f"{e.hint + '; ' if e.hint else ''}run the same command again to finish")
            raise
    models = [parse_name(m).display for m in models]
    step(f"{export_dir} is {version.ref}" + ("" if new else " (already registered as such)") +
         f": {', '.join(models)} on {place.id}")
    registered = {"version": version.ref, "name": models[1], "models": models, "manifest_digest": digest,
                  "place": place.id, **({"prompt_path": prompt_path} if prompt_path else {})}
    write_record(export_dir, record.replace(registered={**(record.registered or {}), **registered}))
    return VersionRegistration(version, new, tuple(models), digest, place.id)


def _register_at(place: Place, store: VersionStore, version: Version, new: bool, export_dir: Path,
                 record: ExportRecord, version_tag: str, quant: str) -> Registered:
    """Create `version_tag` at `place` and record it. A failure leaves neither a
    registration row nor a `version_tag` that looks complete (nor the version, if this call made it);
    when what is left at the place cannot be checked, the begun registration stays noted, so that the
    next run replaces that `version_tag` instead of refusing it as someone else's."""
    store.begin_registration(version, place.id, version_tag)
    try:
        done = place.register(export_dir, record, version_tag, quant)
    except LocalserveError as e:
        left = _undo(place, version_tag)
        if left is None:
            store.end_registration(version, place.id, version_tag)
            if new:
                store.discard_version(version)
            _reword(e, f"{e.message}; {version_tag} was not registered, and nothing of it is left on {place.id}",
                    e.hint or f"fix the cause, then run `localserve register {export_dir}`")
        else:
            _reword(e, f"{e.message}; {version_tag} may be left half-made on {place.id} ({left})",
                    f"{e.hint + '; ' if e.hint else ''}`localserve register {export_dir}` replaces it once the "
                    "server answers")
        raise
    fault_point(REGISTRATION_RECORD)
    store.add_registration(version, place.id, done.model, done.manifest_digest, done.recipe, done.manifest)
    return done


def _undo(place: Place, model: str) -> str | None:
    """Remove what a failed registration may have left of `model` at `place`: None once nothing is
    left, else why that cannot be told."""
    try:
        if place.manifest_digest(model) is not None:
            place.remove(model)
    except LocalserveError as e:
        return f"it could not be checked: {e.message}"
    return None


def _reword(e: LocalserveError, message: str, hint: str | None) -> None:
    """Give `e` the message and next step of the operation it failed, keeping its type and exit code."""
    e.message, e.hint = message, hint
    e.args = (message,)


def _champion(store: VersionStore, place: Place, name: str) -> str | None:
    """What NAME:latest points at on `place` (a version ref), else the newest version of NAME."""
    live = store.live_promotions(place.id, f"{name}:{LATEST}")
    if live and live[-1]["version"]:
        return live[-1]["version"] if _is_version_ref(live[-1]["version"]) else None
    latest = store.latest(name)
    return latest.ref if latest else None


def _is_version_ref(ref: str) -> bool:
    tag = ref.rpartition(":")[2]
    return tag.startswith("v") and tag[1:].isdigit()


def training_facts(record: ExportRecord) -> dict:
    """What the adapter folder says about how it was trained (JSON and the model card only)."""
    adapter = record.adapter
    if adapter is None:
        return {"merge": {"method": (record.merge or {}).get("method")}} if record.merge else {}
    folder = Path(adapter.path)
    facts: dict = {}
    config = _json(folder / "adapter_config.json")
    if config:
        facts["lora"] = {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora",
                                                    "rank_pattern", "alpha_pattern", "base_model_name_or_path")
                         if config.get(k) is not None}
    state = _json(folder / "trainer_state.json")
    if state:
        history = [h for h in state.get("log_history", []) if isinstance(h, dict)]
        losses = [h["loss"] for h in history if "loss" in h]
        facts["trainer_state"] = {k: state.get(k) for k in ("global_step", "epoch", "best_metric",
                                                            "best_model_checkpoint") if state.get(k) is not None}
        if losses:
            facts["trainer_state"]["last_loss"] = losses[-1]
    # the training record `localserve finetune` writes (localserve.loop.finetune.TRAINING_RECORD): datasets and
    # base with their sha256, the recipe, seed, library versions — what `finetune --like` and `retrain` reuse
    trained = _json(folder / "training.json")
    if trained.get("kind") == "localserve finetune":
        facts["finetune"] = trained
    card = _front_matter(folder / "README.md")
    if card:
        facts["model_card"] = {k: card[k] for k in ("base_model", "datasets", "license", "library_name") if k in card}
    return facts


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _front_matter(readme: Path) -> dict:
    """The YAML front matter of a model card (`---` … `---`), safely parsed; {} when there is none."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# --- "always from the base" ------------------------------------------------------------------------

STACK_MARKERS = ("localserve.json", "mergekit_config.yml")


def check_not_stacked(base_dir: Path, adapter_dir: Path) -> None:
    """Refuse an adapter trained on one of our exports or on a merged fine-tune: every version should
    be a fine-tune of the base itself, so that versions stay comparable and each can be rebuilt."""
    found = [m for m in STACK_MARKERS if (Path(base_dir) / m).is_file()]
    if found:
        what = "a localserve export or merge" if found[0] == "localserve.json" else "a mergekit merge"
        raise AdapterError(f"{adapter_dir}'s base {base_dir} is itself {what} ({found[0]}): a fine-tune stacked on "
                           "a fine-tune cannot be rebuilt or compared with its siblings",
                           "retrain the adapter on the original base, or pass --allow-stacked")
