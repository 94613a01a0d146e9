"""The compiled forward solve (FixedPointLayer(compile=True)) matches the eager one."""

from __future__ import annotations

import shutil

import pytest
import torch

from fpnets.models import build_model

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler"
)


def test_compiled_solve_matches_eager_forward_and_gradient() -> None:
    torch.manual_seed(0)
    eager = build_model("mnist", "fpn", latent_blocks=1, gamma=0.9).train()
    fast = build_model("mnist", "fpn", latent_blocks=1, gamma=0.9, compile=True).train()
    fast.load_state_dict(eager.state_dict())
    x = torch.randn(8, 1, 28, 28)
    outs, grads = [], []
    for model in (eager, fast):
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert eager.solution.iterations.tolist() == fast.solution.iterations.tolist()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # BatchNorm statistics were updated by the compiled iterations too; the compiled path applies R
    # once more (eagerly, for the gradient) where the eager path reuses its last iteration
    bn_fast, bn_eager = fast.operator.blocks[0].norm, eager.operator.blocks[0].norm
    assert int(bn_eager.num_batches_tracked) == eager.solution.evaluations
    assert int(bn_fast.num_batches_tracked) == fast.solution.evaluations + 1
