"""The training loop shared by every dataset and variant."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    join_optimizer_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_optimizer_state,
)
from ._config import MODEL_VARIANTS, Config, ConfigError, config_from_dict
from ._outputs import TensorBoard, write_metrics_csv, write_plots
from ._runtime import Runtime, derived_seed, process_settings, seed_all, setup_runtime

log = logging.getLogger("fpnets.train")

Callback = Callable[[dict[str, Any]], None]

RESUMABLE_CHANGES = ("train.epochs", "train.patience", "train.checkpoint_every", "run.")
"""Config keys (prefixes) that may differ between a run and its resumption."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory (checkpoints, metrics.csv, plots, config.toml, results.json).
        config: the resolved configuration.
        best_epoch: the epoch (1-based) selected on the validation split (0: no epoch trained).
        val: loss / acc / iters / n of the selected model on the validation split.
        test: the same on the test split, evaluated once, for the selected model only.
        history: one record per epoch (the columns of metrics.csv).
        stopped_early: whether early stopping ended the run.
        model: the model with the selected (best-validation) weights, unwrapped, in eval mode.
    """

    run_dir: Path
    config: Config
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    stopped_early: bool
    model: nn.Module = field(repr=False)


# ---------------------------------------------------------------------------------------------
# building blocks


def build_augment(name: str) -> Any:
    """The training augmentation named in ``data.augment``."""
    if name == "none":
        return None
    from ..data import cifar_augment

    presets = {"cifar10": "reference", "cifar10-pixel": "pixel"}
    if name not in presets:
        raise ConfigError(f"data.augment must be one of none, {', '.join(presets)}, got {name!r}")
    return cifar_augment(presets[name])


def build_network(config: Config, info: Any) -> nn.Module:
    """``fpnets.models.build_model`` with the config's architecture, variant, solver and backward."""
    from ..models import build_model

    m = config.model
    options: dict[str, Any] = {"in_channels": info.in_channels, "num_classes": info.num_classes}
    for key in ("gamma", "latent_blocks", "lipschitz"):
        if getattr(m, key) is not None:
            options[key] = getattr(m, key)
    options.update(m.options)
    solver: dict[str, Any] = {"name": config.solver.name, **config.solver.options}
    if config.solver.tol is not None:
        solver["tol"] = config.solver.tol
    if config.solver.max_iter is not None:
        solver["max_iter"] = config.solver.max_iter
    options["solver"] = solver
    if config.backward.name is not None:
        options["backward"] = {"name": config.backward.name, **config.backward.options}
    elif config.backward.options:
        raise ConfigError("backward.options needs backward.name (jfb, ift, neumann, unrolled)")
    return build_model(m.arch, MODEL_VARIANTS[m.variant], **options)


def load_data(config: Config, data_dir: str | Path | None = None) -> Any:
    """The dataset's splits (cut to ``data.limit`` samples each when set)."""
    from ..data import Split, load_splits

    d = config.data
    splits = load_splits(d.name, data_dir, val_size=d.val_size, seed=config.train.seed, download=d.download)
    return limit_splits(splits, d.limit, Split)


def limit_splits(splits: Any, limit: int, split_type: Any = None) -> Any:
    if limit <= 0:
        return splits
    import dataclasses

    make = split_type or type(splits.train)
    cut = {
        name: make(getattr(splits, name).images[:limit], getattr(splits, name).labels[:limit])
        for name in ("train", "val", "test")
    }
    return dataclasses.replace(splits, **cut)


def make_loader(split: Any, config: Config, runtime: Runtime, *, train: bool, info: Any) -> Any:
    from ..data import BatchLoader

    if train:
        return BatchLoader(
            split,
            config.data.batch_size,
            shuffle=True,
            seed=config.train.seed,
            augment=build_augment(config.data.augment),
            normalize=info,
            rank=runtime.rank,
            world_size=runtime.world_size,
            device=runtime.device,
        )
    return BatchLoader(
        split, config.data.eval_batch_size, shuffle=False, normalize=info, device=runtime.device
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _Meter:
    """Running sums of one pass: loss·n, correct, n, forward iterations and their count."""

    def __init__(self, values: Mapping[str, float] | None = None) -> None:
        self.sums = dict.fromkeys(("loss", "correct", "n", "iters", "iters_n"), 0.0)
        if values:
            self.sums.update({k: float(v) for k, v in values.items() if k in self.sums})
        self._pending: list[Tensor] = []

    def add(self, loss: Tensor, logits: Tensor, y: Tensor, model: nn.Module) -> None:
        n = y.shape[0]
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        sol = getattr(model, "solution", None)
        iters = getattr(sol, "iterations", None)
        if iters is None:
            it_sum, it_n = zero, zero
        else:
            it_sum, it_n = iters.to(y.device).double().sum(), zero + iters.numel()
        correct = (logits.detach().argmax(dim=1) == y).sum().double()
        self._pending.append(torch.stack([loss.detach().double() * n, correct, it_sum, it_n]))
        self.sums["n"] += n
        if len(self._pending) >= 32:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            total = torch.stack(self._pending).sum(0).tolist()
            self._pending = []
            for key, value in zip(("loss", "correct", "iters", "iters_n"), total, strict=True):
                self.sums[key] += value

    def totals(self) -> dict[str, float]:
        self._flush()
        return dict(self.sums)

    @staticmethod
    def summary(sums: Mapping[str, float]) -> dict[str, float | None]:
        n = sums["n"]
        return {
            "loss": sums["loss"] / n if n else math.nan,
            "acc": sums["correct"] / n if n else math.nan,
            "iters": sums["iters"] / sums["iters_n"] if sums["iters_n"] else None,
            "n": int(n),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], dtype: torch.dtype | None = None
) -> dict:
    """Mean cross-entropy, accuracy and mean forward iterations of ``model`` (eval mode) on ``loader``.

    Returns ``{"loss", "acc", "iters", "n"}`` (iters None for models without a fixed-point solve).
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    meter = _Meter()
    try:
        for x, y in loader:
            if dtype is not None:
                x = x.to(dtype)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            meter.add(loss, logits, y, model)
    finally:
        model.train(was_training)
    return _Meter.summary(meter.totals())


def _progress(iterable: Iterable, *, enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch", disable=None)


def _better(record: Mapping[str, Any], best: Mapping[str, Any] | None, select: str) -> bool:
    if best is None:
        return True
    if math.isnan(record["val_acc"]):  # no validation data: keep the latest epoch
        return True
    if select == "val_loss":
        return record["val_loss"] < best["val_loss"]
    return (record["val_acc"], -record["val_loss"]) > (best["val_acc"], -best["val_loss"])


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        full = f"{prefix}{key}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and not full.endswith("options"):
            keys += _config_diff(va, vb, full + ".")
        elif va != vb:
            keys.append(full)
    return keys


def new_run_dir(config: Config, root: str | Path | None = None) -> Path:
    """``<root>/<run name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... appended if taken), created."""
    root = Path(config.run.root if root is None else root)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{config.run_name}-{stamp}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")


def latest_run(config: Config, root: str | Path | None = None) -> Path:
    """The newest run directory of ``config`` (same run name) under ``root`` that holds a checkpoint."""
    root = Path(config.run.root if root is None else root)
    pattern = re.compile(rf"^{re.escape(config.run_name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?$")
    found = []
    if root.is_dir():
        for path in root.iterdir():
            m = pattern.match(path.name)
            if m and (path / "checkpoints" / "last.json").is_file():
                found.append((m.group(1), int(m.group(2) or 1), path))
    if not found:
        raise CheckpointError(
            f"no run of {config.run_name!r} with a checkpoint under {str(root)!r}; give the run directory"
        )
    return max(found)[2]


# ---------------------------------------------------------------------------------------------
# the trainer


class _Trainer:
    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        *,
        run_dir: Path | None,
        resume: Path | None,
        data_dir: str | Path | None,
        splits: Any,
        progress: bool,
        on_epoch_end: Callback | None,
        on_step_end: Callback | None,
        on_start: Callback | None = None,
    ) -> None:
        self.on_start = on_start
        self.cfg = config
        self.rt = runtime
        self.resume = resume
        self.requested_dir = run_dir
        self.data_dir = data_dir
        self.splits = splits
        self.progress = progress and runtime.is_main
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end

    # -- setup ---------------------------------------------------------------------------------

    def _prepare_run_dir(self) -> Path:
        path: Path | None = None
        if self.rt.is_main:
            if self.resume is not None:
                path = Path(self.resume)
            elif self.requested_dir is not None:
                path = Path(self.requested_dir)
                if (path / "checkpoints" / "last.json").exists():
                    raise ConfigError(f"{str(path)!r} already holds a run; resume it with --resume {path}")
                path.mkdir(parents=True, exist_ok=True)
            else:
                path = new_run_dir(self.cfg)
        return Path(self.rt.broadcast_object(str(path)))

    def _load_resume_checkpoint(self) -> Checkpoint | None:
        if self.resume is None:
            return None
        ckpt = load_checkpoint(self.resume, "last")
        stored = ckpt.meta.get("config")
        if not isinstance(stored, Mapping):
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r} holds no config")
        config_from_dict(stored)  # the stored config must still be valid
        diff = [
            k
            for k in _config_diff(stored, self.cfg.to_dict())
            if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)
        ]
        if diff:
            raise ConfigError(
                f"cannot resume {str(self.resume)!r} with a different config ({', '.join(diff)}); "
                "only train.epochs, train.patience, train.checkpoint_every and run.* may change "
                f"(`fpnets train --resume {self.resume}` without CONFIG reuses the run's own config)"
            )
        if int(ckpt.meta.get("batch", 0)) > 0 and int(ckpt.meta.get("world_size", 1)) != self.rt.world_size:
            raise ConfigError(
                f"{str(self.resume)!r} was interrupted mid-epoch with {ckpt.meta.get('world_size')} processes; "
                "resume it with the same number"
            )
        return ckpt

    def _build(self, ckpt: Checkpoint | None) -> None:
        cfg, rt = self.cfg, self.rt
        seed_all(cfg.train.seed)
        model = build_network(cfg, self.splits.info).to(device=rt.device, dtype=rt.dtype)
        if cfg.run.channels_last and hasattr(model, "channels_last_"):
            model.channels_last_()
        self.net = model
        params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, o.step_size, o.step_gamma)
            if o.scheduler == "step"
            else None
        )
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.start_epoch = 0
        self.start_batch = 0
        self.step = 0
        self.partial: dict[str, float] = {}
        if ckpt is not None:
            self._restore(ckpt)
        if rt.distributed:
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                # (broadcast_buffers left at its default: BatchNorm statistics come from rank 0 at
                # every forward)
                # The same parameters in every step; some may never get a gradient (the SVHN
                # encoder's unused BatchNorm layers), and the IFT backward runs autograd.grad inside
                # a backward pass: a static graph covers both without a per-step graph search.
                static_graph=True,
            )
        else:
            self.model = model
        info = self.splits.info
        self.train_loader = make_loader(self.splits.train, cfg, rt, train=True, info=info)
        self.val_loader = make_loader(self.splits.val, cfg, rt, train=False, info=info)
        self.test_loader = make_loader(self.splits.test, cfg, rt, train=False, info=info)
        if len(self.splits.val) == 0:
            warnings.warn(
                "the validation split is empty: the last epoch is selected and early stopping is off",
                RuntimeWarning,
                stacklevel=3,
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        self.net.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(
            join_optimizer_state(ckpt.tensors, meta["optimizer"], self.optimizer.state_dict())
        )
        if self.scheduler is not None and meta.get("scheduler"):
            self.scheduler.load_state_dict(meta["scheduler"])
        self.history = list(meta.get("history", []))
        model = _unwrap(self.net)
        if self.history and self.history[-1].get("rescales") is not None and hasattr(model, "rescales"):
            model.rescales = int(self.history[-1]["rescales"])
        self.best = meta.get("best")
        self.bad_epochs = int(meta.get("bad_epochs", 0))
        self.stopped_early = bool(meta.get("stopped_early", False))
        self.start_epoch = int(meta["epoch"])
        self.start_batch = int(meta.get("batch", 0))
        self.step = int(meta["step"])
        self.partial = dict(meta.get("partial") or {})
        rngs = meta.get("rng") or []
        rank = self.rt.rank if len(rngs) == self.rt.world_size else 0
        if rngs:
            tensors = {k.split(".", 2)[2]: v for k, v in ckpt.tensors.items() if k.startswith(f"rng.{rank}.")}
            set_rng_state({f"rng.{k}": v for k, v in tensors.items()}, rngs[rank])
        if self.best is not None:
            if int(self.best["epoch"]) == int(meta["epoch"]) and self.start_batch == 0:
                self.best_state = {k: v.clone() for k, v in ckpt.model.items()}
            else:
                self.best_state = load_checkpoint(ckpt.path.parent, "best").model

    # -- checkpoints and outputs ---------------------------------------------------------------

    def _gather_rng(self) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        tensors, plain = rng_state()
        states = [(tensors, plain)]
        if self.rt.distributed:
            import torch.distributed as dist

            local = ({k: v.tolist() for k, v in tensors.items()}, plain)
            gathered: list[Any] = [None] * self.rt.world_size
            dist.all_gather_object(gathered, local)
            states = [({k: torch.tensor(v, dtype=torch.uint8) for k, v in t.items()}, p) for t, p in gathered]
        flat: dict[str, Tensor] = {}
        for rank, (t, _) in enumerate(states):
            for key, value in t.items():
                flat[f"rng.{rank}.{key.split('.', 1)[1]}"] = value
        return flat, [p for _, p in states]

    def _checkpoint(
        self, *, epoch: int, batch: int, is_best: bool, partial: Mapping[str, float] | None
    ) -> None:
        rng_tensors, rng_plain = self._gather_rng()  # collective: every rank takes part
        if self.rt.is_main:
            opt_tensors, opt_plain = split_optimizer_state(self.optimizer.state_dict())
            meta = {
                "epoch": epoch,
                "batch": batch,
                "step": self.step,
                "config": self.cfg.to_dict(),
                "optimizer": opt_plain,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": rng_plain,
                "history": self.history,
                "best": self.best,
                "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early,
                "partial": dict(partial) if partial else None,
                "world_size": self.rt.world_size,
                "saved_at": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            save_checkpoint(
                self.run_dir / "checkpoints",
                model=self.net.state_dict(),
                tensors={**opt_tensors, **rng_tensors},
                meta=meta,
                tags=("last", "best") if is_best else ("last",),
            )
        self.rt.barrier()

    def _write_run_files(self) -> None:
        if not self.rt.is_main:
            return
        atomic_write_text(self.run_dir / "config.toml", self.cfg.to_toml())
        info = {
            "fpnets": _version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(self.rt.device),
            "dtype": str(self.rt.dtype).replace("torch.", ""),
            "world_size": self.rt.world_size,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "data": {k: len(getattr(self.splits, k)) for k in ("train", "val", "test")},
            "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "resumed_from_epoch": self.start_epoch if self.resume is not None else None,
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(info, indent=1) + "\n")
        self.run_info = info

    # -- the loop ------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.train_loader.set_epoch(epoch)
        return self.train_loader.iter_from(start) if start else iter(self.train_loader)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, rt = self.cfg, self.rt
        start = self.start_batch if epoch == self.start_epoch else 0
        if start == 0:  # seeds depend only on (seed, epoch, rank): epoch-boundary resume needs no RNG state
            seed_all(derived_seed(cfg.train.seed, epoch, rt.rank))
        meter = _Meter(self.partial if start else None)
        elapsed = float(self.partial.get("time", 0.0)) if start else 0.0
        self.partial = {}
        self.model.train()
        total = len(self.train_loader)
        bar = _progress(
            self._batches(epoch, start),
            enabled=self.progress,
            total=total,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        )
        if bar is not None:
            bar.update(start)
        batches = bar if bar is not None else self._batches(epoch, start)
        t0 = time.perf_counter()
        try:
            for b, (x, y) in enumerate(batches, start=start):
                if x.dtype != rt.dtype:
                    x = x.to(rt.dtype)
                self.optimizer.zero_grad(set_to_none=True)
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                # under DDP every rank calls this: the models average their Lipschitz estimate over
                # the processes, so the replicas stay identical
                self.net.after_optimizer_step()
                meter.add(loss, logits, y, self.net)
                self.step += 1
                if bar is not None and not bar.disable and (b % 5 == 0 or b == total - 1):
                    s = _Meter.summary(meter.totals())
                    dt = time.perf_counter() - t0 + elapsed
                    post = {"loss": f"{s['loss']:.3f}", "acc": f"{100 * s['acc']:.1f}%"}
                    if s["iters"] is not None:
                        post["iters"] = f"{s['iters']:.1f}"
                    post["samples/s"] = f"{s['n'] * rt.world_size / max(dt, 1e-9):.0f}"
                    bar.set_postfix(post, refresh=False)
                if self.on_step_end is not None:
                    self.on_step_end({"step": self.step, "epoch": epoch, "batch": b + 1, "rank": rt.rank})
                every = cfg.train.checkpoint_every
                if every and self.step % every == 0 and b + 1 < total:
                    sums = {**meter.totals(), "time": time.perf_counter() - t0 + elapsed}
                    self._checkpoint(epoch=epoch, batch=b + 1, is_best=False, partial=sums)
        finally:
            if bar is not None:
                bar.close()
        train_time = time.perf_counter() - t0 + elapsed
        sums = meter.totals()
        keys = ("loss", "correct", "n", "iters", "iters_n")
        sums = dict(zip(keys, rt.all_sum([sums[k] for k in keys]), strict=True))
        stats = _Meter.summary(sums)
        return {"train": stats, "time": train_time, "samples": sums["n"]}

    def _evaluate(self, loader: Any) -> dict[str, Any]:
        stats = evaluate(self.net, loader, self.rt.dtype)
        return self.rt.broadcast_object(stats)  # every rank acts on rank 0's numbers

    def _epoch(self, epoch: int, tb: TensorBoard) -> None:
        """Train one epoch, validate, select, checkpoint, log."""
        cfg, rt = self.cfg, self.rt
        t_epoch = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        out = self._train_epoch(epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        rt.sync_buffers(self.net)  # BatchNorm running statistics: rank 0's, as DDP's forward does
        val = self._evaluate(self.val_loader)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": out["train"]["loss"],
            "train_acc": out["train"]["acc"],
            "train_iters": out["train"]["iters"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_iters": val["iters"],
            "samples_per_s": out["samples"] / max(out["time"], 1e-9),
            "epoch_s": time.perf_counter() - t_epoch,
            # how often the reference Lipschitz rule has rescaled R so far (None: no such rule)
            "rescales": getattr(_unwrap(self.net), "rescales", None),
        }
        is_best = _better(record, self.best, cfg.train.select)
        if is_best:
            self.best = {k: record[k] for k in ("epoch", "val_loss", "val_acc", "val_iters")}
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if cfg.train.patience and self.bad_epochs >= cfg.train.patience:
                self.stopped_early = True
        self.history.append(record)
        self._checkpoint(epoch=epoch + 1, batch=0, is_best=is_best, partial=None)
        if rt.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", self.history)
            tb.log(record)
        if self.on_epoch_end is not None:
            self.on_epoch_end({**record, "best": is_best, "rank": rt.rank, "epochs": cfg.train.epochs})

    def fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        ckpt = self._load_resume_checkpoint()
        if self.splits is None:
            self.splits = load_data(cfg, self.data_dir)
        self._build(ckpt)  # before the run directory exists: a data or model error leaves nothing behind
        self.run_dir = self._prepare_run_dir()
        if self.resume is not None:
            log.info("resuming %s from epoch %d (step %d)", self.run_dir, self.start_epoch, self.step)
        else:
            log.info("new run in %s", self.run_dir)
        self._write_run_files()
        if self.on_start is not None:
            self.on_start(
                {
                    **getattr(self, "run_info", {}),
                    "run_dir": self.run_dir,
                    "rank": rt.rank,
                    "start_epoch": self.start_epoch,
                    "epochs": cfg.train.epochs,
                }
            )
        tb = TensorBoard(self.run_dir / "tensorboard", enabled=cfg.run.tensorboard and rt.is_main)
        try:
            with warnings.catch_warnings():
                # A conv weight with one input channel gets its gradient in an equivalent layout with
                # other strides; DDP copies it into its bucket correctly and only warns about speed.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                epoch = self.start_epoch
                while epoch < cfg.train.epochs and not self.stopped_early:
                    self._epoch(epoch, tb)
                    epoch += 1
        finally:
            tb.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        rt = self.rt
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        self.net.eval()
        if self.best is None:
            val = {"loss": math.nan, "acc": math.nan, "iters": None, "n": len(self.splits.val)}
            test = {"loss": math.nan, "acc": math.nan, "iters": None, "n": len(self.splits.test)}
            best_epoch = 0
        else:
            val = self._evaluate(self.val_loader)
            test = self._evaluate(self.test_loader)
            best_epoch = int(self.best["epoch"])
        if rt.is_main:
            results = {
                "best_epoch": best_epoch,
                "epochs": len(self.history),
                "stopped_early": self.stopped_early,
                "val": val,
                "test": test,
                "checkpoint": "checkpoints/best.json",
            }
            atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=1) + "\n")
            if self.history:
                write_metrics_csv(self.run_dir / "metrics.csv", self.history)
            if self.cfg.run.plots and self.history:
                title = f"{self.cfg.run_name}: test acc {100 * test['acc']:.2f}% (epoch {best_epoch})"
                write_plots(self.run_dir, self.history, title=title)
        rt.barrier()
        return TrainResult(
            run_dir=self.run_dir,
            config=self.cfg,
            best_epoch=best_epoch,
            val=val,
            test=test,
            history=copy.deepcopy(self.history),
            stopped_early=self.stopped_early,
            model=self.net,
        )


def _version() -> str:
    from .. import __version__

    return __version__


def train(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    data_dir: str | Path | None = None,
    splits: Any = None,
    progress: bool | None = None,
    on_epoch_end: Callback | None = None,
    on_step_end: Callback | None = None,
    on_start: Callback | None = None,
) -> TrainResult:
    """Train the model ``config`` describes; select the epoch on validation; test it once.

    Args:
        config: a resolved :class:`Config` (see :func:`load_config`).
        run_dir: the directory of a new run (default ``<run.root>/<run name>-<timestamp>``).
        resume: a run directory to continue from its ``last`` checkpoint (same final weights as an
            uninterrupted run). Only ``train.epochs``, ``train.patience``,
            ``train.checkpoint_every`` and ``run.*`` may differ from the run's config.
        data_dir: where the dataset files are (default ``$FPNETS_DATA``; unused for digits).
        splits: already loaded :class:`fpnets.data.Splits` (skips loading).
        progress: show tqdm progress bars (default ``run.progress``); rank 0 only.
        on_epoch_end: called with the epoch's record (plus ``best``, ``rank``, ``epochs``) on every rank.
        on_step_end: called after every optimizer step with ``step``, ``epoch``, ``batch``, ``rank``.
        on_start: called once the run is set up, with ``run_dir``, ``parameters``, ``data`` (split
            sizes), ``device``, ``start_epoch``, ``epochs``, ``rank``.

    Launched by ``torchrun``, every process runs this function: the model is wrapped in
    DistributedDataParallel, the training batches are sharded, metrics summed over the ranks, and
    only rank 0 writes files.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a fpnets.train.Config, got {type(config).__name__}")
    runtime = setup_runtime(config.run.device, config.run.dtype)
    try:
        with process_settings(runtime, config.run.threads, config.run.deterministic):
            trainer = _Trainer(
                config,
                runtime,
                run_dir=Path(run_dir) if run_dir is not None else None,
                resume=Path(resume) if resume is not None else None,
                data_dir=data_dir,
                splits=splits,
                progress=config.run.progress if progress is None else progress,
                on_epoch_end=on_epoch_end,
                on_step_end=on_step_end,
                on_start=on_start,
            )
            return trainer.fit()
    finally:
        runtime.close()


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
    splits: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved model (run directory → its best checkpoint, or a manifest) on a split.

    Returns ``{"loss", "acc", "iters", "n", "epoch", "split", "checkpoint"}``.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    ckpt = load_checkpoint(path, "best")
    config = config_from_dict(ckpt.meta["config"])
    from ._runtime import DTYPES, resolve_device

    dev = resolve_device(device)
    dt = DTYPES[dtype or config.run.dtype]
    if splits is None:
        splits = load_data(config, data_dir)
    model = build_network(config, splits.info).to(device=dev, dtype=dt)
    if config.run.channels_last and hasattr(model, "channels_last_"):
        model.channels_last_()
    model.load_state_dict(ckpt.model)
    from ..data import BatchLoader

    loader = BatchLoader(
        getattr(splits, split), config.data.eval_batch_size, shuffle=False, normalize=splits.info, device=dev
    )
    stats = evaluate(model, loader, dt)
    return {**stats, "epoch": ckpt.epoch, "split": split, "checkpoint": str(ckpt.path)}


__all__ = [
    "TrainResult",
    "build_network",
    "evaluate",
    "evaluate_checkpoint",
    "latest_run",
    "load_data",
    "new_run_dir",
    "train",
]
