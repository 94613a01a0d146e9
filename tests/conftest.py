from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def contraction_matrix(
    n: int, gamma: float, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """A random n×n matrix with spectral norm exactly γ."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = gamma * a / torch.linalg.matrix_norm(a, ord=2)
    return a.to(dtype)
