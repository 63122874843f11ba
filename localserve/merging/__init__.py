"""Model merging with mergekit (used as a library): recipes, validation, and the merge itself.

    recipe (mergekit YAML, or the shorthand)  -> validate (one clear line per problem)
    -> LoRA inputs merged into their base     -> mergekit run_merge (lazy, bounded shards)

`export --merge` runs `merge_models` as its "merge" stage; see localserve.exports.gguf.
"""

from .methods import method_names, method_spec, needs_base
from .recipe import Recipe, load_recipe, shorthand_recipe
from .run import MergeResult, MergeSpec, merge_models

__all__ = ["MergeResult", "MergeSpec", "Recipe", "load_recipe", "merge_models", "method_names", "method_spec",
           "needs_base", "shorthand_recipe"]
