"""The task abstraction: what one application plugs into the one trainer.

A :class:`Task` owns its data (splits and loaders), the construction of its model from the typed
``[task]``, ``[data]`` and ``[model]`` sections of a config, its loss, its metrics (each a
:class:`Metric` with a name and a direction), its per-step hooks and its figures. The trainer in
:mod:`fpnets.train` knows only this interface.

A batch is a pair ``(inputs, target)``: ``inputs`` a tensor or a tuple of tensors (the model is
called as ``model(*inputs)``), ``target`` whatever :meth:`Task.loss` and :meth:`Task.measure`
take (a tensor for the built-in tasks).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from .._errors import ConfigError
from .._seed import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from ..train import Config


@dataclass(frozen=True)
class Metric:
    """A per-sample quantity averaged over a split.

    Attributes:
        name: the column suffix (``train_<name>``, ``val_<name>``) and the key in results.json;
            ``train.select = "val.<name>"`` selects the epoch on it.
        higher_is_better: the direction model selection and early stopping use.
        label: axis label of its plot (default: the name).
        percent: shown as a percentage in the command line's lines (fractions are stored).
    """

    name: str
    higher_is_better: bool
    label: str = ""
    percent: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in ("iters", "n"):
            raise ValueError(
                f"Metric name {self.name!r} must be an identifier other than iters and n "
                "(the trainer's own columns)"
            )


# -------------------------------------------------------------------------------------------------
# the typed config sections every task extends


@dataclass
class TaskConfig:
    """``[task]``: which task (a name in :data:`fpnets.tasks.TASKS` or ``"module:Class"``)."""

    name: str = "classification"


@dataclass
class DataConfig:
    """``[data]``: batching, which every task has; a task subclasses it with its data options."""

    batch_size: int = 100
    eval_batch_size: int = 500

    def check(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class ModelConfig:
    """``[model]``: the variant, which selects a ``[variants.<name>]`` table too; a task subclasses
    it with its model options and lists its variants in ``choices``."""

    variant: str = "fpn"


def check_variant_options(section: Any, variant_keys: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`ConfigError` when ``section`` (a ``[model]`` with per-variant options, unset =
    None) sets an option that its ``variant`` does not take (``variant_keys``: variant → its options)."""
    takes = variant_keys[section.variant]
    options = sorted({k for keys in variant_keys.values() for k in keys})
    for name in options:
        if getattr(section, name) is None or name in takes:
            continue
        users = [v for v, keys in variant_keys.items() if name in keys]
        raise ConfigError(
            f"model.{name} applies to the {', '.join(users)} variant(s), not {section.variant!r} "
            f"(which takes {', '.join(takes) or 'no options'}); unset it or put it in "
            f"[variants.{users[0]}.model]"
        )


def variant_options(section: Any, variant_keys: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The options of ``section``'s variant that are set (not None), by name."""
    return {k: getattr(section, k) for k in variant_keys[section.variant] if getattr(section, k) is not None}


def task_data_dir(name: str, data_dir: str | Path | None) -> Path:
    """Where task ``name`` caches generated data: ``data_dir`` when given; else ``$FPNETS_DATA/<name>``
    when ``FPNETS_DATA`` is set; else ``<cache>/<name>`` with :func:`fpnets.data.cache_root`'s cache
    (``$FPNETS_CACHE``, ``$XDG_CACHE_HOME/fpnets`` or ``~/.cache/fpnets``)."""
    import os

    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("FPNETS_DATA"):
        return Path(os.environ["FPNETS_DATA"]).expanduser() / name
    from ..data import cache_root

    return cache_root() / name


# -------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class TensorSplit:
    """One split held as tensors: ``inputs`` (each (N, ...)) and ``target`` ((N, ...)), sample-first."""

    inputs: tuple[Tensor, ...]
    target: Tensor

    def __post_init__(self) -> None:
        if isinstance(self.inputs, Tensor):
            object.__setattr__(self, "inputs", (self.inputs,))
        n = self.target.shape[0]
        for i, t in enumerate(self.inputs):
            if not isinstance(t, Tensor):
                raise TypeError(f"TensorSplit: input {i} must be a tensor, got {type(t).__name__}")
            if t.shape[0] != n:
                raise ValueError(
                    f"TensorSplit: input {i} has {t.shape[0]} samples but the target has {n}; "
                    "every tensor of a split must have the same first dimension"
                )

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def head(self, n: int) -> TensorSplit:
        """The first ``n`` samples."""
        return TensorSplit(tuple(t[:n] for t in self.inputs), self.target[:n])


@dataclass(frozen=True)
class Splits:
    """The train, validation and test splits of a task (any objects with ``len``)."""

    train: Any
    val: Any
    test: Any

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class TensorLoader:
    """Batches ``(inputs, target)`` of a :class:`TensorSplit`, reshuffled per epoch and sharded.

    With ``shuffle`` the order of epoch e is a permutation seeded by ``(seed, e)`` only, so all
    processes agree and a resumed epoch sees the same batches (:meth:`iter_from`); process ``rank``
    of ``world_size`` takes every ``world_size``-th sample of the order (padded by repetition to a
    multiple of ``world_size``, as ``DistributedSampler`` does).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(split, TensorSplit):
            raise TypeError(f"TensorLoader: split must be a TensorSplit, got {type(split).__name__}")
        if batch_size < 1:
            raise ValueError(f"TensorLoader: batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.split)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        per_rank = math.ceil(n / self.world_size) if n else 0
        total = per_rank * self.world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.world_size]

    def __len__(self) -> int:
        n = math.ceil(len(self.split) / self.world_size) if len(self.split) else 0
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
        """The batches of the current epoch from batch index ``start`` on."""
        idx = self._indices()
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            inputs = tuple(self._move(t[sel]) for t in self.split.inputs)
            yield inputs, self._move(self.split.target[sel])

    def _move(self, t: Tensor) -> Tensor:
        return t if self.device is None else t.to(self.device, non_blocking=True)


# -------------------------------------------------------------------------------------------------
# the task


class Task(ABC):
    """One application of fixed-point networks, as the trainer sees it.

    Subclasses set the class attributes and implement :meth:`load_splits`, :meth:`build_model`
    and :meth:`loss`; the rest have defaults. ``self.config`` is the whole resolved
    :class:`fpnets.train.Config`; ``self.config.task``, ``.data`` and ``.model`` are instances of
    :attr:`task_config`, :attr:`data_config` and :attr:`model_config`.
    """

    name: ClassVar[str]
    """The registry name (``[task] name = ...``)."""
    task_config: ClassVar[type] = TaskConfig
    data_config: ClassVar[type] = DataConfig
    model_config: ClassVar[type] = ModelConfig
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """What :meth:`measure` returns, besides the loss (which is always measured, lower is better)."""
    loss_label: ClassVar[str] = "loss"
    """The loss's name in plots (e.g. "cross-entropy", "MSE")."""
    select: ClassVar[str] = "val.loss"
    """The default of ``train.select``."""
    extra_columns: ClassVar[tuple[str, ...]] = ()
    """Per-epoch columns of :meth:`epoch_stats` (e.g. counters of a per-step rule)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    # -- data -------------------------------------------------------------------------------------

    @abstractmethod
    def load_splits(self, data_dir: str | Path | None) -> Splits:
        """The train, validation and test splits (seeded by ``config.train.seed`` where random)."""

    def loader(
        self, split: Any, *, train: bool, rank: int = 0, world_size: int = 1, device: Any = None
    ) -> Any:
        """Batches of ``split``: an iterable with ``len``, ``set_epoch(e)`` and ``iter_from(b)``.

        Training loaders shuffle (seeded by ``config.train.seed``) and are sharded over processes;
        evaluation loaders keep the order and see every sample once. The default serves
        :class:`TensorSplit` splits.
        """
        d = self.config.data
        if train:
            return TensorLoader(
                split, d.batch_size, shuffle=True, seed=self.config.train.seed, rank=rank,
                world_size=world_size, device=device,
            )  # fmt: skip
        return TensorLoader(split, d.eval_batch_size, device=device)

    # -- model ------------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model the config describes (solver and backward from ``[solver]``/``[backward]``)."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """The model's output for a batch's inputs: ``model(*inputs)`` (or ``model(inputs)``)."""
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)

    def iterations(self, model: nn.Module) -> Tensor | None:
        """(B,) forward-solve iterations of the last batch, or None for a model without a solve."""
        sol = getattr(model, "solution", None)
        return None if sol is None else sol.iterations

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (on every process), e.g. a Lipschitz rule."""
        return None

    def epoch_stats(self, model: nn.Module) -> dict[str, float | None]:
        """Values of :attr:`extra_columns` at the end of an epoch."""
        return {}

    def restore(self, model: nn.Module, record: Mapping[str, Any]) -> None:
        """Restore per-model state kept outside ``state_dict`` from the last epoch's record."""
        return None

    # -- loss and metrics -------------------------------------------------------------------------

    @abstractmethod
    def loss(self, output: Any, target: Any) -> Tensor:
        """The scalar training loss of a batch (a mean over its samples)."""

    def measure(self, output: Any, target: Any) -> dict[str, Tensor]:
        """(B,) per-sample values of each metric in :attr:`metrics`."""
        return {}

    # -- outputs ----------------------------------------------------------------------------------

    def run_name(self) -> str:
        """The prefix of this config's run directories."""
        return f"{self.config.run.name or self.name}-{self.config.model.variant}"

    def figures(
        self, run_dir: Path, model: nn.Module, splits: Splits, *, device: Any, dtype: Any
    ) -> list[Path]:
        """Task-specific figures of the selected model, written into ``run_dir`` (default: none)."""
        return []

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The metric called ``name`` (``loss`` included)."""
        for m in cls.all_metrics():
            if m.name == name:
                return m
        raise KeyError(name)

    @classmethod
    def all_metrics(cls) -> tuple[Metric, ...]:
        return (_LOSS, *cls.metrics)


_LOSS = Metric("loss", higher_is_better=False)


def section_types(task: type[Task]) -> dict[str, type]:
    """The dataclasses of the task-typed sections."""
    return {"task": task.task_config, "data": task.data_config, "model": task.model_config}


def variants_of(task: type[Task]) -> tuple[str, ...]:
    """The values ``model.variant`` may take for ``task``."""
    choices: Mapping[str, Sequence[str]] = getattr(task.model_config, "choices", {})
    if "variant" in choices:
        return tuple(choices["variant"])
    default = next(f.default for f in dataclasses.fields(task.model_config) if f.name == "variant")
    return (default,)
