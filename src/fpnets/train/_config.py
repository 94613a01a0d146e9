"""Typed training configuration: TOML files, per-variant overrides, ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or override that cannot be used (unknown key, wrong type, bad value)."""


VARIANTS = ("jfb", "jacobian", "explicit", "contractive")
"""Values of ``model.variant`` in a config file."""

MODEL_VARIANTS = {"jfb": "fpn", "jacobian": "jacobian", "explicit": "explicit", "contractive": "contractive"}
"""How a config variant maps onto the ``variant`` argument of :func:`fpnets.models.build_model`."""


@dataclass
class DataConfig:
    """``[data]``: which dataset and how it is batched."""

    name: str = "digits"
    """Dataset name for :func:`fpnets.data.load_splits` (digits, mnist, fashion-mnist, svhn, cifar10)."""
    val_size: int | None = None
    """Validation samples held out of the training set; unset: the dataset's default (5000; digits 270)."""
    batch_size: int = 100
    eval_batch_size: int = 500
    augment: str = "none"
    """Training augmentation: "none", "cifar10" (the paper's flip/crop/erasing, reference constants)
    or "cifar10-pixel" (the same with grey padding and black erasing)."""
    download: bool | None = None
    """Allow downloading missing files; unset: the data package's default."""
    limit: int = 0
    """Use only the first ``limit`` samples of every split (smoke tests); 0 = all."""


@dataclass
class ModelConfig:
    """``[model]``: architecture and variant; unset values take the architecture's defaults."""

    arch: str = "digits"
    variant: str = "jfb"
    """One of jfb, jacobian, explicit, contractive; selects the ``[variants.<name>]`` table too."""
    gamma: float | None = None
    latent_blocks: int | None = None
    lipschitz: str | None = None
    """"reference" (the reference code's rescaling rule) or "none"; unset: the model's default."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further keyword options for :func:`fpnets.models.build_model`."""


@dataclass
class SolverConfig:
    """``[solver]``: the forward fixed-point solver (ignored by the explicit variant)."""

    name: str = "picard"
    tol: float | None = None
    """Per-sample residual tolerance (max over pixels of the channel norm); unset: the architecture's."""
    max_iter: int | None = None
    """Iteration cap; unset: the architecture's (its Jacobian-variant cap for variant "jacobian")."""
    options: dict[str, Any] = field(default_factory=dict)
    """Solver-specific options, e.g. ``{m = 5}`` for Anderson or ``{damping = 0.5}`` for Picard."""


@dataclass
class BackwardConfig:
    """``[backward]``: how gradients pass the fixed point (jfb, ift, neumann, unrolled)."""

    name: str | None = None
    """Unset: the variant's default (JFB; IFT with CG on the normal equations for "jacobian")."""
    options: dict[str, Any] = field(default_factory=dict)
    """E.g. ``{k = 5}`` for neumann, ``{solver = {name = "cg", tol = 1e-4, max_iter = 50}}`` for ift."""


@dataclass
class OptimConfig:
    """``[optim]``: Adam and an optional step schedule."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "none"
    """"none" (constant learning rate) or "step" (StepLR)."""
    step_size: int = 100
    """StepLR period in epochs."""
    step_gamma: float = 0.5
    """StepLR factor."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = off."""


@dataclass
class TrainConfig:
    """``[train]``: epochs, seed, model selection and early stopping (all on the validation split)."""

    epochs: int = 10
    seed: int = 0
    select: str = "val_acc"
    """Best-epoch criterion: "val_acc" (ties: lower val loss) or "val_loss"."""
    patience: int = 0
    """Stop after this many epochs without a better validation score; 0 = never stop early."""
    checkpoint_every: int = 0
    """Also checkpoint every this many optimizer steps inside an epoch (mid-epoch resume); 0 = only
    at the end of every epoch."""


@dataclass
class RunConfig:
    """``[run]``: where outputs go and how the process runs."""

    name: str = ""
    """Run name prefix; runs go to ``<root>/<name>-<variant>-<timestamp>``. Empty: the dataset name."""
    root: str = "runs"
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""
    dtype: str = "float32"
    threads: int = 0
    """torch intra-op threads; 0 = torch's default."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True)`` while training on CPU."""
    channels_last: bool = True
    """Channels-last (NHWC) weights and activations: same values, faster convolutions on CPU."""
    progress: bool = True
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed."""
    plots: bool = True


@dataclass
class Config:
    """A complete, resolved training configuration (see ``configs/*.toml``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    backward: BackwardConfig = field(default_factory=BackwardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (None values kept)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """TOML text that :func:`config_from_dict` / :func:`load_config` read back to an equal config."""
        return dumps_toml(self.to_dict())

    @property
    def run_name(self) -> str:
        """``<run.name or data.name>-<variant>``: the prefix of this config's run directories."""
        return f"{self.run.name or self.data.name}-{self.model.variant}"


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.variant": VARIANTS,
    "optim.scheduler": ("none", "step"),
    "train.select": ("val_acc", "val_loss"),
    "run.dtype": ("float32", "float64"),
    "data.augment": ("none", "cifar10", "cifar10-pixel"),
}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in (f.name for f in dataclasses.fields(Config))}


SECTIONS: dict[str, type] = _section_types()
"""Config sections by name, with their dataclasses."""


# ---------------------------------------------------------------------------------------------
# bundled config files


def bundled_dir() -> Path:
    """The directory of the bundled config files (``fpnets/configs``; ``configs/`` links to it)."""
    return Path(str(resources.files("fpnets") / "configs"))


def bundled_names() -> list[str]:
    """Names of the bundled configs (``digits``, ``mnist``, ...)."""
    d = bundled_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def find_config(source: str | Path | None) -> Path:
    """A config path from a path or a bundled name (``"mnist"`` → ``configs/mnist.toml``)."""
    if source is None:
        source = "digits"
    path = Path(source)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".toml") else path.name
    if path.parent == Path(".") and name in bundled_names():
        return bundled_dir() / f"{name}.toml"
    names = ", ".join(bundled_names()) or "(none found)"
    raise ConfigError(f"config {str(source)!r} is neither a file nor a bundled config; bundled: {names}")


# ---------------------------------------------------------------------------------------------
# type checking


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


def _coerce(value: Any, tp: Any, where: str) -> Any:
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
                return _coerce(value, arg, where)
            except ConfigError:
                continue
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return _plain(value)
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


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _valid(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def _build_section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in table if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in [{where}]; valid keys: {_valid(names)}"
        )
    values = {}
    for key, value in table.items():
        full = f"{where}.{key}"
        values[key] = _coerce(value, hints[key], full)
        choices = _CHOICES.get(full)
        if choices is not None and values[key] not in choices:
            raise ConfigError(f"{full} must be one of {', '.join(choices)}, got {value!r}")
    return cls(**values)


def _check_values(cfg: Config) -> None:
    def positive(where: str, value: int) -> None:
        if value < 1:
            raise ConfigError(f"{where} must be >= 1, got {value}")

    def nonneg(where: str, value: float) -> None:
        if not value >= 0:
            raise ConfigError(f"{where} must be >= 0, got {value}")

    positive("data.batch_size", cfg.data.batch_size)
    positive("data.eval_batch_size", cfg.data.eval_batch_size)
    nonneg("data.limit", cfg.data.limit)
    if cfg.data.val_size is not None:
        nonneg("data.val_size", cfg.data.val_size)
    if cfg.solver.max_iter is not None:
        positive("solver.max_iter", cfg.solver.max_iter)
    if cfg.solver.tol is not None:
        nonneg("solver.tol", cfg.solver.tol)
    nonneg("train.checkpoint_every", cfg.train.checkpoint_every)
    if not (cfg.optim.lr > 0 and math.isfinite(cfg.optim.lr)):
        raise ConfigError(f"optim.lr must be a positive number, got {cfg.optim.lr}")
    nonneg("optim.weight_decay", cfg.optim.weight_decay)
    nonneg("optim.grad_clip", cfg.optim.grad_clip)
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must hold 2 numbers, got {cfg.optim.betas}")
    positive("optim.step_size", cfg.optim.step_size)
    nonneg("train.epochs", cfg.train.epochs)
    nonneg("train.patience", cfg.train.patience)
    nonneg("run.threads", cfg.run.threads)
    dev = cfg.run.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {dev!r}")
    if "/" in cfg.run.name or "\\" in cfg.run.name:
        raise ConfigError(f"run.name must not contain path separators, got {cfg.run.name!r}")


def config_from_dict(table: Mapping[str, Any]) -> Config:
    """A :class:`Config` from nested tables (no ``variants``); unknown keys or wrong types raise."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"a config must be a table, got {type(table).__name__}")
    unknown = [k for k in table if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(repr(k) for k in unknown)}; "
            f"valid sections: {_valid(list(SECTIONS))}"
        )
    cfg = Config(**{name: _build_section(SECTIONS[name], table[name], name) for name in table})
    _check_values(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# overrides and variants


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


def _set_path(table: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    section = path[0]
    if section == "variants":
        raise ConfigError(
            f"override {item!r}: choose a variant with model.variant=NAME and set keys directly"
        )
    if section not in SECTIONS:
        raise ConfigError(
            f"override {item!r}: unknown section {section!r}; valid sections: {_valid(SECTIONS)}"
        )
    if len(path) == 1:
        raise ConfigError(f"override {item!r}: name a key inside [{section}], e.g. {section}.KEY=VALUE")
    cls = SECTIONS[section]
    names = [f.name for f in dataclasses.fields(cls)]
    if path[1] not in names:
        raise ConfigError(
            f"override {item!r}: unknown key {path[1]!r} in [{section}]; valid keys: {_valid(names)}"
        )
    hint = typing.get_type_hints(cls)[path[1]]
    if len(path) > 2 and typing.get_origin(hint) is not dict:
        raise ConfigError(f"override {item!r}: {section}.{path[1]} is not a table")
    node = table.setdefault(section, {})
    if not isinstance(node, dict):  # pragma: no cover - rejected when the file was read
        raise ConfigError(f"[{section}] must be a table")
    for part in path[1:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = _plain(value)
    return out


def resolve(
    table: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = (), *, source: str = "config"
) -> Config:
    """Apply the selected ``[variants.<model.variant>]`` table and then the overrides to ``table``.

    Order: file values < variant table < overrides. The variant is ``model.variant`` after the
    overrides (so ``--set model.variant=jacobian`` picks the jacobian table).
    """
    table = _plain(table)
    variants = table.pop("variants", {})
    if not isinstance(variants, dict):
        raise ConfigError(f"{source}: [variants] must be a table of per-variant tables")
    bad = [k for k in variants if k not in VARIANTS]
    if bad:
        raise ConfigError(
            f"{source}: unknown variant table(s) {', '.join(repr(k) for k in bad)} in [variants]; "
            f"valid variants: {_valid(VARIANTS)}"
        )
    items = (
        list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    )
    parsed = []
    for item in items:
        if isinstance(overrides, Mapping):
            path, value = item[0].split("."), item[1]
            text = f"{item[0]}={item[1]!r}"
        else:
            path, value = item
            text = ".".join(path) + "=" + json.dumps(value, default=str)
        parsed.append((path, value, text))
    over: dict[str, Any] = {}
    for path, value, text in parsed:
        _set_path(over, path, value, text)
    variant = over.get("model", {}).get("variant", table.get("model", {}).get("variant", ModelConfig.variant))
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant must be one of {_valid(VARIANTS)}, got {variant!r}")
    vtable = variants.get(variant, {})
    if not isinstance(vtable, dict):
        raise ConfigError(f"{source}: [variants.{variant}] must be a table")
    if "variant" in vtable.get("model", {}):
        raise ConfigError(f"{source}: [variants.{variant}.model] must not set 'variant'")
    merged = _merge(table, vtable)
    merged = _merge(merged, over)
    return config_from_dict(merged)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; syntax errors become :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None


def load_config(
    source: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """Read a config file (a path or a bundled name; default ``digits``) and apply ``key=value`` overrides.

    ``overrides`` are strings like ``"train.epochs=5"`` (values parsed as TOML; a value that is not
    TOML is a string), or a mapping from dotted keys to values.
    """
    path = find_config(source)
    return resolve(read_toml(path), overrides, source=str(path))


# ---------------------------------------------------------------------------------------------
# writing TOML


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


__all__ = [
    "MODEL_VARIANTS",
    "SECTIONS",
    "VARIANTS",
    "BackwardConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SolverConfig",
    "TrainConfig",
    "bundled_dir",
    "bundled_names",
    "config_from_dict",
    "dumps_toml",
    "find_config",
    "load_config",
    "parse_override",
    "parse_value",
    "read_toml",
    "resolve",
]
