"""The training loop, the same for every task: it knows a task only through :class:`fpnets.tasks.Task`."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._seed import derive_seed
from ..tasks import Task
from ._checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    join_optimizer_state,
    load_checkpoint,
    repoint_manifest,
    require_safetensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
    split_optimizer_state,
)
from ._config import Config, config_from_dict
from ._engine import ConfigError
from ._outputs import TensorBoard, columns, write_metrics_csv, write_plots
from ._provenance import provenance
from ._runtime import DTYPES, Runtime, process_settings, resolve_device, seed_all, setup_runtime
from ._state import RunLock, check_resumable, new_run_dir
from ._step import train_step

log = logging.getLogger("fpnets.train")

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory (checkpoints, metrics.csv, plots, config.toml, results.json).
        config: the resolved configuration.
        best_epoch: the epoch (1-based) selected on the validation split (0: no epoch trained).
        val: loss, the task's metrics, iters and n of the selected model on the validation split.
        test: the same on the test split, evaluated once, for the selected model only.
        history: one record per epoch (the columns of metrics.csv).
        stopped_early: whether early stopping ended the run.
        model: the model with the selected (best-validation) weights, unwrapped, in eval mode.
    """

    run_dir: Path
    config: Config
    best_epoch: int
    val: dict[str, Any]
    test: dict[str, Any]
    history: list[dict[str, Any]]
    stopped_early: bool
    model: nn.Module = field(repr=False)


def _to_dtype(x: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of a batch's inputs in the run's dtype (integer tensors untouched)."""
    if isinstance(x, Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, tuple):
        return tuple(_to_dtype(t, dtype) for t in x)
    return x


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Meter:
    """Running sums of one pass: loss·n, each metric's sum, n, forward iterations and their count.

    The sums stay on the device and are fetched every 32 batches (one synchronisation, not one per
    batch).
    """

    def __init__(self, task: type[Task], values: Mapping[str, float] | None = None) -> None:
        self.names = [m.name for m in task.metrics]
        self.keys = ["loss", *self.names, "iters", "iters_n"]
        self.sums = dict.fromkeys([*self.keys, "n"], 0.0)
        if values:
            self.sums.update({k: float(v) for k, v in values.items() if k in self.sums})
        self._pending: list[Tensor] = []

    def add(self, loss: Tensor, values: Mapping[str, Tensor], iterations: Tensor | None, n: int) -> None:
        zero = loss.new_zeros((), dtype=torch.float64)
        row = [loss.detach().double() * n]
        for name in self.names:
            row.append(values[name].detach().double().sum().to(zero.device))
        if iterations is None:
            row += [zero, zero]
        else:
            row += [iterations.to(zero.device).double().sum(), zero + iterations.numel()]
        self._pending.append(torch.stack(row))
        self.sums["n"] += n
        if len(self._pending) >= 32:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            total = torch.stack(self._pending).sum(0).tolist()
            self._pending = []
            for key, value in zip(self.keys, total, strict=True):
                self.sums[key] += value

    def totals(self) -> dict[str, float]:
        self._flush()
        return dict(self.sums)

    def summary(self, sums: Mapping[str, float] | None = None) -> dict[str, Any]:
        sums = self.totals() if sums is None else sums
        n = sums["n"]
        out: dict[str, Any] = {"loss": sums["loss"] / n if n else math.nan}
        for name in self.names:
            out[name] = sums[name] / n if n else math.nan
        out["iters"] = sums["iters"] / sums["iters_n"] if sums["iters_n"] else None
        out["n"] = int(n)
        return out


def _measure(task: Task, output: Any, target: Any) -> dict[str, Tensor]:
    values = task.measure(output, target)
    missing = [m.name for m in task.metrics if m.name not in values]
    if missing:
        raise ValueError(f"{type(task).__name__}.measure returned no value for {', '.join(missing)}")
    return values


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: Iterable[Any], dtype: torch.dtype | None = None) -> dict:
    """The task's loss and metrics and the mean forward iterations of ``model`` (eval mode) on ``loader``.

    Returns ``{"loss", <each metric>, "iters", "n"}`` (iters None for models without a solve).
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    meter = Meter(type(task))
    try:
        for inputs, target in loader:
            if dtype is not None:
                inputs = _to_dtype(inputs, dtype)
            output = task.forward(model, inputs)
            loss = task.loss(output, target)
            meter.add(loss, _measure(task, output, target), task.iterations(model), _batch_size(target))
    finally:
        model.train(was_training)
    return meter.summary()


def _batch_size(target: Any) -> int:
    if isinstance(target, Tensor):
        return int(target.shape[0])
    if isinstance(target, (tuple, list)) and target and isinstance(target[0], Tensor):
        return int(target[0].shape[0])
    return len(target)


def _progress(iterable: Iterable, *, enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch", disable=None)


def is_better(record: Mapping[str, Any], best: Mapping[str, Any] | None, select: str, higher: bool) -> bool:
    """Whether an epoch's record beats the best so far on ``select`` (``val.<metric>``), ties
    broken by the lower validation loss; a NaN score (no validation data) always wins."""
    if best is None:
        return True
    key = "val_" + select.split(".", 1)[1]
    value = record[key]
    if value is None or math.isnan(value):
        return True
    sign = 1.0 if higher else -1.0
    return (sign * value, -record["val_loss"]) > (sign * best[key], -best["val_loss"])


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
        self.cfg = config
        self.task = config.make_task()
        self.cols = columns(type(self.task))
        self.select = config.select
        self.select_higher = type(self.task).metric(self.select.split(".", 1)[1]).higher_is_better
        self.rt = runtime
        self.resume = resume
        self.requested_dir = run_dir
        self.data_dir = data_dir
        self.splits = splits
        self.progress = progress and runtime.is_main
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end
        self.on_start = on_start

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
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot create the run directory {str(path)!r}: {exc.strerror or exc}"
                    ) from None
            else:
                path = new_run_dir(self.cfg)
        return Path(self.rt.broadcast_object(str(path)))

    def _load_resume_checkpoint(self) -> Checkpoint | None:
        if self.resume is None:
            return None
        ckpt = load_checkpoint(self.resume, "last")
        check_resumable(ckpt.meta.get("config"), self.cfg, self.resume)
        if int(ckpt.meta.get("batch", 0)) > 0 and int(ckpt.meta.get("world_size", 1)) != self.rt.world_size:
            raise ConfigError(
                f"{str(self.resume)!r} was interrupted mid-epoch with {ckpt.meta.get('world_size')} processes; "
                "resume it with the same number"
            )
        return ckpt

    def _build(self, ckpt: Checkpoint | None) -> None:
        cfg, rt = self.cfg, self.rt
        seed_all(cfg.train.seed)
        model = self.task.build_model().to(device=rt.device, dtype=rt.dtype)
        self.net = model
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                f"the {cfg.task.name} model {type(model).__name__} has no trainable parameters; "
                "there is nothing to train (evaluate it instead)"
            )
        o = cfg.optim
        self.optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, o.step_size, o.step_gamma)
            if o.scheduler == "step"
            else None
        )
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_val: dict[str, Any] | None = None  # the best epoch's validation stats, this process
        self.best_state: dict[str, Tensor] | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.start_epoch = 0
        self.start_batch = 0
        self.step = 0
        self.partial: dict[str, float] = {}
        if cfg.train.jacobian_weight > 0 and not callable(getattr(model, "jacobian_penalty", None)):
            raise ConfigError(
                f"train.jacobian_weight needs a model with a jacobian_penalty() method; "
                f"{type(model).__name__} has none"
            )
        if ckpt is not None:
            self._restore(ckpt)
        if rt.distributed:
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                # The same parameters in every step; some may never get a gradient (the SVHN
                # encoder's unused BatchNorm layers), and the IFT backward runs autograd.grad inside
                # a backward pass: a static graph covers both without a per-step graph search.
                static_graph=True,
            )
        else:
            self.model = model
        s, task = self.splits, self.task
        self.train_loader = task.loader(
            s.train, train=True, rank=rt.rank, world_size=rt.world_size, device=rt.device
        )
        self.val_loader = task.loader(s.val, train=False, device=rt.device)
        self.test_loader = task.loader(s.test, train=False, device=rt.device)
        if len(s.val) == 0:
            warnings.warn(
                "the validation split is empty: the last epoch is selected and early stopping is off",
                RuntimeWarning,
                stacklevel=3,
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        if not isinstance(meta.get("optimizer"), Mapping):
            raise CheckpointError(
                f"checkpoint {str(ckpt.path)!r} holds no optimizer state; it cannot be resumed"
            )
        try:
            self.net.load_state_dict(ckpt.model)
            state = join_optimizer_state(ckpt.tensors, meta["optimizer"], self.optimizer.state_dict())
            _check_optimizer_state(state, self.optimizer)
            self.optimizer.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(ckpt.path)!r} does not fit the model or optimizer its config builds: "
                + " ".join(str(exc).split())[:300]
            ) from None
        if self.scheduler is not None and meta.get("scheduler"):
            self.scheduler.load_state_dict(meta["scheduler"])
        self.history = list(meta.get("history", []))
        if self.history:
            self.task.restore(self.net, self.history[-1])
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
            self.best_state = self._best_weights(ckpt)

    def _best_weights(self, ckpt: Checkpoint) -> dict[str, Tensor]:
        """The weights of the best epoch recorded in ``last``: its own weights when it is the best
        epoch, else those ``best.json`` points to, which must be that epoch's."""
        assert self.best is not None
        best_epoch = int(self.best["epoch"])
        if best_epoch == int(ckpt.meta["epoch"]) and self.start_batch == 0:
            if self.rt.is_main:  # a crash between writing last and best left best behind: re-point it
                repoint_manifest(ckpt.path, "best")
            return {k: v.clone() for k, v in ckpt.model.items()}
        try:
            best = load_checkpoint(ckpt.path.parent, "best")
        except CheckpointError as exc:
            raise CheckpointError(
                f"the run's best epoch {best_epoch} has no readable best checkpoint ({exc}); "
                "its best weights are lost: start a new run"
            ) from None
        if best.path.name != "best.json" or best.epoch != best_epoch:
            raise CheckpointError(
                f"{str(ckpt.path.parent / 'best.json')!r} holds epoch {best.epoch if best.path.name == 'best.json' else 'none'}, "
                f"but the run's best epoch is {best_epoch}: the best weights are lost; start a new run"
            )
        return best.model

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
            # last, then best: a crash between the two leaves a ``last`` that names its own epoch
            # as the best and a stale ``best``, which the resume re-points (see _best_weights)
            save_checkpoint(
                self.run_dir / "checkpoints",
                model=self.net.state_dict(),
                tensors={**opt_tensors, **rng_tensors},
                meta=meta,
                tags=("last", "best") if is_best else ("last",),
            )
        self.rt.barrier()

    def _run_info(self) -> dict[str, Any]:
        """What this process trains: device, dtype, processes, parameters, split sizes."""
        return {
            "device": str(self.rt.device),
            "dtype": str(self.rt.dtype).replace("torch.", ""),
            "world_size": self.rt.world_size,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "data": {k: len(getattr(self.splits, k)) for k in ("train", "val", "test")},
        }

    def _write_run_files(self, run_info: dict[str, Any]) -> None:
        """config.toml, and run.json: written once for a new run; a resume appends to its history."""
        if not self.rt.is_main:
            return
        info_path = self.run_dir / "run.json"
        now = datetime.datetime.now().isoformat(timespec="seconds")
        if self.resume is not None and info_path.is_file():
            try:
                info = json.loads(info_path.read_text("utf-8"))
            except (OSError, ValueError):
                info = {}
            info.setdefault("resumed", []).append(
                {"at": now, "from_epoch": self.start_epoch, "epochs": self.cfg.train.epochs, **provenance()}
            )
        else:
            info = {
                "fpnets": _version(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                **run_info,
                "task": self.cfg.task.name,
                "started_at": now,
                "resumed_from_epoch": self.start_epoch if self.resume is not None else None,
                **provenance(),
            }
        atomic_write_text(self.run_dir / "config.toml", self.cfg.to_toml())
        atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")

    # -- the loop ------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[Any]:
        self.train_loader.set_epoch(epoch)
        return self.train_loader.iter_from(start) if start else iter(self.train_loader)

    def _penalty(self) -> Callable[[], Tensor] | None:
        t = self.cfg.train
        if t.jacobian_weight <= 0 or self.step % t.jacobian_every:
            return None
        net = self.net
        return lambda: net.jacobian_penalty(t.jacobian_probes)  # type: ignore[operator]

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, rt, task = self.cfg, self.rt, self.task
        start = self.start_batch if epoch == self.start_epoch else 0
        if start == 0:  # seeds depend only on (seed, epoch, rank): epoch-boundary resume needs no RNG state
            seed_all(derive_seed(cfg.train.seed, epoch, rt.rank))
        meter = Meter(type(task), self.partial if start else None)
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
        shown = [m for m in type(task).metrics]
        t0 = time.perf_counter()
        try:
            for b, (inputs, target) in enumerate(batches, start=start):
                inputs = _to_dtype(inputs, rt.dtype)
                out = train_step(
                    self.model,
                    inputs,
                    target,
                    task.loss,
                    self.optimizer,
                    grad_clip=cfg.optim.grad_clip,
                    params=self.net.parameters(),
                    after_step=lambda: task.after_step(self.net),
                    penalty=self._penalty(),
                    penalty_weight=cfg.train.jacobian_weight,
                )
                meter.add(
                    out.loss,
                    _measure(task, out.output, target),
                    task.iterations(self.net),
                    _batch_size(target),
                )
                self.step += 1
                if bar is not None and not bar.disable and (b % 5 == 0 or b == total - 1):
                    s = meter.summary()
                    dt = time.perf_counter() - t0 + elapsed
                    post = {"loss": f"{s['loss']:.4g}"}
                    for m in shown:
                        post[m.name] = f"{100 * s[m.name]:.1f}%" if m.percent else f"{s[m.name]:.4g}"
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
        keys = [*meter.keys, "n"]
        sums = dict(zip(keys, rt.all_sum([sums[k] for k in keys]), strict=True))
        return {"train": meter.summary(sums), "time": train_time, "samples": sums["n"]}

    def _evaluate(self, loader: Any) -> dict[str, Any]:
        stats = evaluate(self.task, self.net, loader, self.rt.dtype)
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
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        for split, stats in (("train", out["train"]), ("val", val)):
            for key in ("loss", *(m.name for m in type(self.task).metrics), "iters"):
                record[f"{split}_{key}"] = stats[key]
        record["samples_per_s"] = out["samples"] / max(out["time"], 1e-9)
        record["epoch_s"] = time.perf_counter() - t_epoch
        record.update(self.task.epoch_stats(self.net))
        is_best = is_better(record, self.best, self.select, self.select_higher)
        if is_best:
            keep = {"epoch", "val_loss", "val_iters", "val_" + self.select.split(".", 1)[1]}
            keep |= {f"val_{m.name}" for m in type(self.task).metrics}
            self.best = {k: record[k] for k in record if k in keep}
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.best_val = copy.deepcopy(val)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if cfg.train.patience and self.bad_epochs >= cfg.train.patience:
                self.stopped_early = True
        self.history.append(record)
        self._checkpoint(epoch=epoch + 1, batch=0, is_best=is_best, partial=None)
        if rt.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", self.history, self.cols)
            tb.log(record)
        if self.on_epoch_end is not None:
            self.on_epoch_end({**record, "best": is_best, "rank": rt.rank, "epochs": cfg.train.epochs})

    def fit(self) -> TrainResult:
        self.lock = RunLock(Path(self.resume)) if self.resume is not None and self.rt.is_main else None
        if self.lock is not None:  # before reading the checkpoint another writer may be changing
            self.lock.acquire()
        try:
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        ckpt = self._load_resume_checkpoint()
        if self.splits is None:
            self.splits = self.task.load_splits(self.data_dir)
        self._build(ckpt)  # before the run directory exists: a data or model error leaves nothing behind
        self.run_dir = self._prepare_run_dir()
        if self.lock is None and rt.is_main:
            self.lock = RunLock(self.run_dir).acquire()
        if self.resume is not None:
            log.info("resuming %s from epoch %d (step %d)", self.run_dir, self.start_epoch, self.step)
        else:
            log.info("new run in %s", self.run_dir)
        run_info = self._run_info()
        self._write_run_files(run_info)
        if self.on_start is not None:
            self.on_start(
                {
                    **run_info,
                    "run_dir": self.run_dir,
                    "rank": rt.rank,
                    "start_epoch": self.start_epoch,
                    "epochs": cfg.train.epochs,
                }
            )
        tb = TensorBoard(self.run_dir / "tensorboard", self.cols, enabled=cfg.run.tensorboard and rt.is_main)
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

    def _empty(self, split: str) -> dict[str, Any]:
        stats: dict[str, Any] = {"loss": None}
        stats.update({m.name: None for m in type(self.task).metrics})
        return {**stats, "iters": None, "n": len(getattr(self.splits, split))}

    def _finish(self) -> TrainResult:
        rt = self.rt
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        self.net.eval()
        if self.best is None:
            val, test, best_epoch = self._empty("val"), self._empty("test"), 0
        else:
            # the best weights were validated when they were selected (eval mode is deterministic):
            # reuse those numbers; a resumed run, which has only the record, validates again
            val = self.best_val if self.best_val is not None else self._evaluate(self.val_loader)
            test = self._evaluate(self.test_loader)
            best_epoch = int(self.best["epoch"])
        if rt.is_main:
            results = {
                "task": self.cfg.task.name,
                "select": self.select,
                "best_epoch": best_epoch,
                "epochs": len(self.history),
                "stopped_early": self.stopped_early,
                "val": val,
                "test": test,
                "checkpoint": "checkpoints/best.json" if best_epoch else None,
            }
            atomic_write_text(self.run_dir / "results.json", json.dumps(_finite(results), indent=1) + "\n")
            if self.history:
                write_metrics_csv(self.run_dir / "metrics.csv", self.history, self.cols)
            if self.cfg.run.plots and self.history:
                task = type(self.task)
                m = task.metrics[0] if task.metrics else task.metric("loss")
                value = test.get(m.name)
                shown = "n/a" if value is None else (f"{100 * value:.2f}%" if m.percent else f"{value:.4g}")
                title = f"{self.cfg.run_name}: test {m.name} {shown} (epoch {best_epoch})"
                write_plots(self.run_dir, self.history, task.metrics, loss_label=task.loss_label, title=title)
                self.task.figures(self.run_dir, self.net, self.splits, device=rt.device, dtype=rt.dtype)
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


def _check_optimizer_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError when saved per-parameter state does not match the parameters' shapes
    (``load_state_dict`` would accept it and the next step would fail)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, entry in state["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"optimizer state for parameter {pid}, but the model has {len(params)}")
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != params[int(pid)].shape:
                raise ValueError(
                    f"optimizer state {key!r} of parameter {pid} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(params[int(pid)].shape)}"
                )


def _finite(value: Any) -> Any:
    """NaN and ±Inf as None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


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
        config: a resolved :class:`Config` (see :func:`load_config`); its ``[task]`` names the task.
        run_dir: the directory of a new run (default ``<run.root>/<run name>-<timestamp>``).
        resume: a run directory to continue from its ``last`` checkpoint (same final weights as an
            uninterrupted run). Only the keys in ``RESUMABLE_CHANGES`` may differ from the run's config.
        data_dir: where the task's data files are (default: the task's, e.g. ``$FPNETS_DATA``).
        splits: already loaded splits (skips :meth:`Task.load_splits`).
        progress: show tqdm progress bars (default ``run.progress``); rank 0 only.
        on_epoch_end: called with the epoch's record (plus ``best``, ``rank``, ``epochs``) on every rank.
        on_step_end: called after every optimizer step with ``step``, ``epoch``, ``batch``, ``rank``.
        on_start: called once the run is set up, with ``run_dir``, ``parameters``, ``data`` (split
            sizes), ``device``, ``start_epoch``, ``epochs``, ``rank``.

    Launched by ``torchrun``, every process runs this function: the model is wrapped in
    DistributedDataParallel, the training batches are sharded (``data.batch_size`` is per process,
    so the global batch is ``world_size`` times larger), metrics summed over the ranks, and only
    rank 0 writes files.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a fpnets.train.Config, got {type(config).__name__}")
    require_safetensors()  # checkpoints need it: fail before training, not after an epoch
    runtime = setup_runtime(config.run.device, config.run.dtype)
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


@dataclass
class SavedModel:
    """A trained model rebuilt from a checkpoint (:func:`load_model`)."""

    config: Config
    task: Any
    splits: Any
    model: nn.Module
    checkpoint: Any


def load_model(
    path: str | Path,
    *,
    tag: str = "best",
    data_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
    splits: Any = None,
) -> SavedModel:
    """The model of a checkpoint (run directory → its ``tag`` checkpoint, or a manifest), built by the
    task of the config stored in it, with the checkpoint's weights, on ``device`` in ``dtype``
    (default: the run's); the task's splits are loaded from ``data_dir`` unless given."""
    ckpt = load_checkpoint(path, tag)
    stored = ckpt.meta.get("config")
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r} holds no config")
    config = config_from_dict(stored)
    task = config.make_task()
    if splits is None:
        splits = task.load_splits(data_dir)
    model = task.build_model().to(device=resolve_device(device), dtype=DTYPES[dtype or config.run.dtype])
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {str(ckpt.path)!r} does not fit the model its config builds: "
            + " ".join(str(exc).split())[:300]
        ) from None
    return SavedModel(config, task, splits, model, ckpt)


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

    Returns ``{"loss", <the task's metrics>, "iters", "n", "epoch", "split", "checkpoint"}``.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    saved = load_model(path, data_dir=data_dir, device=device, dtype=dtype, splits=splits)
    dev = resolve_device(device)
    loader = saved.task.loader(getattr(saved.splits, split), train=False, device=dev)
    stats = evaluate(saved.task, saved.model, loader, DTYPES[dtype or saved.config.run.dtype])
    return {
        **stats,
        "epoch": saved.checkpoint.epoch,
        "split": split,
        "checkpoint": str(saved.checkpoint.path),
    }


__all__ = [
    "Meter",
    "SavedModel",
    "TrainResult",
    "evaluate",
    "evaluate_checkpoint",
    "is_better",
    "load_model",
    "train",
]
