"""The merge methods, straight from mergekit's own registry (names are the ones users type)."""

from __future__ import annotations

from ..errors import UnknownName


def _registry() -> dict:
    from mergekit.merge_methods import registered_methods

    return {m.spec.name: m.spec for m in registered_methods()}


def method_names() -> list[str]:
    return sorted(_registry())


def method_spec(name: str):
    """mergekit's `MergeMethodSpec` for `name` (parameters, input contract); unknown -> UnknownName."""
    specs = _registry()
    if name not in specs:
        raise UnknownName("merge method", name, sorted(specs), "see `localserve merge-methods`")
    return specs[name]


def needs_base(name: str) -> bool:
    from mergekit.merge_methods.base import BasePolicy

    return method_spec(name).contract.base == BasePolicy.REQUIRED


def parameter_names(name: str) -> list[str]:
    return [p.name for p in method_spec(name).parameters]
