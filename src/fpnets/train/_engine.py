"""A typed-TOML engine: dataclass sections, type checking, ``key=value`` overrides, TOML output.

Nothing here knows a task, a model or a dataset: a *section* is a dataclass whose annotations give
the types of its keys; it may declare ``choices`` (a ClassVar mapping a key to its valid values)
and a ``check()`` method that raises :class:`ConfigError` for values of the right type but out of
range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "unset"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_describe(item)}"
    if typing.get_origin(tp) is dict:
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp``; ints are accepted (and converted) for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() == "none" and type(None) in args and str not in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return plain(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used
        raise TypeError(f"unsupported config annotation {tp!r}")
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    raise ConfigError(f"{where} must be {_describe(tp)}, got {shown}")


def plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (for comparison and TOML output)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def field_names(cls: type) -> list[str]:
    """The keys of a section dataclass."""
    return [f.name for f in dataclasses.fields(cls)]


def field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def build_section(cls: type, table: Any, where: str) -> Any:
    """An instance of section ``cls`` from a TOML table; unknown keys, wrong types and values
    outside the section's ``choices`` raise :class:`ConfigError` naming the valid ones."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = [k for k in table if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in [{where}]; valid keys: {', '.join(names)}"
        )
    choices: Mapping[str, tuple[Any, ...]] = getattr(cls, "choices", {})
    values = {}
    for key, value in table.items():
        full = f"{where}.{key}"
        values[key] = coerce(value, hints[key], full)
        if key in choices and values[key] is not None and values[key] not in choices[key]:
            raise ConfigError(f"{full} must be one of {', '.join(map(str, choices[key]))}, got {value!r}")
    section = cls(**values)
    check = getattr(section, "check", None)
    if check is not None:
        check()
    return section


def parse_value(text: str) -> Any:
    """A ``--set`` value parsed as TOML (``1e-4``, ``true``, ``[1, 2]``, ``{m = 5}``); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"solver.tol=1e-4"`` → (["solver", "tol"], 0.0001)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
    return [p.strip() for p in parts], parse_value(value.strip())


def set_path(
    table: dict[str, Any], sections: Mapping[str, type], path: list[str], value: Any, item: str
) -> None:
    """Put ``value`` at ``path`` of ``table`` after checking the section and the key exist."""
    section = path[0]
    if section not in sections:
        raise ConfigError(
            f"override {item!r}: unknown section {section!r}; valid sections: {', '.join(sections)}"
        )
    if len(path) == 1:
        raise ConfigError(f"override {item!r}: name a key inside [{section}], e.g. {section}.KEY=VALUE")
    cls = sections[section]
    names = field_names(cls)
    if path[1] not in names:
        raise ConfigError(
            f"override {item!r}: unknown key {path[1]!r} in [{section}]; valid keys: {', '.join(names)}"
        )
    if len(path) > 2 and typing.get_origin(field_type(cls, path[1])) is not dict:
        raise ConfigError(f"override {item!r}: {section}.{path[1]} is not a table")
    node = table.setdefault(section, {})
    for part in path[1:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base``, table by table."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = plain(value)
    return out


def diff_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested tables (``options`` tables compared whole)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        full = f"{prefix}{key}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and not full.endswith("options"):
            keys += diff_keys(va, vb, full + ".")
        elif va != vb:
            keys.append(full)
    return keys


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; unreadable, binary or malformed files raise :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start}); a config must be TOML text"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{" + inner + "}" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(table: Mapping[str, Any]) -> str:
    """Nested tables (two levels: sections of keys) as TOML; None values are left out."""
    lines: list[str] = []
    for section, body in table.items():
        if lines:
            lines.append("")
        lines.append(f"[{_toml_key(section)}]")
        for key, value in body.items():
            if value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
