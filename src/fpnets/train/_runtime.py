"""Process setup: device, dtype, threads, seeds, determinism, and data-parallel runs under torchrun."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.deterministic
from torch import nn

from ._engine import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass
class Runtime:
    """Where and how this process trains: device, dtype, and its place in a data-parallel group."""

    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (identity in a single process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (for small picklable control values such as a path)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def sync_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (in place) with rank 0's values, one flat broadcast per dtype."""
        if not self.distributed or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view_as(t))
                    offset += n

    def sync_buffers(self, module: nn.Module) -> None:
        self.sync_tensors([b for b in module.buffers()])


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (this process's local rank's GPU) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        index = int(name[5:]) if name.startswith("cuda:") else local_rank % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return torch.device("cpu")


def setup_runtime(device: str, dtype: str) -> Runtime:
    """The device and, when launched by ``torchrun`` (RANK/WORLD_SIZE set), the process group
    (NCCL on CUDA, gloo on CPU). An already initialised default group is used as it is."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = rank if local is None else local
        dev = resolve_device(device, local)
        return Runtime(dev, DTYPES[dtype], rank, world, local)
    if world is None or world <= 1:
        return Runtime(resolve_device(device, 0), DTYPES[dtype])
    if rank is None:
        raise ConfigError("WORLD_SIZE is set but RANK is not; launch data-parallel runs with torchrun")
    local = rank if local is None else local
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=30),
        **({"device_id": dev} if dev.type == "cuda" else {}),
    )
    atexit.register(_destroy_group)
    return Runtime(dev, DTYPES[dtype], rank, world, local)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def process_settings(runtime: Runtime, threads: int, deterministic: bool) -> Iterator[None]:
    """Set torch threads and deterministic algorithms (CPU) for a run and restore them afterwards.

    Deterministic mode is entered without ``torch.utils.deterministic.fill_uninitialized_memory``:
    that debugging aid fills every new uninitialised tensor with NaN (≈ 900 fills per MNIST
    training step, 8 % of its time) and changes no result of code that reads only memory it wrote.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        if deterministic and runtime.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
            torch.utils.deterministic.fill_uninitialized_memory = False
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


__all__ = [
    "DTYPES",
    "Runtime",
    "process_settings",
    "resolve_device",
    "seed_all",
    "setup_runtime",
]
