"""Training fixed-point networks for any task: configs, the training loop, checkpoints, and outputs.

>>> from fpnets.train import load_config, train
>>> cfg = load_config("digits", ["train.epochs=5"])   # a bundled name or a path to a TOML file
>>> result = train(cfg)                               # writes runs/digits-fpn-<timestamp>/
>>> result.val["acc"], result.test["acc"]             # selected on validation, tested once

One loop serves every task (:mod:`fpnets.tasks`): the task named in ``[task]`` provides the data,
the model, the loss, the metrics and per-step hooks; the trainer runs Adam (optional StepLR),
:func:`train_step`, model selection on ``train.select`` (a validation metric, in its direction)
and early stopping on the validation split, and evaluates the test split once for the selected
epoch. A run directory holds ``config.toml`` (the resolved config), ``metrics.csv`` (one column
per metric), ``curves.png``, ``iterations.png``, the task's figures, ``results.json``, optional
TensorBoard events, and ``checkpoints/`` (safetensors + JSON manifests ``last.json`` and
``best.json``, written atomically). ``train(cfg, resume=run_dir)`` continues an interrupted run
to the same final weights. Under ``torchrun`` the loop runs data-parallel.
"""

from ._checkpoint import Checkpoint, CheckpointError, WriteError, load_checkpoint, save_checkpoint
from ._config import (
    TRAINER_SECTIONS,
    BackwardConfig,
    Config,
    OptimConfig,
    RunConfig,
    SolverConfig,
    TrainConfig,
    bundled_dir,
    bundled_names,
    config_from_dict,
    find_config,
    load_config,
    resolve,
    sections_for,
)
from ._engine import ConfigError, dumps_toml, parse_override, read_toml
from ._loop import Meter, SavedModel, TrainResult, evaluate, evaluate_checkpoint, is_better, load_model, train
from ._outputs import columns, read_metrics_csv, write_plots
from ._state import RESUMABLE_CHANGES, RunLock, latest_run, new_run_dir
from ._step import StepResult, train_step

__all__ = [
    "RESUMABLE_CHANGES",
    "TRAINER_SECTIONS",
    "BackwardConfig",
    "Checkpoint",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Meter",
    "OptimConfig",
    "RunConfig",
    "RunLock",
    "SavedModel",
    "SolverConfig",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "WriteError",
    "bundled_dir",
    "bundled_names",
    "columns",
    "config_from_dict",
    "dumps_toml",
    "evaluate",
    "evaluate_checkpoint",
    "find_config",
    "is_better",
    "latest_run",
    "load_checkpoint",
    "load_config",
    "load_model",
    "new_run_dir",
    "parse_override",
    "read_metrics_csv",
    "read_toml",
    "resolve",
    "save_checkpoint",
    "sections_for",
    "train",
    "train_step",
    "write_plots",
]
