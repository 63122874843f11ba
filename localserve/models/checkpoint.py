"""Which model parameter each tensor of a checkpoint becomes, as transformers' weight conversion maps it.

transformers 5 loads some checkpoints under other names or in other layouts than they are stored:
Mixtral's `block_sparse_moe` becomes `mlp`, and MoE experts stored one tensor per expert
(`mlp.experts.3.gate_proj.weight`) are stacked into one parameter per layer (`mlp.experts.gate_up_proj`:
every expert's gate_proj rows, then its up_proj rows). peft names the parameter it adapts
(`target_parameters`), and its merged model is saved back in the stored layout; a merge that streams
the stored tensors must know which part of which parameter each of them is.

    model_parameters(config, shapes) -> {parameter name: Parameter}

Read from config.json and the safetensors headers only, through transformers' own conversion tables
(the ones `from_pretrained` applies), so the map cannot drift from what transformers loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """One stored tensor's part of a model parameter."""

    tensor: str  # the stored tensor's name
    expert: int | None = None  # the expert it holds of a stacked (experts, ...) parameter; None: every expert
    rows: tuple[int, int] | None = None  # (start, stop) of the rows it holds (per expert); None: all of them


@dataclass(frozen=True)
class Parameter:
    """A model parameter and the stored tensors it is built from."""

    name: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    # Why a merge cannot be mapped onto the stored tensors (transformers builds the parameter with an
    # operation this module does not follow); None when it can.
    unmapped: str | None = None

    @property
    def stored_whole(self) -> str | None:
        """The stored tensor that is this parameter as it is, if one is."""
        if len(self.pieces) == 1 and self.pieces[0].expert is None and self.pieces[0].rows is None:
            return self.pieces[0].tensor
        return None


def model_parameters(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, Parameter]:
    """Every parameter the model builds from the stored tensors `shapes` (name -> shape), under the name
    transformers gives it. A tensor stored as the parameter it is maps to itself."""
    renamings, converters = _conversions(config)
    params: dict[str, Parameter] = {}
    stacked: dict[str, tuple[object, list[tuple[int, str, str]]]] = {}  # parameter -> (converter, [(source, expert, tensor)])
    for tensor, shape in shapes.items():
        name, converter, source = _rename(tensor, renamings, converters)
        if converter is None:
            params[name] = Parameter(name, tuple(shape), (Piece(tensor),))
            continue
        expert = _expert_index(converter, source, _apply_renamings(tensor, renamings))
        stacked.setdefault(name, (converter, []))[1].append((converter.source_patterns.index(source), expert, tensor))
    for name, (converter, members) in stacked.items():
        params[name] = _stacked_parameter(name, converter, members, shapes)
    return params


def _conversions(config: dict) -> tuple[list, list]:
    """(renamings, converters) transformers applies when loading this model's checkpoint: the table of
    the model class, else of its model_type, and the legacy renamings every model gets."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:  # a transformers before v5 loads every checkpoint as stored
        return [], []
    architectures = config.get("architectures") or []
    table = None
    if architectures:
        table = get_checkpoint_conversion_mapping(architectures[0])
    if table is None and config.get("model_type"):
        table = get_checkpoint_conversion_mapping(config["model_type"])
    table = list(table or []) + list(get_checkpoint_conversion_mapping("legacy") or [])
    return ([t for t in table if isinstance(t, WeightRenaming)],
            [t for t in table if isinstance(t, WeightConverter)])


def _apply_renamings(tensor: str, renamings: list) -> str:
    for renaming in renamings:
        tensor, _ = renaming.rename_source_key(tensor)
    return tensor


def _rename(tensor: str, renamings: list, converters: list):
    """(parameter name, the converter that builds it or None, the converter's source pattern it matched)."""
    name = _apply_renamings(tensor, renamings)
    for converter in converters:
        renamed, source = converter.rename_source_key(name)
        if source is not None:
            return renamed, converter, source
    return name, None, None


def _expert_index(converter, source: str, renamed: str) -> int | None:
    """The expert number a per-expert source pattern (`mlp.experts.*.gate_proj.weight`) matched in `renamed`."""
    if source.count("*") != 1:
        return None
    pattern = r"\.".join(re.escape(part) for part in source.split(".")).replace(re.escape("*"), r"(\d+)")
    found = re.search(pattern + r"(?!\w)", renamed)
    return int(found.group(1)) if found else None


def _stacked_parameter(name: str, converter, members: list[tuple[int, int | None, str]],
                       shapes: dict[str, tuple[int, ...]]) -> Parameter:
    """A parameter transformers stacks from per-expert tensors (MergeModulelist along dim 0), each source's
    rows after the previous source's (Concatenate along dim 1) — the only conversions a merge is mapped
    through here; any other leaves the parameter `unmapped`."""
    from transformers.core_model_loading import Concatenate, MergeModulelist

    ops = list(converter.operations)
    kinds = [(type(op).__name__, getattr(op, "dim", None)) for op in ops]
    n_sources = len(converter.source_patterns)
    tensors = tuple(Piece(t) for t in sorted(t for _, _, t in members))
    experts = sorted({e for _, e, _ in members if e is not None})
    shaped = [tuple(shapes[t]) for _, _, t in members]
    plain = (len(ops) >= 1 and isinstance(ops[0], MergeModulelist) and ops[0].dim == 0
             and all(isinstance(op, Concatenate) and op.dim == 1 for op in ops[1:2]) and len(ops) <= 2
             and (len(ops) == 2 or n_sources == 1))
    complete = (all(e is not None for _, e, _ in members) and experts == list(range(len(experts)))
                and len(members) == len(experts) * n_sources and all(len(s) == 2 for s in shaped))
    if not (plain and complete):
        return Parameter(name, (), tensors, unmapped=f"transformers builds it from {len(members)} stored tensors "
                                                     f"with {', '.join(f'{k}(dim={d})' for k, d in kinds)}")
    rows_of = {}
    for source, _, tensor in members:
        rows_of.setdefault(source, shapes[tensor][0])
    starts, start = {}, 0
    for source in range(n_sources):
        starts[source] = start
        start += rows_of[source]
    columns = shaped[0][1]
    pieces = tuple(Piece(t, e, (starts[s], starts[s] + rows_of[s]) if n_sources > 1 else None)
                   for s, e, t in sorted(members, key=lambda m: (m[1], m[0])))
    return Parameter(name, (len(experts), start, columns), pieces)
