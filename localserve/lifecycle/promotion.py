"""Promote and roll back: an alias (e.g. demo:latest) moved between versions where they live, every
decision recorded with its evidence, and every rollback restoring the exact manifest digest the
alias had before.

    promote("demo:v3", "demo:latest", place, suite=suite)   # the gate decides; refused -> PromotionRefused
    rollback("demo:latest", place)                         # back to the digest live before
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError, LocalserveError, OllamaError
from ..ollama.names import parse_name
from ..progress import step
from .gate import Comparison, Decision, compare, decide
from .places import Place
from .store import VersionStore


class PromotionRefused(LocalserveError):
    """The gate refused a candidate; the message holds the comparison."""


@dataclass(frozen=True)
class PromotionResult:
    alias: str
    version: str
    previous: str | None
    digest: str | None
    comparison: Comparison | None = None
    decision: Decision | None = None

    def to_json(self) -> dict:
        return {"alias": self.alias, "version": self.version, "previous": self.previous, "digest": self.digest,
                "comparison": self.comparison.to_json() if self.comparison else None,
                "decision": self.decision.to_json() if self.decision else None}


def import_legacy_history(store: VersionStore) -> None:
    """Bring the promote history of earlier releases (history.json) into the store, once."""
    import os
    from pathlib import Path

    from ..paths import state_dir

    cache = os.environ.get("LOCALSERVE_HOME")
    for path in (state_dir() / "history.json",
                 (Path(cache).expanduser() if cache else Path.home() / ".config" / "localserve") / "history.json"):
        n = store.import_history(path)
        if n:
            step(f"imported {n} promote/rollback events from {path} into {store.path} (the file is kept, no longer read)")
            return


def promote(version: str, alias: str, place: Place, *, store: VersionStore | None = None, suite=None,
            min_delta: float = 0.0, require_significant: bool = False, alpha: float = 0.05, note: str | None = None,
            seed: int = 0, max_tokens: int = 128, evidence: dict | None = None) -> PromotionResult:
    """Point `alias` at `version` on `place`. With `suite` (lifecycle.suites.Suite), only if the gate says
    so: the candidate and the alias's current content are evaluated on it where they live. `evidence`
    (e.g. an A/B verdict) is recorded with the decision, beside the gate's."""
    store = store or VersionStore()
    import_legacy_history(store)
    v, a = parse_name(version).display, parse_name(alias).display
    if parse_name(version).key() == parse_name(alias).key():
        raise InputError(f"cannot promote {v} onto itself", "name a version, e.g. demo:v2 --as demo:latest")
    digest = place.manifest_digest(v)
    if digest is None:
        raise OllamaError(f"{v} is not on {place.id}", "register it first (`localserve register EXPORT_DIR`), "
                                                       "or list the models with `localserve ls`")
    live = store.live_promotions(place.id, a)
    previous = live[-1]["version"] if live else None
    comparison = decision = None
    evidence = dict(evidence or {})
    if suite is not None:
        from .evaluate import evaluate, format_runs

        version_row = _version_or_none(store, v)
        host = getattr(place, "host", None)  # a server place: evaluate there, not at $OLLAMA_HOST
        candidate = evaluate(suite, place.target_spec(v), seed=seed, max_tokens=max_tokens, label=v,
                             ollama_host=host)
        evaluations = [store.add_evaluation(candidate, version_row)]
        champion = None
        if place.manifest_digest(a) is not None:
            champion = evaluate(suite, place.target_spec(a), seed=seed, max_tokens=max_tokens, ollama_host=host,
                                label=f"{a} ({previous or 'unrecorded'})")
            evaluations.append(store.add_evaluation(champion, _version_or_none(store, previous)))
        comparison = compare(candidate, champion)
        decision = decide(comparison, min_delta, require_significant, alpha)
        evidence.update({"suite": str(suite.path), "suite_sha256": suite.sha256, "evaluations": evaluations,
                         **comparison.to_json(), "decision": decision.to_json()})
        table = format_runs([candidate] + ([champion] if champion else []))
        if not decision.promote:
            store.add_event(place.id, a, "refuse", v, previous=previous, digest=place.manifest_digest(a),
                            payload={**evidence, "note": note})
            raise PromotionRefused(f"{v} is not promoted to {a}: " + "; ".join(decision.reasons) + "\n" + table,
                                   f"the evidence is recorded (`localserve show {v}`)")
        step("the gate promotes:\n" + table)
    place.copy(v, a)
    manifest = place.manifest(a)
    store.add_event(place.id, a, "promote", v, previous=previous, digest=digest,
                    payload={**evidence, "note": note, "manifest": manifest.decode() if manifest else None})
    step(f"{a} -> {v}" + (f" (was {previous})" if previous else ""))
    return PromotionResult(a, v, previous, digest, comparison, decision)


def rollback(alias: str, place: Place, *, store: VersionStore | None = None) -> PromotionResult:
    """Point `alias` back at the manifest digest it had before its last promotion."""
    store = store or VersionStore()
    import_legacy_history(store)
    a = parse_name(alias).display
    live = store.live_promotions(place.id, a)
    if len(live) < 2:
        raise InputError(f"{a} on {place.id} has no earlier promoted version to roll back to",
                         f"promote one first: `localserve promote NAME:vN --as {a}`")
    current, previous = live[-1], live[-2]
    want = previous["digest"]
    if place.manifest_digest(previous["version"]) == want:
        place.copy(previous["version"], a)
    else:  # the version's tag was re-created or removed: restore the manifest itself
        step(f"{previous['version']} no longer has the digest it was promoted with ({want[:19]}); restoring that "
             "manifest")
        registration = store.registration_by_digest(place.id, want)
        manifest = previous["payload"].get("manifest")
        place.restore(a, want, registration.recipe if registration else {},
                      manifest.encode() if manifest else (registration.manifest if registration else None))
    now_digest = place.manifest_digest(a)
    if now_digest != want:
        raise OllamaError(f"rolling {a} back gave digest {now_digest}, not {want}", "promote the version explicitly")
    store.add_event(place.id, a, "rollback", previous["version"], previous=current["version"], digest=want,
                    rolls_back=current["id"])
    step(f"{a} -> {previous['version']} (rolled back from {current['version']}, digest {want[:19]})")
    return PromotionResult(a, previous["version"], current["version"], want)


def _version_or_none(store: VersionStore, ref: str | None):
    from .store import parse_version_ref

    if not ref:
        return None
    try:
        parse_version_ref(ref)
        return store.version(ref)
    except InputError:
        return None
