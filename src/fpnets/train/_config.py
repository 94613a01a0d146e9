"""The training configuration: the trainer's own sections plus the sections typed by the task.

A config file has the sections ``[task]``, ``[data]``, ``[model]`` (their keys and types come
from the task named in ``task.name``, see :mod:`fpnets.tasks`), ``[solver]``, ``[backward]``,
``[optim]``, ``[train]``, ``[run]`` (the trainer's), and optionally ``[variants.<name>]`` tables
applied when ``model.variant`` is ``<name>``. Unknown sections or keys and wrong types raise
:class:`ConfigError` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from ..tasks import Task, get_task
from ..tasks._base import TaskConfig, section_types, variants_of
from ._engine import (
    ConfigError,
    build_section,
    dumps_toml,
    merge,
    parse_override,
    plain,
    read_toml,
    set_path,
)

DEFAULT_TASK = "classification"


@dataclass
class SolverConfig:
    """``[solver]``: the forward fixed-point solver (see :func:`fpnets.make_solver`)."""

    name: str = "picard"
    tol: float | None = None
    """ε, the per-sample residual tolerance; unset: the model's default."""
    max_iter: int | None = None
    """Iteration cap; unset: the model's default."""
    norm: str | None = None
    """Residual norm: "l2" (over all latent entries) or "max_channel" (max over pixels of the
    channel norm, the reference implementation's); unset: the model's default."""
    options: dict[str, Any] = field(default_factory=dict)
    """Solver-specific options, e.g. ``{m = 5}`` for Anderson or ``{damping = 0.5}`` for Picard."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"norm": ("l2", "max_channel")}

    def check(self) -> None:
        if self.max_iter is not None and self.max_iter < 1:
            raise ConfigError(f"solver.max_iter must be >= 1, got {self.max_iter}")
        if self.tol is not None and not self.tol >= 0:
            raise ConfigError(f"solver.tol must be >= 0, got {self.tol}")

    def spec(self) -> dict[str, Any]:
        """The mapping :func:`fpnets.registry.solver_from_spec` reads (unset keys left out)."""
        spec: dict[str, Any] = {"name": self.name, **self.options}
        for key in ("tol", "max_iter", "norm"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec


@dataclass
class BackwardConfig:
    """``[backward]``: how gradients pass the fixed point (jfb, ift, neumann, unrolled)."""

    name: str | None = None
    """Unset: the model's default (JFB; IFT with CG on the normal equations for "jacobian")."""
    options: dict[str, Any] = field(default_factory=dict)
    """E.g. ``{k = 5}`` for neumann, ``{solver = {name = "cg", tol = 1e-4, max_iter = 50}}`` for ift."""

    def check(self) -> None:
        if self.name is None and self.options:
            raise ConfigError("backward.options needs backward.name (jfb, ift, neumann, unrolled)")

    def spec(self) -> dict[str, Any] | None:
        return None if self.name is None else {"name": self.name, **self.options}


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

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"scheduler": ("none", "step")}

    def check(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"optim.lr must be a positive number, got {self.lr}")
        for key in ("weight_decay", "grad_clip"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must hold 2 numbers, got {self.betas}")
        if self.step_size < 1:
            raise ConfigError(f"optim.step_size must be >= 1, got {self.step_size}")


@dataclass
class TrainConfig:
    """``[train]``: epochs, seed, model selection and early stopping (all on the validation split)."""

    epochs: int = 10
    seed: int = 0
    select: str = ""
    """Best-epoch criterion ``"val.<metric>"`` (ties: lower validation loss), in the metric's own
    direction; empty: the task's default (``val.acc`` for classification)."""
    patience: int = 0
    """Stop after this many epochs without a better validation score; 0 = never stop early."""
    checkpoint_every: int = 0
    """Also checkpoint every this many optimizer steps inside an epoch (mid-epoch resume); 0 = only
    at the end of every epoch."""
    jacobian_weight: float = 0.0
    """Weight of the Jacobian penalty ‖∂T/∂u‖_F²/n at u* (Bai, Koltun, Kolter 2021) added to the
    loss; 0 = off. Needs a model with ``jacobian_penalty()``."""
    jacobian_probes: int = 1
    """Hutchinson probe vectors per penalty estimate."""
    jacobian_every: int = 1
    """Add the penalty at every k-th step only."""

    def check(self) -> None:
        for key in ("epochs", "patience", "checkpoint_every", "seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not self.jacobian_weight >= 0:
            raise ConfigError(f"train.jacobian_weight must be >= 0, got {self.jacobian_weight}")
        for key in ("jacobian_probes", "jacobian_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class RunConfig:
    """``[run]``: where outputs go and how the process runs."""

    name: str = ""
    """Run name prefix; runs go to ``<root>/<name>-<variant>-<timestamp>``. Empty: the task's choice
    (the dataset name for classification)."""
    root: str = "runs"
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""
    dtype: str = "float32"
    threads: int = 0
    """torch intra-op threads; 0 = torch's default."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True)`` while training on CPU."""
    progress: bool = True
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed."""
    plots: bool = True

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"dtype": ("float32", "float64")}

    def check(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"run.threads must be >= 0, got {self.threads}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        if "/" in self.name or "\\" in self.name:
            raise ConfigError(f"run.name must not contain path separators, got {self.name!r}")


TRAINER_SECTIONS: dict[str, type] = {
    "solver": SolverConfig,
    "backward": BackwardConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "run": RunConfig,
}
"""The sections the trainer itself defines (``task``, ``data`` and ``model`` come from the task)."""

SECTION_ORDER = ("task", "data", "model", "solver", "backward", "optim", "train", "run")


@dataclass
class Config:
    """A complete, resolved training configuration (see ``configs/*.toml``).

    ``task``, ``data`` and ``model`` are instances of the task's own section dataclasses.
    """

    task: Any = field(default_factory=TaskConfig)
    data: Any = None
    model: Any = None
    solver: SolverConfig = field(default_factory=SolverConfig)
    backward: BackwardConfig = field(default_factory=BackwardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        types = section_types(self.task_class)
        if self.data is None:
            self.data = types["data"]()
        if self.model is None:
            self.model = types["model"]()

    @property
    def task_class(self) -> type[Task]:
        """The :class:`fpnets.tasks.Task` subclass named in ``task.name``."""
        return get_task(self.task.name)

    def make_task(self) -> Task:
        """The task object for this config."""
        return self.task_class(self)

    @property
    def select(self) -> str:
        """``train.select`` or the task's default."""
        return self.train.select or self.task_class.select

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (None values kept)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTION_ORDER}

    def to_toml(self) -> str:
        """TOML text that :func:`config_from_dict` / :func:`load_config` read back to an equal config."""
        return dumps_toml(self.to_dict())

    @property
    def run_name(self) -> str:
        """The prefix of this config's run directories (``<name>-<variant>`` for the built-in tasks)."""
        return self.make_task().run_name()


def _task_class(table: Mapping[str, Any], source: str = "config") -> type[Task]:
    task = table.get("task", {})
    if not isinstance(task, Mapping):
        raise ConfigError(f"{source}: [task] must be a table, got {type(task).__name__}")
    try:
        return get_task(task.get("name", DEFAULT_TASK))
    except ValueError as exc:
        raise ConfigError(f"task.name: {exc}") from None


def sections_for(task: type[Task]) -> dict[str, type]:
    """Section name → dataclass for a config of ``task``, in file order."""
    types = {**section_types(task), **TRAINER_SECTIONS}
    return {name: types[name] for name in SECTION_ORDER}


def _check_select(cfg: Config) -> None:
    task = cfg.task_class
    valid = [f"val.{m.name}" for m in task.all_metrics()]
    if cfg.select not in valid:
        raise ConfigError(f"train.select must be one of {', '.join(valid)}, got {cfg.select!r}")


def config_from_dict(table: Mapping[str, Any]) -> Config:
    """A :class:`Config` from nested tables (no ``variants``); unknown keys or wrong types raise."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"a config must be a table, got {type(table).__name__}")
    task = _task_class(table)
    sections = sections_for(task)
    unknown = [k for k in table if k not in sections]
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(repr(k) for k in unknown)}; valid sections: {', '.join(sections)}"
        )
    built = {name: build_section(cls, table.get(name, {}), name) for name, cls in sections.items()}
    cfg = Config(**built)
    _check_select(cfg)
    return cfg


def resolve(
    table: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = (), *, source: str = "config"
) -> Config:
    """Apply the selected ``[variants.<model.variant>]`` table and then the overrides to ``table``.

    Order: file values < variant table < overrides. The task and the variant are read after the
    overrides (so ``--set model.variant=jacobian`` picks the jacobian table).
    """
    table = plain(table)
    variants = table.pop("variants", {})
    if not isinstance(variants, dict):
        raise ConfigError(f"{source}: [variants] must be a table of per-variant tables")
    if isinstance(overrides, Mapping):
        parsed = [(k.split("."), v, f"{k}={v!r}") for k, v in overrides.items()]
    else:
        parsed = [(*parse_override(o), o) for o in overrides]
    for path, _value, text in parsed:
        if path[0] == "variants":
            raise ConfigError(
                f"override {text!r}: choose a variant with model.variant=NAME and set keys directly"
            )
    task_name = next((v for p, v, _ in parsed if p == ["task", "name"]), None)
    task = _task_class({"task": {"name": task_name}} if task_name is not None else table, source)
    sections = sections_for(task)
    over: dict[str, Any] = {}
    for path, value, text in parsed:
        set_path(over, sections, path, value, text)
    valid = variants_of(task)
    bad = [k for k in variants if k not in valid]
    if bad:
        raise ConfigError(
            f"{source}: unknown variant table(s) {', '.join(repr(k) for k in bad)} in [variants]; "
            f"valid variants: {', '.join(valid)}"
        )
    default_variant = task.model_config().variant
    variant = over.get("model", {}).get("variant", table.get("model", {}).get("variant", default_variant))
    if variant not in valid:
        raise ConfigError(f"model.variant must be one of {', '.join(valid)}, got {variant!r}")
    vtable = variants.get(variant, {})
    if not isinstance(vtable, dict):
        raise ConfigError(f"{source}: [variants.{variant}] must be a table")
    if "variant" in vtable.get("model", {}):
        raise ConfigError(f"{source}: [variants.{variant}.model] must not set 'variant'")
    return config_from_dict(merge(merge(table, vtable), over))


# -------------------------------------------------------------------------------------------------
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


def load_config(
    source: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """Read a config file (a path or a bundled name; default ``digits``) and apply ``key=value`` overrides.

    ``overrides`` are strings like ``"train.epochs=5"`` (values parsed as TOML; a value that is not
    TOML is a string), or a mapping from dotted keys to values.
    """
    path = find_config(source)
    return resolve(read_toml(path), overrides, source=str(path))


def describe_sections(task: type[Task]) -> str:
    """One line per section with its keys (for error messages and ``fpnets config --keys``)."""
    return "\n".join(
        f"[{name}] " + ", ".join(f.name for f in dataclasses.fields(cls))
        for name, cls in sections_for(task).items()
    )


__all__ = [
    "TRAINER_SECTIONS",
    "BackwardConfig",
    "Config",
    "ConfigError",
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
    "read_toml",
    "resolve",
    "sections_for",
]
