"""Reading the stages' frozen-dataclass configs from YAML, with errors that name the field.

Every stage config (`SFTConfig`, `GRPOConfig`, `DistillConfig`) is a frozen dataclass whose
fields carry their help as comments; `config_from_mapping` checks names (suggesting the closest
one for a typo) and scalar types, coerces ints (and YAML 1.1's `1e-5` strings) to floats and
lists to tuples, and builds nested dataclass fields from mappings. The YAML file of a stage may
hold only that stage's fields, or sections (`sft:`, `grpo:`, `distill:`) of which each stage
reads its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kap.training.errors import TrainingError

C = TypeVar("C")


class ConfigError(TrainingError, ValueError):
    """A config field is unknown, of the wrong type or out of range; the message names it."""


def _type_ok(hint: Any, value: Any) -> bool:
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(arm, value) for arm in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list | tuple)
    if dataclasses.is_dataclass(origin):
        return isinstance(value, Mapping | origin)
    return isinstance(value, origin)


# YAML 1.1 (PyYAML) reads `1e-5` as a string: it wants `1.0e-5`. A float field takes both.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _accepts_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _coerce(owner: str, name: str, hint: Any, value: Any, error: type[ConfigError]) -> Any:
    if isinstance(value, str) and _accepts_float(hint) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)
    if not _type_ok(hint, value):
        shown = getattr(hint, "__name__", None) or str(hint)
        quote = ""
        if isinstance(value, bool) and _type_ok(hint, "text"):
            quote = " (YAML reads off/on/no/yes as booleans: quote the word, e.g. 'off')"
        raise error(
            f"{owner}.{name}: expected {shown}, got {type(value).__name__} {value!r}{quote}"
        )
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return config_from_mapping(hint, value, error=error, where=f"{owner}.{name}")
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if value is not None and _accepts_float(hint):
        return float(value) if not isinstance(value, bool) else value
    return value


def config_from_mapping(
    cls: type[C], values: Mapping[str, Any], *, error: type[ConfigError] = ConfigError,
    where: str | None = None,
) -> C:  # fmt: skip
    """`cls(**values)` after checking every name and type against the dataclass fields."""
    owner = where or cls.__name__
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"{owner}: unknown field {name!r}{hint}")
        kwargs[name] = _coerce(owner, name, hints[name], value, error)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise error(f"{owner}: {exc}") from exc


def config_from_yaml(
    cls: type[C], path: str | Path, *, section: str | None = None,
    error: type[ConfigError] = ConfigError,
) -> C:  # fmt: skip
    """A config from a YAML file: the `section` mapping when the file has it, else the whole."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read the config: {exc}") from exc
    if section is not None and isinstance(data, Mapping) and section in data:
        data = data[section]
    if not isinstance(data, Mapping):
        raise error(f"{path}: expected a mapping of {cls.__name__} fields")
    try:
        return config_from_mapping(cls, data, error=error)
    except ConfigError as exc:
        raise error(f"{path}: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready values (what checkpoints and training_runs rows store)."""
    values: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    return values
