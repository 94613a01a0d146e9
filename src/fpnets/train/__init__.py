"""Training Fixed Point Networks: configs, the training loop, checkpoints, and outputs.

>>> from fpnets.train import load_config, train
>>> cfg = load_config("digits", ["train.epochs=5"])   # a bundled name or a path to a TOML file
>>> result = train(cfg)                               # writes runs/digits-jfb-<timestamp>/
>>> result.val["acc"], result.test["acc"]             # selected on validation, tested once

One loop serves every dataset and variant: Adam (optional StepLR), cross-entropy, the model's
``after_optimizer_step()`` after every step, model selection and early stopping on the validation
split, the test split evaluated once for the selected epoch. A run directory holds
``config.toml`` (the resolved config), ``metrics.csv``, ``curves.png``, ``iterations.png``,
``results.json``, optional TensorBoard events, and ``checkpoints/`` (safetensors + JSON manifests
``last.json`` and ``best.json``, written atomically). ``train(cfg, resume=run_dir)`` continues an
interrupted run to the same final weights. Under ``torchrun`` the loop runs data-parallel.
"""

from ._checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from ._config import (
    MODEL_VARIANTS,
    SECTIONS,
    VARIANTS,
    BackwardConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SolverConfig,
    TrainConfig,
    bundled_dir,
    bundled_names,
    config_from_dict,
    dumps_toml,
    find_config,
    load_config,
    parse_override,
    read_toml,
    resolve,
)
from ._loop import (
    TrainResult,
    build_network,
    evaluate,
    evaluate_checkpoint,
    latest_run,
    load_data,
    new_run_dir,
    train,
)
from ._outputs import COLUMNS, read_metrics_csv, write_plots

__all__ = [
    "COLUMNS",
    "MODEL_VARIANTS",
    "SECTIONS",
    "VARIANTS",
    "BackwardConfig",
    "Checkpoint",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SolverConfig",
    "TrainConfig",
    "TrainResult",
    "build_network",
    "bundled_dir",
    "bundled_names",
    "config_from_dict",
    "dumps_toml",
    "evaluate",
    "evaluate_checkpoint",
    "find_config",
    "latest_run",
    "load_checkpoint",
    "load_config",
    "load_data",
    "new_run_dir",
    "parse_override",
    "read_metrics_csv",
    "read_toml",
    "resolve",
    "save_checkpoint",
    "train",
    "write_plots",
]
