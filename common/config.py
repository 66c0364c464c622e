"""Typed configs: nested dataclasses filled from YAML (``yaml.safe_load``), strictly checked.

Every config in codiray is a dataclass tree. ``from_dict`` walks the tree by its type annotations,
so an unknown key, a wrong type or an out-of-set literal is reported as one line naming the file,
the dotted key and what is wrong. ``save_config`` writes the resolved config next to a run's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from common.errors import ConfigError

T = TypeVar("T")
_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (nested dataclasses, tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(source, key, errors[0] if len(errors) == 1 else "; or ".join(errors))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(source, key, f"expected a list of {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {_describe(value)}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, source, key): _coerce(v, v_tp, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected bool, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            # PyYAML reads `1e-4` (no dot) as a string: the most common way to write a learning rate.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"expected float, got {_describe(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected int, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected str, got {_describe(value)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
    return value


def from_dict(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(source, key, f"unknown key (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], source, key)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(source, key, "required key is missing")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ range checks
        raise ConfigError(source, prefix, str(err)) from None
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a dataclass config (tuples become lists), ready for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "", "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), "", f"not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.lr=1e-4", "model.channels=[32,64]"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError("<command line>", text, "override must look like key=value")
        dotted, raw = text.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("<command line>", ".".join(parts[:depth + 1]),
                                  f"given both a value and nested keys ({dotted})")
        node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                base: T | None = None) -> T:
    """Resolve a config: ``base`` (a recipe) <- YAML file at ``path`` <- ``key=value`` overrides."""
    data = to_dict(base) if base is not None else {}
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    cfg = from_dict(cls, data, source=str(path) if path is not None else "<recipe>")
    if overrides:
        cfg = from_dict(cls, deep_merge(to_dict(cfg), parse_overrides(list(overrides))),
                        source="<command line>")
    return cfg


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the record of what a run actually used)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
