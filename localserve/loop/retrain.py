"""`localserve retrain NAME --data new.jsonl`: the live version's recipe on its data plus the new data, from the
base, exported as it was exported, registered as NAME:vN+1, then the golden-suite gate and the A/B router.

    retrain(RetrainSpec("demo", data=(Path("harvest.jsonl"),), suite=Path("suite.yaml"), ab=10),
            place, exporter)

1. finetune   the live version's recorded datasets (each checked against its sha256) plus the new data, with
              the live version's recipe, from its base (or from `base`: a new base model, whose chat family the
              export detects afresh) — `localserve.loop.finetune`
2. export     with the live version's export spec (`exporter`: the CLI hands in the export runner, which
              sits above this package)
3. register   NAME:vN+1 at the place, its parent the live version, its datasets in its training record
4. gate       the candidate against NAME:latest on the suite, paired case by case; promoted only with
              `promote`, and a refusal stops here (exit 1, the table shown)
5. ab         the candidate into NAME's A/B experiment at `ab` percent, the live version the control, so
              that `ab decide` finishes the job

The work folder is keyed by the inputs (datasets, base, recipe, export spec): the same command again skips
the finished fine-tune and export (`pipeline.py`), finds the version already registered, and records no
stage twice. Each stage is an event `retrain:STAGE` on the new version (`localserve versions NAME --json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..fsutil import sha256_file
from ..lineage import ExportRecord, read_record
from ..pipeline import Pipeline, content_key
from ..progress import step
from .finetune import FinetuneSpec, TRAINING_RECORD, finetune, read_training_record, recorded_training
from .recipe import Recipe

# (adapter folder, export folder, the live version's recorded export spec, whether the base is new) -> the
# export folder written. The export runners sit above this package (only the CLI imports them).
Exporter = Callable[[Path, Path, dict, bool], Path]
LATEST = "latest"


@dataclass(frozen=True)
class RetrainSpec:
    name: str
    data: tuple[Path, ...]  # the new data
    base: str | None = None  # a new base model; None: the live version's
    recipe: Recipe | None = None  # None: the live version's recorded recipe
    recipe_source: str | None = None
    suite: Path | None = None
    promote: bool = False
    ab: float | None = None  # percent of the users for the new version in the running A/B
    out: Path | None = None  # the work folder; default retrains/NAME-<key>
    allow_stacked: bool = False
    template_family: str | None = None  # None: the live version's (same base), or the new base's own template

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(Path(p) for p in self.data))
        if not self.data and self.base is None:
            raise InputError("retrain needs new data, or a new base to train the same data on",
                             "pass --data new.jsonl, or --base NEW_BASE")
        if self.promote and self.suite is None:
            raise InputError("--promote promotes through the golden-suite gate, and no --suite was given",
                             "add --suite SUITE")
        if self.promote and self.ab is not None:
            raise InputError(f"--promote makes the new version {self.name}:latest at once, and --ab {self.ab:g} puts it "
                             "on a share of the users for `ab decide` to judge", "give one of them")
        if self.ab is not None and not 0 < self.ab < 100:
            raise InputError(f"--ab is the new version's share of the users in percent, above 0 and below 100, not "
                             f"{self.ab:g}", "e.g. --ab 10")


@dataclass
class RetrainResult:
    version: str
    parent: str
    new: bool
    work_dir: Path
    adapter_dir: Path
    export_dir: Path
    training: dict
    stages: list[dict] = field(default_factory=list)  # name, skipped, seconds
    gate: dict | None = None  # the comparison and the decision
    table: str | None = None
    promoted: bool = False
    ab: dict | None = None  # the experiment's weights after the change

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "parent": self.parent, "new": self.new, "work_dir": str(self.work_dir),
                "adapter_dir": str(self.adapter_dir), "export_dir": str(self.export_dir),
                "final_loss": self.training.get("final_loss"), "datasets": self.training.get("datasets"),
                "base": self.training.get("base"), "stages": self.stages, "gate": self.gate,
                "promoted": self.promoted, "ab": self.ab}


def live_version(store, place, name: str):
    """The version NAME:latest points at on `place` (else the newest version of NAME)."""
    live = store.live_promotions(place.id, f"{name}:{LATEST}")
    ref = live[-1]["version"] if live else None
    if ref:
        return store.version(ref)
    latest = store.latest(name)
    if latest is None:
        raise InputError(f"{name} has no version to retrain", f"register one first (`localserve register EXPORT_DIR`)"
                                                              f" and promote it: localserve promote {name}:v1 --as "
                                                              f"{name}:latest")
    return latest


def training_set(live, new_data: tuple[Path, ...], new_base: bool = False) -> list[Path]:
    """The live version's recorded datasets, each still as it was (same sha256), then the new files (a file
    already among them counted once). Without new data only on a new base."""
    record = recorded_training(live) or {}
    paths: list[Path] = []
    seen: set[str] = set()
    for dataset in record.get("datasets") or []:
        path = Path(dataset["path"])
        if not path.is_file():
            raise InputError(f"{live.ref} was trained on {path}, which is gone",
                             "restore it (its sha256 is in `localserve versions NAME --json`)")
        if sha256_file(path) != dataset["sha256"]:
            raise InputError(f"{live.ref} was trained on {path} with sha256 {dataset['sha256'][:12]}, and the file "
                             "has changed since", "restore it, or pass the changed data as new data to a "
                                                  "`localserve finetune` of its own")
        paths.append(path)
        seen.add(dataset["sha256"])
    for path in new_data:
        if not path.is_file():
            raise InputError(f"no such data file: {path}", "pass the new chat JSONL with --data")
        digest = sha256_file(path)
        if digest not in seen:
            paths.append(path)
            seen.add(digest)
    if len(paths) == len(record.get("datasets") or []) and not new_base:
        raise InputError(f"the new data is what {live.ref} was trained on already", "pass new data with --data")
    if not paths:
        raise InputError(f"{live.ref} records no datasets (its adapter was not made by `localserve finetune`), so "
                         "there is nothing to train on the new base", "pass the data with --data")
    return paths


def retrain(spec: RetrainSpec, place, exporter: Exporter, *, store=None) -> RetrainResult:
    """Retrain NAME (see the module's docstring). Raises PromotionRefused (with the table) when the gate
    refuses the new version; it is registered and recorded all the same, never promoted nor put in the A/B."""
    from ..lifecycle.store import VersionStore
    from ..lifecycle.versions import register_version

    own = store is None
    store = store or VersionStore()
    try:
        live = live_version(store, place, spec.name)
        trained = recorded_training(live) or {}
        recipe = spec.recipe
        if recipe is None:
            if not isinstance(trained.get("recipe"), dict):
                raise InputError(f"{live.ref} has no recorded recipe (its adapter was not made by `localserve "
                                 "finetune`)", "pass --recipe recipe.yaml")
            recipe = Recipe.from_json(trained["recipe"], f"the recipe recorded with {live.ref}")
        base = spec.base or (trained.get("base") or {}).get("ref") or (live.record.base.ref if live.record.base
                                                                        else None)
        if not base:
            raise InputError(f"{live.ref} records no base model", "pass --base BASE")
        data = training_set(live, spec.data, spec.base is not None)
        family = spec.template_family
        recorded_source = str(trained.get("chat_template_source") or "")
        if family is None and spec.base is None and recorded_source.startswith("family "):
            family = recorded_source.removeprefix("family ")  # the live version's base has no template of its own
        exported_as = dict(live.record.spec or {})
        step(f"retrain {spec.name}: {live.ref} is live; {len(data)} dataset(s), base {base}"
             + (" (new)" if spec.base else "") + f", recipe {'given' if spec.recipe else 'of ' + live.ref}")
        key = content_key([sha256_file(p) for p in data], base, recipe.to_json(), family,
                          {k: v for k, v in exported_as.items() if k not in ("adapter", "out", "base", "data")})
        work = spec.out or Path("retrains") / f"{spec.name}-{key[:12]}"
        adapter_dir, export_dir = work / "adapter", work / "export"
        finetune_spec = FinetuneSpec(data=tuple(data), base=base, recipe=recipe, out=adapter_dir,
                                     recipe_source=spec.recipe_source or f"like {live.ref}",
                                     allow_stacked=spec.allow_stacked, template_family=family)
        pipeline = Pipeline(work)
        pipeline.stage("finetune", key, [adapter_dir / TRAINING_RECORD],
                       lambda: _finetune_facts(finetune(finetune_spec).record),
                       announce=f"retrain: fine-tuning into {adapter_dir}")
        pipeline.stage("export", key, [export_dir / "localserve.json"],
                       lambda: {"export_dir": str(exporter(adapter_dir, export_dir, exported_as, spec.base is not None))},
                       announce=f"retrain: exporting as {live.ref} was exported, into {export_dir}", needs=("finetune",))
        stages = [pipeline.need("finetune").to_json(), pipeline.need("export").to_json()]
        training = read_training_record(adapter_dir) or {}
        record: ExportRecord = read_record(export_dir)
        if record.name != spec.name:
            raise InputError(f"the export of {live.ref} was named {record.name!r}, not {spec.name!r}",
                             f"retrain {record.name}")
        registration = register_version(export_dir, place, store=store, record=record)
        version = registration.version
        result = RetrainResult(version.ref, live.ref, registration.new, work, adapter_dir, export_dir, training, stages)
        done = {e["action"] for e in store.events(version=version.ref)}
        for stage in stages:
            _event(store, place, spec.name, version.ref, live.ref, f"retrain:{stage['name']}", done,
                   {**stage, "work_dir": str(work)})
        _event(store, place, spec.name, version.ref, live.ref, "retrain:register", done,
               {"manifest_digest": registration.manifest_digest, "models": list(registration.models),
                "datasets": training.get("datasets"), "base": training.get("base"), "recipe": training.get("recipe")})
        if spec.suite is not None:
            _gate(spec, place, store, version.ref, live.ref, result)
        if spec.ab is not None:
            result.ab = _into_ab(spec.name, live.ref, version.ref, spec.ab)
            store.add_event(place.id, f"{spec.name}:{LATEST}", "retrain:ab", version.ref, previous=live.ref,
                            payload={"percent": spec.ab, "weights": result.ab})
        return result
    finally:
        if own:
            store.close()


def _finetune_facts(record: dict) -> dict:
    return {k: record.get(k) for k in ("final_loss", "steps", "train_seconds", "train_tokens", "device")}


def _event(store, place, name: str, version: str, parent: str, action: str, done: set[str], payload: dict) -> None:
    """Record a stage once: a re-run that skipped it adds no second event."""
    if action not in done:
        store.add_event(place.id, f"{name}:{LATEST}", action, version, previous=parent, payload=payload)


def _gate(spec: RetrainSpec, place, store, version: str, parent: str, result: RetrainResult) -> None:
    """The candidate against NAME:latest on the suite: promoted with `spec.promote`, else judged and shown."""
    from ..lifecycle.evaluate import evaluate, format_runs
    from ..lifecycle.gate import compare, decide
    from ..lifecycle.promotion import PromotionRefused, promote
    from ..lifecycle.suites import load_suite

    suite = load_suite(spec.suite)
    alias = f"{spec.name}:{LATEST}"
    if spec.promote:
        try:
            promoted = promote(version, alias, place, store=store, suite=suite, note=f"retrain of {parent}")
        except PromotionRefused as e:
            result.table = e.message.split("\n", 1)[1] if "\n" in e.message else None
            raise
        result.promoted = True
        result.gate = {**promoted.comparison.to_json(), "decision": promoted.decision.to_json()}
        return
    host = getattr(place, "host", None)
    candidate = evaluate(suite, place.target_spec(version), label=version, ollama_host=host)
    store.add_evaluation(candidate, store.version(version))
    champion = None
    if place.manifest_digest(alias) is not None:
        champion = evaluate(suite, place.target_spec(alias), label=f"{alias} ({parent})", ollama_host=host)
        store.add_evaluation(champion, store.version(parent))
    comparison = compare(candidate, champion)
    decision = decide(comparison)
    result.table = format_runs([candidate] + ([champion] if champion else []))
    result.gate = {**comparison.to_json(), "decision": decision.to_json()}
    store.add_event(place.id, alias, "retrain:gate", version, previous=parent,
                    payload={"suite": str(suite.path), "suite_sha256": suite.sha256, **result.gate})
    if not decision.promote:
        raise PromotionRefused(f"the gate refuses {version} against {alias} ({parent}): " + "; ".join(decision.reasons)
                               + "\n" + result.table, f"{version} is registered and not promoted; the evidence is "
                                                      f"recorded (`localserve show {version}`)")
    step("the gate would promote (pass --promote, or --ab P for the A/B to decide):\n" + result.table)


def _into_ab(name: str, live: str, version: str, percent: float) -> dict:
    """Put `version` into NAME's experiment at `percent`, `live` the control with the rest. An arm the router
    has already is re-weighted at run time; a new one needs the router started again with it (its arms are
    fixed while it runs): same port, upstream and capture, in-flight requests finishing first."""
    from ..router import experiment as ex

    experiment = ex.load(ex.check_name(name))
    weights = {live: 100.0 - percent, version: percent}
    if {a.version for a in experiment.arms} >= set(weights):
        changed = ex.set_weights(name, {**{a.version: 0.0 for a in experiment.arms}, **weights},
                                 reason=f"retrain: {version} at {percent:g}%")
        return changed.weights()
    running = ex.is_running(experiment)
    if running:
        step(f"the router of {name} restarts with {version} as a new arm (in-flight requests finish first)")
        ex.stop(name)
    arms = [f"{live}={100.0 - percent:g}", f"{version}={percent:g}"]
    if not running:
        prepared = ex.prepare(name, arms, port=experiment.port, upstream=experiment.upstream,
                              capture=experiment.capture)
        return prepared.weights()
    started = ex.start(name, arms, port=experiment.port, upstream=experiment.upstream, capture=experiment.capture)
    return started.weights()
