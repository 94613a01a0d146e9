"""Tasks: one application each (data, model construction, loss, metrics, figures) for the one trainer.

Built-in tasks are listed in :data:`TASKS` by name and imported when first asked for; a task of
your own is either registered with :func:`register_task` or named in a config as
``[task] name = "package.module:ClassName"``.

Adding a task (see docs/tasks.md)::

    from fpnets.tasks import Metric, Splits, Task, TensorSplit, register_task

    @register_task
    class Sine(Task):
        name = "sine"
        metrics = (Metric("mae", higher_is_better=False),)

        def load_splits(self, data_dir):
            x = torch.linspace(-3, 3, 300).unsqueeze(1)
            split = TensorSplit((x,), torch.sin(x))
            return Splits(split.head(200), split.head(50), split.head(50))

        def build_model(self):
            return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        def loss(self, output, target):
            return torch.nn.functional.mse_loss(output, target)

        def measure(self, output, target):
            return {"mae": (output - target).abs().flatten(1).mean(1)}
"""

from __future__ import annotations

import importlib

from ._base import DataConfig, Metric, ModelConfig, Splits, Task, TaskConfig, TensorLoader, TensorSplit

TASKS: dict[str, str | type[Task]] = {
    "classification": "fpnets.tasks.classification:ClassificationTask",
    "games": "fpnets.tasks.games.task:GamesTask",
    "ct": "fpnets.tasks.ct.task:CTTask",
    "traffic": "fpnets.tasks.traffic.task:TrafficTask",
}
"""Tasks by name: a :class:`Task` subclass, or ``"module:Class"`` imported on first use."""


def register_task(cls: type[Task]) -> type[Task]:
    """Add a :class:`Task` subclass to :data:`TASKS` under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task needs a fpnets.tasks.Task subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute name = '...' to be registered")
    if any(m.name == "loss" for m in cls.metrics):
        raise ValueError(f"{cls.__name__}: 'loss' is measured by the trainer; do not list it in metrics")
    TASKS[name] = cls
    return cls


def _import(path: str) -> type[Task]:
    module, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ValueError(f"cannot import task {path!r}: {exc}") from None
    except AttributeError:
        raise ValueError(f"task {path!r}: module {module!r} has no {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ValueError(f"task {path!r} is not a fpnets.tasks.Task subclass")
    return obj


def get_task(name: str) -> type[Task]:
    """The :class:`Task` class called ``name`` (or imported from ``"module:Class"``)."""
    if not isinstance(name, str):
        raise ValueError(f"task.name must be a string, got {name!r}")
    entry = TASKS.get(name)
    if entry is None and ":" in name:
        entry = _import(name)
    if entry is None:
        valid = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; valid tasks: {valid} (or 'package.module:TaskClass')")
    if isinstance(entry, str):
        entry = _import(entry)
        TASKS[name] = entry
    return entry


__all__ = [
    "TASKS",
    "DataConfig",
    "Metric",
    "ModelConfig",
    "Splits",
    "Task",
    "TaskConfig",
    "TensorLoader",
    "TensorSplit",
    "get_task",
    "register_task",
]
