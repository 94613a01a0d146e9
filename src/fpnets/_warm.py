"""A bounded store of warm starts: the last solution of each input seen, least recently used out."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

import torch
from torch import Tensor

V = TypeVar("V")

__all__ = ["WarmStarts", "row_keys"]


class WarmStarts(Generic[V]):
    """Keeps the last solution (any value) for up to ``capacity`` keys, dropping the least recently
    used key when full; ``capacity = 0`` keeps nothing.

    A fixed-point model that meets the same input again (a training context in the next epoch, a
    validation context) starts its solve from here; the solve's tolerance decides the answer, the
    store only how fast it is reached.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"WarmStarts: capacity must be an integer >= 0, got {capacity!r}")
        self.capacity = capacity
        self._store: OrderedDict[bytes, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: bytes, default: V | None = None) -> V | None:
        """The value stored for ``key`` (now the most recently used), else ``default``."""
        if key not in self._store:
            return default
        self._store.move_to_end(key)
        return self._store[key]

    def put(self, key: bytes, value: V) -> None:
        """Store ``value`` for ``key``, dropping the least recently used key beyond ``capacity``."""
        if self.capacity == 0:
            return
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()


def row_keys(x: Tensor) -> list[bytes]:
    """One store key per row of ``x`` (B, ...): the bytes of the row in float64 on the CPU, so the
    same input gives the same key whatever the model's dtype or device."""
    return [row.tobytes() for row in x.detach().to("cpu", torch.float64).numpy()]
