"""The dated data tables planning reads: devices (memory) and hosted-API prices.

Both live as JSON in `localserve/data/`; every entry carries the `date` of its figure and the
`source` it comes from, and planning output quotes them. Users extend or override a table with
their own file of the same shape (an entry with the same name replaces the shipped one):

    {"devices": [{"name": "MyBox", "kind": "gpu", "memory_gib": 20, "date": "...", "source": "..."}]}
    {"prices":  [{"name": "my-api", "input_per_1m": 0.2, "output_per_1m": 0.8, "date": "...", "source": "..."}]}

given as `--devices FILE` / `LOCALSERVE_DEVICES`, `--prices FILE` / `LOCALSERVE_PRICES`.
Nothing here is fetched from the network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, UnknownName

DATA = Path(__file__).resolve().parent.parent / "data"
GIB = 1 << 30
DEVICE_KINDS = ("gpu", "unified", "cpu")


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # gpu: discrete, layers can be split with CPU RAM; unified: Apple; cpu: RAM only
    memory_bytes: int
    usable_fraction: float
    date: str
    source: str
    vendor: str = ""

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_bytes * self.usable_fraction)


@dataclass(frozen=True)
class ApiPrice:
    name: str
    input_per_1m: float
    output_per_1m: float
    date: str
    source: str
    provider: str = ""
    frontier: bool = False

    def blended_per_1m(self, input_share: float) -> float:
        """USD per 1M tokens when `input_share` of all tokens are input (prompt) tokens."""
        return input_share * self.input_per_1m + (1 - input_share) * self.output_per_1m


def _read_table(path: Path, key: str) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"table file {path} does not exist", f"check the path given for the {key} table") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}", f"fix the file; it must hold {{\"{key}\": [...]}}") from None
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise InputError(f"{path} has no {key!r} list", f"the file must hold {{\"{key}\": [{{...}}, ...]}}")
    return rows


def _require(row: dict, fields: tuple[str, ...], path: Path) -> None:
    if not isinstance(row, dict):
        raise InputError(f"{path}: entry {row!r} is not an object",
                         "every entry is {\"name\": ..., its figures, \"date\": ..., \"source\": ...}")
    missing = [f for f in fields if f not in row]
    if missing:
        raise InputError(f"{path}: entry {row.get('name', row)!r} lacks {', '.join(missing)}",
                         "every entry needs a name, its figures, a date and a source")


def _number(row: dict, key: str, path: Path) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise InputError(f"{path}: entry {row.get('name')!r} has {key} {row[key]!r}, not a number") from None


def _merged(key: str, shipped: str, user_file: str | os.PathLike | None, env: str) -> tuple[list[tuple[dict, Path]], list[Path]]:
    paths = [DATA / shipped]
    extra = user_file or os.environ.get(env)
    if extra:
        paths.append(Path(extra))
    by_name: dict[str, tuple[dict, Path]] = {}
    for path in paths:
        for row in _read_table(path, key):
            _require(row, ("name",), path)
            by_name[str(row.get("name", "")).lower()] = (row, path)
    return list(by_name.values()), paths


def load_devices(user_file: str | os.PathLike | None = None) -> dict[str, Device]:
    """Devices by name: the shipped table, then the user's file (`--devices` or $LOCALSERVE_DEVICES)."""
    rows, _ = _merged("devices", "devices.json", user_file, "LOCALSERVE_DEVICES")
    out: dict[str, Device] = {}
    for row, path in rows:
        _require(row, ("name", "kind", "memory_gib", "date", "source"), path)
        if row["kind"] not in DEVICE_KINDS:
            raise InputError(f"{path}: device {row['name']!r} has kind {row['kind']!r}",
                             f"use one of {', '.join(DEVICE_KINDS)}")
        fraction = _number({"usable_fraction": 1.0, **row}, "usable_fraction", path)
        if not 0 < fraction <= 1 or _number(row, "memory_gib", path) <= 0:
            raise InputError(f"{path}: device {row['name']!r} needs memory_gib > 0 and 0 < usable_fraction <= 1")
        out[row["name"]] = Device(name=row["name"], kind=row["kind"], memory_bytes=int(float(row["memory_gib"]) * GIB),
                                  usable_fraction=fraction, date=str(row["date"]), source=str(row["source"]),
                                  vendor=str(row.get("vendor", "")))
    return out


def load_prices(user_file: str | os.PathLike | None = None) -> dict[str, ApiPrice]:
    """API prices by model name: the shipped table, then `--prices` or $LOCALSERVE_PRICES."""
    rows, _ = _merged("prices", "api_prices.json", user_file, "LOCALSERVE_PRICES")
    out: dict[str, ApiPrice] = {}
    for row, path in rows:
        _require(row, ("name", "input_per_1m", "output_per_1m", "date", "source"), path)
        if _number(row, "input_per_1m", path) < 0 or _number(row, "output_per_1m", path) < 0:
            raise InputError(f"{path}: API {row['name']!r} has a negative price")
        out[row["name"]] = ApiPrice(name=row["name"], input_per_1m=float(row["input_per_1m"]),
                                    output_per_1m=float(row["output_per_1m"]), date=str(row["date"]),
                                    source=str(row["source"]), provider=str(row.get("provider", "")),
                                    frontier=bool(row.get("frontier", False)))
    return out


def _lookup(table: dict, name: str, kind: str, hint: str):
    for key, value in table.items():
        if key.lower() == name.lower():
            return value
    raise UnknownName(kind, name, sorted(table), hint=hint)


def device(name: str, user_file: str | os.PathLike | None = None) -> Device:
    return _lookup(load_devices(user_file), name, "device",
                   "pick one of these, or describe yours in a file given with --devices")


def api_price(name: str, user_file: str | os.PathLike | None = None) -> ApiPrice:
    return _lookup(load_prices(user_file), name, "API model",
                   "pick one of these, or add yours in a file given with --prices")


def this_machine() -> Device:
    """The RAM of the machine we run on, as a CPU-only device (measured, not from the table)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Device(name="this-machine", kind="cpu", memory_bytes=int(total), usable_fraction=0.85,
                  date="now", source="os.sysconf (physical RAM of this machine)")
