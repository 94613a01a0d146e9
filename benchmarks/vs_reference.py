"""fpnets against the JFB reference implementation's own code, side by side in one process, on MNIST.

The reference is the paper authors' ``Networks.MNIST_FPN`` (Typal-Research/jacobian_free_backprop
at 60618c2), imported from ``--peer-dir`` (nothing of it is copied here). Its training step is the
inner step of its ``utils.train_class_net``: ``optimizer.zero_grad()``, ``net(d, eps=0.1,
max_depth=50)`` (fixed-point iteration without a graph until the largest channel-norm residual of
the batch is ≤ ε, its Lipschitz probe and rescaling, one more application of R with a graph),
cross-entropy, ``backward()``, Adam step (lr 2e-4, weight decay 1e-6, as its ``train_MNIST.py``).
fpnets runs :func:`fpnets.train.train_step` exactly as ``fpnets train`` does, on the model, loss,
optimizer and Lipschitz rule that the shipped ``configs/mnist.toml`` (plus ``--config-set``
overrides) builds, under the config's process settings (threads, deterministic algorithms).

Networks (``--network``), as the reference's class builds them:

- ``paper``: ``MNIST_FPN(lat_layers=2, num_channels=32, contraction_factor=0.5)`` (its
  ``train_MNIST.py``): 2 latent blocks, γ = 0.5, 54,352 parameters; fpnets ``model.latent_blocks=2,
  model.gamma=0.5``.
- ``published``: ``MNIST_FPN(lat_layers=1, num_channels=32, contraction_factor=0.9)``, the network
  of the published checkpoint ``MNIST_FPN_weights_99.36.pth``: 35,856 parameters; fpnets
  ``model.latent_blocks=1, model.gamma=0.9``.

Training steps. Both sides start from the same weights (the reference's freshly initialised
state dict is loaded into the fpnets model through :func:`fpnets.models.map_reference_state_dict`;
if the fpnets model cannot take it, e.g. another variant, each side keeps its own seeded
initialisation and the output says so) and see the same batches in the same order: batches of the
fpnets training split (55,000 images; 5,000 held out for validation) from the training loader
``fpnets train`` uses, normalised with (0.1307, 0.3081), which is the reference's
``Normalize``; the reference gets an NCHW-contiguous copy of every batch. After ``--warmup``
untimed steps, each of ``--rounds`` rounds trains both sides ``--steps`` steps on that round's
batches, one side after the other (the reference first in odd rounds, fpnets first in even ones),
each step timed alone. Reported per side: the median ms/step of every round, forward iterations
per step, training accuracy and loss over the timed steps, and the test accuracy after all steps,
evaluated in eval mode for both (the reference's own loop evaluates its test set in training mode
at its last commit: batch statistics, dropout and weight rescaling on; this script evaluates it
correctly, in eval mode).

Forward iterations: the reference stops the whole batch at once and records the count in
``net.depth``; fpnets stops every sample on its own (``model.solution.iterations``, per sample):
its per-batch maximum is the reference's kind of count, the per-sample mean is what its trainer
logs as ``iters``. Neither counts the application of R with a graph or the Lipschitz probe.

``--eval``: eval-mode throughput on the test set, ``--rounds`` passes per side alternating; the
reference loops as its ``get_stats`` does (batches of 400 from its driver, ``Normalize`` on the
fly, ``.item()`` per batch), fpnets runs :func:`fpnets.train.evaluate` on the task's test loader
(``data.eval_batch_size``). ``--eval-batch`` sets both batch sizes.

``--epoch``: one whole epoch end to end, data loading included. fpnets: exactly
:func:`fpnets.train.train` on ``configs/mnist.toml`` with ``train.epochs=1`` and the network's
``--set`` overrides (data loading with checksum verification, 550 steps over 55,000 images,
validation, checkpoints, the final validation and test evaluation, plots), timed from the call to
its return. The reference: reading the IDX files into tensors, building the network, one epoch of
its step over a shuffled permutation of all 60,000 training images in batches of 100 with its
preprocessing ``Normalize(0.1307, 0.3081)`` done in torch on the in-memory tensors (no
torchvision), then its test evaluation (eval mode). The two epochs see different numbers of
images: compare ms/step and images/s as well as the totals.

Timings are meaningful only on an otherwise idle machine: the load average is recorded at the start
and the end and the script warns when the 1-minute load exceeds half the cores.

    python benchmarks/vs_reference.py --data-dir ../shared/data/mnist --network both --eval --epoch \\
        --json benchmarks/results/vs_reference.json
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpnets.models import map_reference_state_dict
from fpnets.train import evaluate, load_config, train, train_step
from fpnets.train._runtime import process_settings, resolve_device, seed_all, setup_runtime

from common import (
    busy_warning,
    command_line,
    cpu_name,
    git_commit,
    machine_load,
    markdown_table,
    median,
    read_idx_ubyte,
    script_parser,
    sync,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist.toml"
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "jfb-reference"

# The reference driver's settings (train_MNIST.py and utils.mnist_loaders at 60618c2).
REF_EPS = 0.1
"""ε: the reference's forward tolerance on max over batch and pixels of the channel norm of u_k − u_{k−1}."""
REF_MAX_DEPTH = 50
"""The reference's cap on forward iterations."""
REF_LR, REF_WEIGHT_DECAY = 2e-4, 1e-6
REF_BATCH, REF_TEST_BATCH = 100, 400
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
"""The reference's ``transforms.Normalize((0.1307,), (0.3081,))``."""


@dataclass(frozen=True)
class Network:
    """One MNIST network, as the reference constructs it and as fpnets overrides select it."""

    name: str
    lat_layers: int
    """``MNIST_FPN(lat_layers=...)``: latent blocks in R."""
    gamma: float
    """``contraction_factor``: γ, R = γ·z_L."""
    parameters: int
    """Parameter count the paper facts give (checked against both models)."""
    label: str

    @property
    def fpnets_sets(self) -> list[str]:
        return [f"model.latent_blocks={self.lat_layers}", f"model.gamma={self.gamma}"]

    def title(self) -> str:
        return f"{self.name}: {self.label}, {self.lat_layers} latent block(s), γ {self.gamma:g}"


NETWORKS = {
    "paper": Network("paper", 2, 0.5, 54_352, "the paper's network (reference train_MNIST.py)"),
    "published": Network("published", 1, 0.9, 35_856, "the published checkpoint's network"),
}


# ----------------------------------------------------------------------------------------------
# the two sides


def import_reference(peer_dir: Path) -> Any:
    """The reference's ``Networks`` module from ``peer_dir`` (added to ``sys.path``)."""
    if not (peer_dir / "Networks.py").is_file():
        raise SystemExit(
            f"--peer-dir {peer_dir}: no Networks.py there; give the folder holding the reference "
            "implementation (Typal-Research/jacobian_free_backprop)"
        )
    sys.path.insert(0, str(peer_dir.resolve()))
    module = importlib.import_module("Networks")
    if not hasattr(module, "MNIST_FPN"):
        raise SystemExit(f"{peer_dir / 'Networks.py'} defines no MNIST_FPN: not the JFB reference code")
    return module


class ReferenceSide:
    """The reference network and optimizer, and the inner step of its training loop."""

    def __init__(self, networks: Any, network: Network, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.net: nn.Module = networks.MNIST_FPN(
            lat_layers=network.lat_layers,
            num_channels=32,
            contraction_factor=network.gamma,
            architecture="FPN",
        ).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=REF_LR, weight_decay=REF_WEIGHT_DECAY)
        self.parameters = sum(p.numel() for p in self.net.parameters())

    def step(self, d: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, float]:
        """One step of ``train_class_net``: returns the detached loss ℓ, the logits and ``net.depth``."""
        self.optimizer.zero_grad()
        y = self.net(d, eps=REF_EPS, max_depth=REF_MAX_DEPTH)
        loss = F.cross_entropy(y, labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), y.detach(), float(self.net.depth)


class FpnetsSide:
    """The fpnets model, optimizer and step that ``fpnets train`` builds from a config."""

    def __init__(self, config: Any, init_state: dict[str, Tensor] | None) -> None:
        self.cfg = config
        self.runtime = setup_runtime(config.run.device, config.run.dtype)
        self.task = config.make_task()
        seed_all(config.train.seed)
        self.model = self.task.build_model().to(device=self.runtime.device, dtype=self.runtime.dtype)
        self.same_init = False
        self.init_note = "each side's own seeded initialisation (no reference state given)"
        if init_state is not None:
            try:
                self.model.load_state_dict(map_reference_state_dict(init_state, "mnist"), strict=True)
                self.same_init = True
                self.init_note = "the reference's initial state dict, loaded into the fpnets model"
            except (RuntimeError, ValueError) as exc:
                self.init_note = (
                    "DIFFER: the fpnets model cannot take the reference's state dict "
                    f"({' '.join(str(exc).split())[:160]}); each side seeded with the same seed"
                )
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.steps = 0

    def settings(self) -> contextlib.AbstractContextManager[None]:
        """The process settings ``fpnets.train.train`` runs under (threads, deterministic algorithms)."""
        return process_settings(self.runtime, self.cfg.run.threads, self.cfg.run.deterministic)

    def step(self, x: Tensor, y: Tensor) -> Any:
        """:func:`fpnets.train.train_step` with the trainer's arguments (clip, Lipschitz rule, penalty)."""
        t, model, task = self.cfg.train, self.model, self.task
        penalty = None
        if t.jacobian_weight > 0 and self.steps % t.jacobian_every == 0:
            penalty = lambda: model.jacobian_penalty(t.jacobian_probes)  # noqa: E731
        out = train_step(
            model,
            x,
            y,
            task.loss,
            self.optimizer,
            grad_clip=self.cfg.optim.grad_clip,
            params=model.parameters(),
            after_step=lambda: task.after_step(model),
            penalty=penalty,
            penalty_weight=t.jacobian_weight,
        )
        self.steps += 1
        return out


def fpnets_sets(network: Network, args: Any, extra: Sequence[str] = ()) -> list[str]:
    """The overrides of configs/mnist.toml: the network's, the run's device/threads, ``extra``, then --config-set."""
    sets = [*network.fpnets_sets, f"run.device={args.device}"]
    if args.threads:
        sets.append(f"run.threads={args.threads}")
    return sets + list(extra) + list(args.config_set)


def fpnets_config(network: Network, args: Any, extra: Sequence[str] = ()) -> Any:
    """configs/mnist.toml with :func:`fpnets_sets` applied (model.arch and data.name must stay mnist)."""
    config = load_config(CONFIG, fpnets_sets(network, args, extra))
    if config.model.arch != "mnist" or config.data.name != "mnist":
        raise SystemExit(
            f"--config-set must keep model.arch and data.name 'mnist' (got {config.model.arch!r}, "
            f"{config.data.name!r}): the reference code has only this network"
        )
    return config


# ----------------------------------------------------------------------------------------------
# training steps


class BatchStream:
    """An endless stream of the fpnets training loader's batches, epoch after epoch."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.epoch = 0
        self.loader.set_epoch(0)
        self.it: Iterator[Any] = iter(loader)

    def take(self, n: int) -> list[tuple[Tensor, Tensor]]:
        out = []
        while len(out) < n:
            try:
                out.append(next(self.it))
            except StopIteration:
                self.epoch += 1
                self.loader.set_epoch(self.epoch)
                self.it = iter(self.loader)
        return out


@dataclass
class StepLog:
    """Per-step records of one side over the timed steps."""

    ms: list[list[float]]
    loss: list[float]
    correct: int = 0
    n: int = 0
    depth: list[float] | None = None
    """Reference: ``net.depth``; fpnets: max over the batch of the per-sample iterations."""
    mean_iters: list[float] | None = None
    """fpnets only: mean over the batch of the per-sample iterations."""


def run_reference_block(
    side: ReferenceSide, batches: list[tuple[Tensor, Tensor]], log: StepLog | None
) -> None:
    side.net.train()
    dev = next(side.net.parameters()).device
    times = []
    for x, y in batches:
        d = x.float().contiguous()
        sync(dev)
        t0 = time.perf_counter()
        loss, out, depth = side.step(d, y)
        sync(dev)
        times.append(1e3 * (time.perf_counter() - t0))
        if log is not None:
            log.loss.append(float(loss))
            log.correct += int((out.argmax(1) == y).sum())
            log.n += int(y.numel())
            assert log.depth is not None
            log.depth.append(depth)
    if log is not None:
        log.ms.append(times)


def run_fpnets_block(side: FpnetsSide, batches: list[tuple[Tensor, Tensor]], log: StepLog | None) -> None:
    dev, dtype = side.runtime.device, side.runtime.dtype
    times = []
    with side.settings():
        side.model.train()
        for x, y in batches:
            x = x.to(dtype)
            sync(dev)
            t0 = time.perf_counter()
            out = side.step(x, y)
            sync(dev)
            times.append(1e3 * (time.perf_counter() - t0))
            if log is not None:
                log.loss.append(float(out.loss))
                log.correct += int((out.output.argmax(1) == y).sum())
                log.n += int(y.numel())
                its = side.task.iterations(side.model)
                if its is not None:
                    assert log.depth is not None and log.mean_iters is not None
                    log.depth.append(float(its.max()))
                    log.mean_iters.append(float(its.float().mean()))
    if log is not None:
        log.ms.append(times)


# ----------------------------------------------------------------------------------------------
# evaluation


def normalise(images: Tensor, device: torch.device) -> Tensor:
    """The reference's ToTensor + Normalize on a uint8 batch (B, 1, 28, 28) -> float32."""
    return images.to(device).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)


@torch.no_grad()
def reference_eval(side: ReferenceSide, images: Tensor, labels: Tensor, batch: int) -> dict[str, Any]:
    """The reference's ``get_stats`` loop, in eval mode: accuracy, loss, depth, seconds."""
    net = side.net
    dev = next(net.parameters()).device
    net.eval()
    loss_sum, correct, depth_sum, batches = 0.0, 0, 0.0, 0
    sync(dev)
    t0 = time.perf_counter()
    try:
        for i in range(0, len(labels), batch):
            d = normalise(images[i : i + batch], dev)
            y = labels[i : i + batch].to(dev)
            out = net(d, eps=REF_EPS, max_depth=REF_MAX_DEPTH)
            loss_sum += F.cross_entropy(out, y).item() * y.numel()
            correct += out.argmax(dim=1, keepdim=True).eq(y.view(-1, 1)).sum().item()
            depth_sum += float(net.depth)
            batches += 1
        sync(dev)
    finally:
        net.train()
    seconds = time.perf_counter() - t0
    n = len(labels)
    return {
        "acc": correct / n,
        "loss": loss_sum / n,
        "iters_batch_max": depth_sum / max(batches, 1),
        "iters_sample_mean": None,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "batch": batch,
        "n": n,
    }


class _RecordMaxIters:
    """Wraps a loader: after the model has run on each batch, keeps its per-batch maximum iterations."""

    def __init__(self, loader: Any, model: nn.Module) -> None:
        self.loader, self.model = loader, model
        self.maxima: list[Tensor] = []

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            sol = getattr(self.model, "solution", None)
            if sol is not None:
                self.maxima.append(sol.iterations.max())


def fpnets_eval(side: FpnetsSide, split: Any, batch: int | None) -> dict[str, Any]:
    """:func:`fpnets.train.evaluate` on the task's evaluation loader: accuracy, loss, iterations, seconds."""
    from fpnets.data import BatchLoader, dataset_info

    task, model, rt = side.task, side.model, side.runtime
    loader = task.loader(split, train=False, device=rt.device)
    if batch is not None:  # the task's evaluation loader with another batch size
        loader = BatchLoader(
            split, batch, shuffle=False, normalize=dataset_info(task.config.data.name), device=rt.device
        )
    wrapped = _RecordMaxIters(loader, model)
    with side.settings():
        sync(rt.device)
        t0 = time.perf_counter()
        stats = evaluate(task, model, wrapped, rt.dtype)
        sync(rt.device)
        seconds = time.perf_counter() - t0
    n = int(stats["n"])
    maxima = torch.stack(wrapped.maxima).double().mean().item() if wrapped.maxima else None
    return {
        "acc": stats["acc"],
        "loss": stats["loss"],
        "iters_batch_max": maxima,
        "iters_sample_mean": stats["iters"],
        "seconds": seconds,
        "images_per_s": n / seconds,
        "batch": batch if batch is not None else side.cfg.data.eval_batch_size,
        "n": n,
    }


# ----------------------------------------------------------------------------------------------
# one network: steps, evaluation


def summarise_steps(log: StepLog) -> dict[str, Any]:
    rounds = [median(r) for r in log.ms]
    return {
        "median_ms_per_round": rounds,
        "median_ms": median([t for r in log.ms for t in r]),
        "ms_all": log.ms,
        "iters_per_step_batch_max": sum(log.depth) / len(log.depth) if log.depth else None,
        "iters_per_step_sample_mean": sum(log.mean_iters) / len(log.mean_iters) if log.mean_iters else None,
        "train_acc": log.correct / max(log.n, 1),
        "train_loss": sum(log.loss) / max(len(log.loss), 1),
        "loss_finite": all(math.isfinite(v) for v in log.loss),
        "timed_steps": sum(len(r) for r in log.ms),
    }


def compare_network(
    network: Network, args: Any, networks_module: Any, splits: Any, batches_config: Any
) -> dict[str, Any]:
    """Steps (and eval throughput) of the reference and fpnets on one network."""
    config = fpnets_config(network, args)
    device = resolve_device(config.run.device)
    ref = ReferenceSide(networks_module, network, device, args.seed)
    init = None if args.different_init else {k: v.detach().clone() for k, v in ref.net.state_dict().items()}
    fp = FpnetsSide(config, init)
    checks = []
    for who, count in (("reference", ref.parameters), ("fpnets", fp.parameters)):
        if count != network.parameters:
            checks.append(
                f"{who} model has {count:,} parameters, the {network.name} network {network.parameters:,}"
            )
    if abs(fp.model.gamma - network.gamma) > 1e-12 or fp.model.operator.num_blocks != network.lat_layers:
        checks.append(
            f"fpnets model has γ {fp.model.gamma:g} and {fp.model.operator.num_blocks} block(s) (--config-set?), "
            f"the reference γ {network.gamma:g} and {network.lat_layers}"
        )
    for text in checks:
        warn(text)

    stream = BatchStream(batches_config.make_task().loader(splits.train, train=True, device=device))
    warm = stream.take(args.warmup)
    run_reference_block(ref, warm, None)
    run_fpnets_block(fp, warm, None)
    logs = {
        "reference": StepLog([], [], depth=[]),
        "fpnets": StepLog([], [], depth=[], mean_iters=[]),
    }
    order = []
    for r in range(args.rounds):
        batches = stream.take(args.steps)
        sides = ("reference", "fpnets") if r % 2 == 0 else ("fpnets", "reference")
        order.append(list(sides))
        for who in sides:
            if who == "reference":
                run_reference_block(ref, batches, logs[who])
            else:
                run_fpnets_block(fp, batches, logs[who])
        del batches
    steps = {who: summarise_steps(log) for who, log in logs.items()}
    steps["fpnets"]["rescales"] = getattr(fp.model, "rescales", None)
    steps["ratio_median_ms_per_round"] = [
        a / b
        for a, b in zip(
            steps["reference"]["median_ms_per_round"], steps["fpnets"]["median_ms_per_round"], strict=True
        )
    ]
    steps["ratio_median_ms"] = steps["reference"]["median_ms"] / steps["fpnets"]["median_ms"]
    steps["order"] = order
    steps["total_steps_trained"] = args.warmup + args.rounds * args.steps

    test = splits.test  # the first --limit images when given (data.limit)
    ref_batch = args.eval_batch or REF_TEST_BATCH
    passes = args.rounds if args.eval else 1
    evals: dict[str, list[dict[str, Any]]] = {"reference": [], "fpnets": []}
    for r in range(passes):
        for who in ("reference", "fpnets") if r % 2 == 0 else ("fpnets", "reference"):
            if who == "reference":
                evals[who].append(reference_eval(ref, test.images, test.labels, ref_batch))
            else:
                evals[who].append(fpnets_eval(fp, test, args.eval_batch))
    evaluation: dict[str, Any] = {}
    for who, runs in evals.items():
        first = runs[0]
        evaluation[who] = {
            **{k: first[k] for k in ("acc", "loss", "iters_batch_max", "iters_sample_mean", "batch", "n")},
            "seconds_per_pass": [e["seconds"] for e in runs],
            "median_seconds": median([e["seconds"] for e in runs]),
            "images_per_s": first["n"] / median([e["seconds"] for e in runs]),
        }
    evaluation["ratio_median_seconds"] = (
        evaluation["reference"]["median_seconds"] / evaluation["fpnets"]["median_seconds"]
    )
    evaluation["passes"] = passes
    return {
        "network": vars(network) | {"fpnets_sets": network.fpnets_sets},
        "fpnets_overrides": fpnets_sets(network, args),
        "parameters": {"reference": ref.parameters, "fpnets": fp.parameters},
        "same_initial_weights": fp.same_init,
        "initial_weights": fp.init_note,
        "checks": checks,
        "steps": steps,
        "eval": evaluation,
    }


# ----------------------------------------------------------------------------------------------
# one network: a whole epoch


def idx_file(data_dir: Path, stem: str) -> Path:
    for folder in (data_dir, data_dir / "mnist"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise SystemExit(f"--data-dir {data_dir}: no {stem}(.gz) there or in mnist/")


def reference_epoch(network: Network, args: Any, networks_module: Any) -> dict[str, Any]:
    """Load the IDX files, build, one shuffled epoch of the reference step, test evaluation (eval mode)."""
    device = resolve_device(args.device)
    data_dir = Path(args.data_dir)
    t0 = time.perf_counter()
    train_x = read_idx_ubyte(idx_file(data_dir, "train-images-idx3-ubyte")).unsqueeze(1)  # (60000, 1, 28, 28)
    train_y = read_idx_ubyte(idx_file(data_dir, "train-labels-idx1-ubyte")).long()  # (60000,)
    test_x = read_idx_ubyte(idx_file(data_dir, "t10k-images-idx3-ubyte")).unsqueeze(1)  # (10000, 1, 28, 28)
    test_y = read_idx_ubyte(idx_file(data_dir, "t10k-labels-idx1-ubyte")).long()  # (10000,)
    if args.limit:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
        test_x, test_y = test_x[: args.limit], test_y[: args.limit]
    side = ReferenceSide(networks_module, network, device, args.seed)
    t_ready = time.perf_counter()
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed))
    losses, depths, correct = [], [], 0
    side.net.train()
    for i in range(0, len(train_y), REF_BATCH):
        idx = perm[i : i + REF_BATCH]
        d = normalise(train_x[idx], device)
        y = train_y[idx].to(device)
        loss, out, depth = side.step(d, y)
        losses.append(float(loss))  # the reference's loop reads the loss, accuracy and depth every step
        correct += int(out.argmax(1).eq(y).sum().item())
        depths.append(depth)
    sync(device)
    t_trained = time.perf_counter()
    test = reference_eval(side, test_x, test_y, REF_TEST_BATCH)
    t_end = time.perf_counter()
    n = len(train_y)
    train_s = t_trained - t_ready
    return {
        "setup_s": t_ready - t0,
        "train_s": train_s,
        "eval_s": t_end - t_trained,
        "total_s": t_end - t0,
        "train_images": n,
        "steps": len(losses),
        "ms_per_step": 1e3 * train_s / max(len(losses), 1),
        "train_images_per_s": n / train_s,
        "train_acc": correct / n,
        "train_loss": sum(losses) / max(len(losses), 1),
        "loss_finite": all(math.isfinite(v) for v in losses),
        "iters_per_step": sum(depths) / max(len(depths), 1),
        "test_acc": test["acc"],
        "eval_note": f"test set ({test['n']} images, batch {REF_TEST_BATCH}) in eval mode",
    }


def fpnets_epoch(network: Network, args: Any) -> dict[str, Any]:
    """``fpnets.train.train`` on configs/mnist.toml for one epoch, timed from call to return."""
    extra = ["train.epochs=1"] + ([f"data.limit={args.limit}"] if args.limit else [])
    config = fpnets_config(network, args, extra)
    marks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vs_reference_") as tmp:
        t0 = time.perf_counter()
        result = train(
            config,
            run_dir=Path(tmp) / "run",
            data_dir=args.data_dir,
            on_start=lambda info: marks.update(start=time.perf_counter(), data=info.get("data", {})),
        )
        t_end = time.perf_counter()
    rec = result.history[0]
    n = int(marks.get("data", {}).get("train", 0))
    train_s = n / rec["samples_per_s"] if rec["samples_per_s"] else math.nan
    steps = math.ceil(n / config.data.batch_size)
    setup_s = marks.get("start", t0) - t0
    return {
        "setup_s": setup_s,
        "train_s": train_s,
        "eval_s": t_end - t0 - setup_s - train_s,
        "total_s": t_end - t0,
        "train_images": n,
        "steps": steps,
        "ms_per_step": 1e3 * train_s / max(steps, 1),
        "train_images_per_s": rec["samples_per_s"],
        "train_acc": rec["train_acc"],
        "train_loss": rec["train_loss"],
        "loss_finite": rec["train_loss"] is not None and math.isfinite(rec["train_loss"]),
        "iters_per_step": rec.get("train_iters"),
        "test_acc": result.test["acc"],
        "val_acc": rec.get("val_acc"),
        "eval_note": (
            f"validation ({marks.get('data', {}).get('val', '?')} images) after the epoch, checkpoints, then "
            f"validation and test ({result.test['n']} images) of the selected model, plots"
        ),
        "overrides": fpnets_sets(network, args, extra),
    }


def compare_epoch(network: Network, args: Any, networks_module: Any) -> dict[str, Any]:
    """``--epoch-rounds`` whole epochs per side, alternating which side goes first."""
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "fpnets": []}
    for r in range(args.epoch_rounds):
        for who in ("reference", "fpnets") if r % 2 == 0 else ("fpnets", "reference"):
            if who == "reference":
                runs[who].append(reference_epoch(network, args, networks_module))
            else:
                runs[who].append(fpnets_epoch(network, args))
    timed = ("setup_s", "train_s", "eval_s", "total_s", "ms_per_step", "train_images_per_s")
    out: dict[str, Any] = {}
    for who, rs in runs.items():  # several epochs: the median of each time, the rest from the last
        out[who] = dict(rs[-1])
        if len(rs) > 1:
            out[who].update({key: median([r[key] for r in rs]) for key in timed}, rounds=rs)
    for key in ("total_s", "train_s", "ms_per_step"):
        out[f"ratio_{key}"] = out["reference"][key] / out["fpnets"][key]
    return out


# ----------------------------------------------------------------------------------------------
# output


def warn(text: str) -> None:
    """A warning on stderr (the script warns and goes on)."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def num(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def times(x: float) -> str:
    return f"{x:.2f}×"


def steps_table(res: dict[str, Any], args: Any) -> str:
    s, e = res["steps"], res["eval"]
    ref, fp = s["reference"], s["fpnets"]
    rows = []
    for i, (a, b) in enumerate(zip(ref["median_ms_per_round"], fp["median_ms_per_round"], strict=True)):
        first = s["order"][i][0]
        rows.append([f"ms/step, round {i + 1} (median; {first} first)", num(a), num(b), times(a / b)])
    rows.append(
        [
            "ms/step, median of all timed steps",
            num(ref["median_ms"]),
            num(fp["median_ms"]),
            times(s["ratio_median_ms"]),
        ]
    )
    rows.append(
        [
            "forward iterations / step (batch max: the reference's depth)",
            num(ref["iters_per_step_batch_max"], ".2f"),
            num(fp["iters_per_step_batch_max"], ".2f"),
            "",
        ]
    )
    rows.append(["forward iterations / sample (mean)", "—", num(fp["iters_per_step_sample_mean"], ".2f"), ""])
    rows.append(["train accuracy over the timed steps", pct(ref["train_acc"]), pct(fp["train_acc"]), ""])
    rows.append(
        [
            "train loss over the timed steps (mean)",
            num(ref["train_loss"], ".4f"),
            num(fp["train_loss"], ".4f"),
            "",
        ]
    )
    er, ef = e["reference"], e["fpnets"]
    rows.append(
        [
            f"test accuracy after {s['total_steps_trained']} steps (eval mode, {er['n']} images)",
            pct(er["acc"]),
            pct(ef["acc"]),
            "",
        ]
    )
    rows.append(["test loss", num(er["loss"], ".4f"), num(ef["loss"], ".4f"), ""])
    rows.append(
        [
            "test forward iterations / batch (batch max)",
            num(er["iters_batch_max"], ".2f"),
            num(ef["iters_batch_max"], ".2f"),
            "",
        ]
    )
    rows.append(["test forward iterations / sample (mean)", "—", num(ef["iters_sample_mean"], ".2f"), ""])
    return markdown_table(["", "reference", "fpnets", "reference / fpnets"], rows)


def eval_table(res: dict[str, Any]) -> str:
    e = res["eval"]
    er, ef = e["reference"], e["fpnets"]
    rows = [["batch size", er["batch"], ef["batch"], ""]]
    for i, (a, b) in enumerate(zip(er["seconds_per_pass"], ef["seconds_per_pass"], strict=True)):
        rows.append([f"s / test pass, pass {i + 1}", num(a, ".2f"), num(b, ".2f"), times(a / b)])
    rows.append(
        [
            "s / test pass, median",
            num(er["median_seconds"], ".2f"),
            num(ef["median_seconds"], ".2f"),
            times(e["ratio_median_seconds"]),
        ]
    )
    rows.append(
        ["images / s (median pass)", num(er["images_per_s"], ".0f"), num(ef["images_per_s"], ".0f"), ""]
    )
    return markdown_table(["eval mode, test set", "reference", "fpnets", "reference / fpnets (time)"], rows)


def epoch_table(res: dict[str, Any]) -> str:
    ref, fp = res["reference"], res["fpnets"]
    rows = [
        ["data loading + setup, s", num(ref["setup_s"], ".2f"), num(fp["setup_s"], ".2f"), ""],
        ["training, s", num(ref["train_s"]), num(fp["train_s"]), times(res["ratio_train_s"])],
        [
            "training images / steps",
            f"{ref['train_images']} / {ref['steps']}",
            f"{fp['train_images']} / {fp['steps']}",
            "",
        ],
        [
            "ms/step (training time / steps)",
            num(ref["ms_per_step"]),
            num(fp["ms_per_step"]),
            times(res["ratio_ms_per_step"]),
        ],
        [
            "training images / s",
            num(ref["train_images_per_s"], ".0f"),
            num(fp["train_images_per_s"], ".0f"),
            "",
        ],
        ["evaluation and the rest, s", num(ref["eval_s"], ".2f"), num(fp["eval_s"], ".2f"), ""],
        ["total, s", num(ref["total_s"]), num(fp["total_s"]), times(res["ratio_total_s"])],
        [
            "forward iterations / step (ref: batch max; fpnets: sample mean)",
            num(ref["iters_per_step"], ".2f"),
            num(fp["iters_per_step"], ".2f"),
            "",
        ],
        ["train accuracy over the epoch", pct(ref["train_acc"]), pct(fp["train_acc"]), ""],
        ["test accuracy after the epoch (eval mode)", pct(ref["test_acc"]), pct(fp["test_acc"]), ""],
    ]
    return markdown_table(
        ["one epoch, end to end", "reference", "fpnets train", "reference / fpnets (time)"], rows
    )


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Any:
    p = script_parser(__doc__)
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files (.gz or raw)")
    p.add_argument("--peer-dir", default=str(DEFAULT_PEER), help="the reference implementation's folder")
    p.add_argument("--network", default="both", choices=[*NETWORKS, "both"])
    p.add_argument("--steps", type=int, default=150, help="timed training steps per side per round")
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds (and eval passes with --eval), alternating sides"
    )
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed training steps per side first (same batches)"
    )
    p.add_argument(
        "--eval", action="store_true", help="eval-mode throughput on the test set (--rounds passes)"
    )
    p.add_argument(
        "--eval-batch",
        type=int,
        default=0,
        help="eval batch size for both (0: reference 400, fpnets data.eval_batch_size)",
    )
    p.add_argument("--epoch", action="store_true", help="also a whole epoch end to end per side")
    p.add_argument("--epoch-rounds", type=int, default=1, help="epochs per side with --epoch, alternating")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda; both sides")
    p.add_argument(
        "--config-set", action="append", default=[], metavar="KEY=VALUE",
        help="override of the fpnets config (repeatable), applied after the network's",
    )  # fmt: skip
    p.add_argument(
        "--different-init",
        action="store_true",
        help="do not load the reference's initial weights into fpnets",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only the first N images of every split (smoke tests); 0 = all",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the reference's initialisation and epoch order"
    )
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "epoch_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "threads", "limit", "eval_batch"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    args.eval_batch = args.eval_batch or None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cores = os.cpu_count()
    load_start = machine_load()
    notes = [w for w in [busy_warning(load_start, cores, "at the start")] if w]
    for w in notes:
        warn(w)
    networks_module = import_reference(Path(args.peer_dir))
    names = list(NETWORKS) if args.network == "both" else [args.network]
    device = resolve_device(args.device)

    # the training and test splits fpnets loads (the data section does not depend on the network)
    base = fpnets_config(NETWORKS[names[0]], args, [f"data.limit={args.limit}"] if args.limit else [])
    splits = base.make_task().load_splits(args.data_dir)

    header = (
        f"fpnets vs the JFB reference code ({args.peer_dir}), MNIST, batch {REF_BATCH}; {cpu_name()}, "
        f"{cores} cores, {torch.get_num_threads()} threads, device {device}, torch {torch.__version__}, "
        f"commit {git_commit()}; load at start: {load_start['uptime'] or load_start['loadavg']}"
    )
    print(header + "\n")
    results: dict[str, Any] = {}
    for name in names:
        net = NETWORKS[name]
        res = compare_network(net, args, networks_module, splits, base)
        print(f"## {net.title()}, {net.parameters:,} parameters\n")
        print(
            f"Initial weights: {res['initial_weights']}. {args.rounds} round(s) × {args.steps} timed steps per side "
            f"after {args.warmup} warm-up steps, same batches. fpnets overrides: "
            f"{', '.join(res['fpnets_overrides'])}.\n"
        )
        print(steps_table(res, args) + "\n")
        if args.eval:
            print(eval_table(res) + "\n")
        if args.epoch:
            res["epoch"] = compare_epoch(net, args, networks_module)
            print(epoch_table(res["epoch"]) + "\n")
        results[name] = res
    load_end = machine_load()
    end_warning = busy_warning(load_end, cores, "at the end")
    if end_warning:
        warn(end_warning)
        notes.append(end_warning)
    print(f"load at end: {load_end['uptime'] or load_end['loadavg']}")
    payload = {
        "command": command_line(),
        "args": vars(args),
        "commit": git_commit(),
        "hardware": {
            "cpu": cpu_name(),
            "cores": cores,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_start": load_start,
        "load_end": load_end,
        "warnings": notes,
        "reference": {
            "peer_dir": str(Path(args.peer_dir).resolve()),
            "eps": REF_EPS,
            "max_depth": REF_MAX_DEPTH,
            "lr": REF_LR,
            "weight_decay": REF_WEIGHT_DECAY,
            "batch": REF_BATCH,
            "test_batch": REF_TEST_BATCH,
            "evaluated_in": "eval mode (the reference's own loop evaluates in training mode)",
        },
        "fpnets_config": str(CONFIG.relative_to(ROOT)),
        "networks": results,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
