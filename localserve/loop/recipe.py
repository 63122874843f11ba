"""A fine-tuning recipe: a small YAML validated into one typed, immutable `Recipe`.

    rank: 16                 # LoRA rank
    alpha: 32                # LoRA alpha (the update is scaled by alpha / rank)
    dropout: 0.0             # LoRA dropout
    target_modules: all-linear   # or a list: [q_proj, v_proj]
    learning_rate: 0.001
    steps: 60                # or epochs: 3 (not both)
    batch_size: 4
    max_seq_length: 512      # tokens; longer conversations are left out, and said so
    seed: 0

Every key is optional (the defaults are `Recipe()`'s); an unknown key is refused with the valid ones
listed. The recipe is recorded with every fine-tune (`training.json`) and so with the version made of
it, which `finetune --like NAME:vN` and `retrain` read back with `Recipe.from_json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

ALL_LINEAR = "all-linear"  # peft's own spelling: every linear layer but the output head


@dataclass(frozen=True)
class Recipe:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    learning_rate: float = 2e-4
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 4
    max_seq_length: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        where = "the recipe"
        _whole(where, "rank", self.rank, 1)
        _number(where, "alpha", self.alpha, above=0)
        _number(where, "dropout", self.dropout, at_least=0, below=1)
        _number(where, "learning_rate", self.learning_rate, above=0)
        if self.steps is not None:
            _whole(where, "steps", self.steps, 1)
        if self.epochs is not None:
            _number(where, "epochs", self.epochs, above=0)
        if self.steps is not None and self.epochs is not None:
            raise InputError(f"{where} gives both steps ({self.steps}) and epochs ({self.epochs:g})",
                             "keep one of them: steps counts optimizer steps, epochs passes over the data")
        _whole(where, "batch_size", self.batch_size, 1)
        _whole(where, "max_seq_length", self.max_seq_length, 8)
        _whole(where, "seed", self.seed, 0)
        modules = self.target_modules
        if isinstance(modules, list):
            modules = tuple(modules)
        if isinstance(modules, tuple):
            if not modules or not all(isinstance(m, str) and m.strip() for m in modules):
                raise InputError(f"{where}: target_modules must be {ALL_LINEAR!r} or a list of module names, "
                                 f"not {list(modules)!r}", "e.g. target_modules: [q_proj, k_proj, v_proj, o_proj]")
        elif modules != ALL_LINEAR:
            raise InputError(f"{where}: target_modules must be {ALL_LINEAR!r} or a list of module names, not "
                             f"{modules!r}", "e.g. target_modules: [q_proj, v_proj]")
        object.__setattr__(self, "target_modules", modules)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "learning_rate", float(self.learning_rate))

    @property
    def epochs_or_default(self) -> float:
        """The passes over the data when the recipe counts neither steps nor epochs."""
        return self.epochs if self.epochs is not None else 3.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "the recipe") -> "Recipe":
        return _build(data, where)


KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


def load_recipe(path: Path) -> Recipe:
    """The recipe in a YAML file; InputError naming the file (and the line of a syntax error)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such recipe file: {path}", "pass a YAML file (keys: " + ", ".join(KEYS) + ")") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the recipe {path} ({e})", "pass a UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"the recipe {path} is not valid YAML{at}: {problem}", "fix that line") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"the recipe {path} holds a YAML {type(data).__name__}, not a mapping of keys",
                         "write one key per line, e.g. rank: 16 (keys: " + ", ".join(KEYS) + ")")
    return _build(data, f"the recipe {path}")


def _build(data: dict, where: str) -> Recipe:
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in {where}; valid: {', '.join(KEYS)}",
                         "rename or remove it")
    data = dict(data)
    for key in ("alpha", "dropout", "learning_rate", "epochs"):
        # PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string, not a float: the way people write rates
        if isinstance(data.get(key), str):
            try:
                data[key] = float(data[key])
            except ValueError:
                pass
    try:
        return Recipe(**data)
    except InputError as e:
        e.message = e.message.replace("the recipe", where, 1)
        e.args = (e.message,)
        raise


def _whole(where: str, key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where}: {key} must be a whole number of at least {minimum}, not {value!r}")


def _number(where: str, key: str, value: Any, *, above: float | None = None, at_least: float | None = None,
            below: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and above is not None:
        ok = value > above
    if ok and at_least is not None:
        ok = value >= at_least
    if ok and below is not None:
        ok = value < below
    if not ok:
        bounds = [f"above {above:g}" if above is not None else "", f"at least {at_least:g}" if at_least is not None
                  else "", f"below {below:g}" if below is not None else ""]
        raise InputError(f"{where}: {key} must be a number {' and '.join(b for b in bounds if b)}, not {value!r}")
