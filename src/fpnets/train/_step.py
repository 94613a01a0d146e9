"""One training step, the same for the trainer, the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class StepResult:
    """What :func:`train_step` returns: the (detached) loss, the model's output and the penalty."""

    loss: Tensor
    output: Any
    penalty: Tensor | None = None


def train_step(
    model: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    target: Any,
    loss_fn: Callable[[Any, Any], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    grad_clip: float = 0.0,
    params: Iterable[Tensor] | None = None,
    after_step: Callable[[], Any] | None = None,
    penalty: Callable[[], Tensor] | None = None,
    penalty_weight: float = 0.0,
) -> StepResult:
    """Forward, loss, backward, (clipping), optimizer step, then ``after_step()``.

    Args:
        model: called as ``model(*inputs)`` (or ``model(inputs)`` for a single tensor).
        inputs, target: one batch.
        loss_fn: ``loss_fn(output, target)`` → scalar ℓ.
        optimizer: stepped once.
        grad_clip: clip the global gradient norm of ``params`` (default: the model's parameters)
            to this value; 0 = off.
        after_step: called after the optimizer step (e.g. ``model.after_optimizer_step``, a
            Lipschitz rule).
        penalty: a differentiable scalar evaluated after the forward pass (e.g. a Jacobian
            penalty at the fixed point just found), added to the loss as ``penalty_weight · penalty``.

    Returns:
        the detached loss ℓ (without the penalty), the output and the detached penalty (or None).
    """
    optimizer.zero_grad(set_to_none=True)
    output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    loss = loss_fn(output, target)
    total = loss
    pen = None
    if penalty is not None and penalty_weight > 0:
        pen = penalty()
        total = loss + penalty_weight * pen
    total.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(list(params) if params is not None else model.parameters(), grad_clip)
    optimizer.step()
    if after_step is not None:
        after_step()
    return StepResult(loss.detach(), output, None if pen is None else pen.detach())
