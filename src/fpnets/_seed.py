"""Seeds derived from several integers (run seed, epoch, rank, ...), shared by loaders and the trainer."""

from __future__ import annotations

import numpy as np


def derive_seed(*words: int) -> int:
    """A 63-bit seed hashed from non-negative integers (numpy's SeedSequence), for ``torch.Generator``."""
    state = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
