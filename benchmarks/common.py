"""Shared helpers for the benchmark scripts: environment facts, timing, tables, JSON output."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fpnets.train._provenance import cpu_model, git_state

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    return cpu_model() or platform.machine()


def commit(short: bool = True) -> str:
    """The commit of the checkout this script is tracked in (short or full hash), with ``+dirty``
    when tracked files changed, or "unknown" outside a git checkout (``git_state``, as run.json)."""
    state = git_state(Path(__file__).resolve())
    if state is None:
        return "unknown"
    return (state["commit"][:7] if short else state["commit"]) + ("+dirty" if state["dirty"] else "")


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Facts every result carries: hardware, software, commit, load."""
    dev = torch.device(device)
    env = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": str(dev),
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(
    runs: dict[str, Callable[[], Any]], rounds: int, device: torch.device | str = "cpu"
) -> dict[str, list[float]]:
    """Time each callable ``rounds`` times, alternating between them, in seconds."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser: its docstring's first paragraph as description, the rest as epilog."""
    parts = (doc or "").split("\n\n")
    return argparse.ArgumentParser(
        description=parts[0],
        epilog="\n\n".join(parts[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def choose(text: str, valid: Sequence[str], what: str) -> list[str]:
    """The names of a comma-separated option, each checked against ``valid``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = sorted(set(names) - set(valid))
    if bad or not names:
        raise SystemExit(f"unknown or no {what}(s) {bad}; valid: {', '.join(valid)}")
    return names


def fmt(x: float | None, spec: str = ".1f") -> str:
    """A table cell: ``x`` formatted, or a dash when it was not measured."""
    return "—" if x is None else format(x, spec)


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def saved_tensor_bytes() -> tuple[Callable[[], int], Any]:
    """A saved-tensors hook context counting the bytes autograd keeps for backward.

    Returns (read, context): ``with context: ...`` then ``read()``.
    """
    total = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in seen:  # a storage saved twice is held once
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    return (lambda: total[0]), ctx


# ----------------------------------------------------------------------------------------------
# Counting helpers (backward_modes.py, memory_depth.py, torchdeq_compare.py, epoch_time.py)


def mib(nbytes: float | None) -> float | None:
    """Bytes to MiB (None stays None)."""
    return None if nbytes is None else nbytes / 2**20


_GRAD_DEPTH = [0]  # > 0 while a counted torch.autograd.grad call runs


class CallCounter:
    """Counts the calls of a module through a forward hook, while installed.

    ``calls``: batched calls; ``samples``: the batch sizes of those calls summed (per-sample
    evaluations); ``graph_calls``: calls whose output was recorded with an autograd graph;
    ``backprops``: gradients that reached such an output through ordinary backpropagation
    (``loss.backward()``), i.e. backward passes through one recorded application of the module;
    gradients taken inside a :class:`GradCallCounter`-counted ``torch.autograd.grad`` call are
    counted there instead. ``phase`` (set by the caller, e.g. "forward"/"backward") splits
    ``calls`` in ``by_phase``. Use as a context manager; the hook is removed on exit, so timed runs
    carry no hook.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.handle: Any = None
        self.phase = "forward"
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.samples = 0
        self.graph_calls = 0
        self.backprops = 0
        self.by_phase: dict[str, int] = {}

    def _backprop(self, grad: torch.Tensor) -> None:
        if _GRAD_DEPTH[0] == 0:
            self.backprops += 1

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.calls += 1
        self.by_phase[self.phase] = self.by_phase.get(self.phase, 0) + 1
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            self.samples += int(args[0].shape[0])
        if isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
            self.graph_calls += 1
            output.register_hook(self._backprop)

    def __enter__(self) -> CallCounter:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class GradCallCounter:
    """Counts calls of ``torch.autograd.grad`` while installed (a context manager).

    Every vector–Jacobian product the backward modes of fpnets and TorchDEQ take goes through
    ``torch.autograd.grad`` (``loss.backward()`` does not), so this counts them; ``create_graph``
    counts the calls that record a graph of the product (CG's double-backward set-up).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.create_graph = 0
        self._orig: Any = None

    def __enter__(self) -> GradCallCounter:
        self._orig = orig = torch.autograd.grad

        def grad(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            create = kwargs.get("create_graph", args[4] if len(args) > 4 else False)
            if create:
                self.create_graph += 1
            _GRAD_DEPTH[0] += 1
            try:
                return orig(*args, **kwargs)
            finally:
                _GRAD_DEPTH[0] -= 1

        torch.autograd.grad = grad  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.autograd.grad = self._orig


def graph_nodes(t: torch.Tensor) -> int:
    """Number of autograd nodes reachable from ``t.grad_fn`` (0 for a tensor without a graph)."""
    root = t.grad_fn
    if root is None:
        return 0
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen)


def cuda_reset_peak(device: torch.device | str) -> int | None:
    """On CUDA: reset the peak-memory counter and return the bytes allocated now; else None."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    return torch.cuda.memory_allocated(dev)


def cuda_peak(device: torch.device | str) -> int | None:
    """On CUDA: ``torch.cuda.max_memory_allocated`` since the last reset; else None."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev)


def mnist_batches(
    data_dir: str, count: int, batch_size: int, seed: int, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` normalised MNIST training batches (shuffled with ``seed``), on ``device``.

    Every configuration of a benchmark steps through this same list, so all see the same batches.
    """
    from fpnets.data import BatchLoader, load_splits

    splits = load_splits("mnist", data_dir)
    loader = BatchLoader(splits.train, batch_size=batch_size, shuffle=True, seed=seed, normalize=splits.info)
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(out) < count:
        loader.set_epoch(epoch)
        for d, y in loader:
            out.append((d.to(device), y.to(device)))
            if len(out) == count:
                break
        epoch += 1
    return out


class SavedTensors:
    """Tensors autograd saves for backward while installed (a context manager).

    ``total()``: bytes of every storage saved while installed (a storage counted once), as
    :func:`saved_tensor_bytes`; this also counts graphs recorded and discarded on the way.
    ``live()``: bytes of the saved storages still alive now, i.e. after the forward pass the memory
    that autograd holds for the backward pass (plus parameters and inputs it saved, alive anyway).
    """

    def __init__(self) -> None:
        self._total = 0
        self._seen: set[int] = set()
        self._refs: list[Any] = []
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            key = t.untyped_storage().data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self._total += t.untyped_storage().nbytes()
            self._refs.append(weakref.ref(t))
        return t

    def total(self) -> int:
        return self._total

    def live(self) -> int:
        gc.collect()
        storages: dict[int, int] = {}
        for ref in self._refs:
            t = ref()
            if t is not None:
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
        return sum(storages.values())

    def __enter__(self) -> SavedTensors:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class StepProbe:
    """Instruments one :func:`fpnets.train.train_step` call at the boundaries of its phases.

    ``train_step`` runs zero_grad → forward → ``loss_fn`` → backward → optimizer step → after_step.
    Pass :meth:`loss` as its ``loss_fn`` inside ``with StepProbe(...)``: the forward pass and the
    loss ℓ run under :attr:`forward` (a :class:`SavedTensors`), the backward pass under
    :attr:`backward` (another), and an optimizer step pre-hook closes the backward window just
    before the optimizer step. Read after the call:

    - ``held``: ``forward.live()`` when the loss is computed (what autograd holds for backward);
    - ``nodes``: autograd nodes reachable from ℓ (:func:`graph_nodes`);
    - ``fwd_calls``, ``fwd_samples``, ``fwd_graph_calls``: the ``counter``'s :class:`CallCounter`
      counts at the end of the forward pass (its ``phase`` is then set to "backward");
    - ``peak``: :func:`cuda_peak` after the backward pass, before the optimizer step (None
      off CUDA).
    """

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device | str = "cpu",
        counter: CallCounter | None = None,
    ) -> None:
        self._loss_fn, self._optimizer, self._counter = loss_fn, optimizer, counter
        self.device = torch.device(device)
        self.forward, self.backward = SavedTensors(), SavedTensors()
        self._open: SavedTensors | None = None
        self._handle: Any = None
        self.held = self.nodes = 0
        self.fwd_calls = self.fwd_samples = self.fwd_graph_calls = 0
        self.peak: int | None = None

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """``loss_fn(output, target)`` under :attr:`forward`, then opens :attr:`backward`."""
        if self._open is not self.forward:
            raise RuntimeError("StepProbe.loss: use it as the loss_fn of one train_step inside `with probe:`")
        loss = self._loss_fn(output, target)
        self._switch(None)
        self.held = self.forward.live()
        self.nodes = graph_nodes(loss)
        if self._counter is not None:
            c = self._counter
            self.fwd_calls, self.fwd_samples, self.fwd_graph_calls = c.calls, c.samples, c.graph_calls
            c.phase = "backward"
        self._switch(self.backward)
        return loss

    def _before_step(self, *_: Any) -> None:
        if self._open is self.backward:
            self._switch(None)
            self.peak = cuda_peak(self.device)

    def _switch(self, to: SavedTensors | None) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
        self._open = to
        if to is not None:
            to.__enter__()

    def __enter__(self) -> StepProbe:
        self._handle = self._optimizer.register_step_pre_hook(self._before_step)
        self._switch(self.forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._switch(None)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


# ----------------------------------------------------------------------------------------------
# Side-by-side runs against peer code (vs_reference.py)


def git_commit() -> str:
    """The full commit hash (see :func:`commit`)."""
    return commit(short=False)


def machine_load() -> dict[str, Any]:
    """The machine's load now: ``uptime``'s line and the 1/5/15-minute load averages."""
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        line = ""
    loads = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"uptime": line, "loadavg": loads, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def busy_warning(load: dict[str, Any], cores: int | None, when: str) -> str | None:
    """A warning text when the 1-minute load average exceeds half the cores (timings then are not
    those of an idle machine), else None."""
    loads = load.get("loadavg")
    if not loads or not cores or loads[0] <= 0.5 * cores:
        return None
    return (
        f"1-minute load average {loads[0]:.2f} {when} exceeds 0.5 × {cores} cores: other work is running, "
        "so these timings are not those of an idle machine (rerun on an idle one before quoting them)"
    )


def read_idx_ubyte(path: str | Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (``.gz`` or raw) as a uint8 tensor shaped as its header says.

    Kept separate from ``fpnets.data`` so that a peer's data path shares no code with fpnets.
    Header: 2 zero bytes, type 0x08, the number of dimensions n, then n big-endian uint32 sizes.
    """
    import gzip

    import numpy as np

    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data, the header says {dims}")
    return torch.from_numpy(data.copy()).reshape(dims)
