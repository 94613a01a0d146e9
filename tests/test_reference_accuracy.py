"""The published MNIST checkpoints of the reference implementation, evaluated with fpnets.

Skipped where ../shared/data (beside the repo root) is absent, as on a fresh clone elsewhere.
The reference's own evaluation (PROVENANCE.md) gives 99.35% (FPN) and 99.29% (explicit).
"""

from __future__ import annotations

import pytest
import torch

from fpnets.data import BatchLoader, load_splits
from fpnets.models import load_reference_checkpoint

from conftest import SHARED_DATA

REFERENCE = SHARED_DATA / "jfb-reference"
pytestmark = pytest.mark.skipif(
    not (REFERENCE.is_dir() and (SHARED_DATA / "mnist").is_dir()),
    reason="needs ../shared/data/jfb-reference and ../shared/data/mnist",
)


@torch.no_grad()
def _test_accuracy(checkpoint: str) -> tuple[float, object]:
    model, _info = load_reference_checkpoint(REFERENCE / checkpoint)
    model.eval()
    splits = load_splits("mnist", SHARED_DATA / "mnist", val_size=0)
    loader = BatchLoader(splits.test, batch_size=500, normalize=splits.info)
    correct = total = 0
    depths = []
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
        if model.solution is not None:
            depths.append(model.solution.iterations.float())
    return 100.0 * correct / total, torch.cat(depths) if depths else None


def test_reference_fpn_checkpoint_accuracy() -> None:
    acc, depths = _test_accuracy("MNIST_FPN_weights_99.36.pth")
    assert acc == pytest.approx(99.35, abs=0.05)
    assert depths is not None and depths.shape == (10000,)
    assert float(depths.max()) <= 50 and float(depths.std()) > 0  # depth varies per sample


def test_reference_explicit_checkpoint_accuracy() -> None:
    acc, depths = _test_accuracy("MNIST_FPN_Explicit_weights_99.29.pth")
    assert acc == pytest.approx(99.29, abs=0.05)
    assert depths is None
