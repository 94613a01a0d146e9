"""Load the reference implementation's published checkpoints (``trained_networks/*.pth``).

The files are PyTorch 1.7 pickles of a dict with ``net_state_dict``, ``test_acc_hist``,
``test_loss_hist``, ``optimizer_state_dict`` and ``lr_scheduler`` (a StepLR object). They are read
with ``torch.load(weights_only=True)`` and an explicit allow-list of globals; never unpickled freely.

State-dict names, reference → fpnets (``{i}`` a latent block, ``{l}`` = 1, 2, 3, ``{k}`` = 1, 2):

MNIST (``MNIST_FPN``)                       SVHN / CIFAR-10 unaugmented
  conv_d1, bn_1 → encoder.conv1, .bn1         conv1, bn1 → encoder.conv, encoder.bn
  conv_d2, bn_2 → encoder.conv2, .bn2         layer{l}.0.conv_d{k} → encoder.blocks.{l-1}.conv{k}
                                              layer{l}.0.bn{k} → encoder.blocks.{l-1}.bn{k}
                                              bn_{k} (unused) → encoder.unused_bn{k}
  both: latent_convs.{i}.0 → latent.operator.blocks.{i}.conv1
        latent_convs.{i}.3 → latent.operator.blocks.{i}.conv2
        lat_batch_norm.{i} → latent.operator.blocks.{i}.norm
        conv_y → readout.conv;  fc_y → readout.fc
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import FixedPointNetwork
from .build import build_model

_COMMON = [
    (r"latent_convs\.(\d+)\.0\.", r"latent.operator.blocks.\1.conv1."),
    (r"latent_convs\.(\d+)\.3\.", r"latent.operator.blocks.\1.conv2."),
    (r"lat_batch_norm\.(\d+)\.", r"latent.operator.blocks.\1.norm."),
    (r"conv_y\.", "readout.conv."),
    (r"fc_y\.", "readout.fc."),
]

KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "mnist": [
        (r"conv_d1\.", "encoder.conv1."),
        (r"bn_1\.", "encoder.bn1."),
        (r"conv_d2\.", "encoder.conv2."),
        (r"bn_2\.", "encoder.bn2."),
        *_COMMON,
    ],
    "svhn": [
        (r"conv1\.", "encoder.conv."),
        (r"bn1\.", "encoder.bn."),
        (r"layer1\.0\.conv_d([12])\.", r"encoder.blocks.0.conv\1."),
        (r"layer1\.0\.bn([12])\.", r"encoder.blocks.0.bn\1."),
        (r"layer2\.0\.conv_d([12])\.", r"encoder.blocks.1.conv\1."),
        (r"layer2\.0\.bn([12])\.", r"encoder.blocks.1.bn\1."),
        (r"layer3\.0\.conv_d([12])\.", r"encoder.blocks.2.conv\1."),
        (r"layer3\.0\.bn([12])\.", r"encoder.blocks.2.bn\1."),
        (r"bn_([12])\.", r"encoder.unused_bn\1."),
        *_COMMON,
    ],
}
"""Regular expressions (anchored at the start of a key) mapping reference names onto fpnets names;
"svhn" also serves "cifar10-unaugmented"."""

REFERENCE_GAMMA = 0.9
"""The contraction factor the published checkpoints were trained with (not stored in the files)."""


def _plain_dict(*args: Any) -> dict:
    """Stands in for ``collections.defaultdict`` while unpickling (the factory argument is dropped)."""
    return {}


def _allowed_globals() -> list[Any]:
    adam = importlib.import_module("torch.optim.adam").Adam
    step_lr = importlib.import_module("torch.optim.lr_scheduler").StepLR
    return [(_plain_dict, "collections.defaultdict"), adam, step_lr, dict]


def read_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, read with ``weights_only=True`` and an explicit allow-list."""
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(Path(path), map_location="cpu", weights_only=True)


def map_reference_key(key: str, family: str) -> str:
    """fpnets name of a reference state-dict key; ``family`` is "mnist" or "svhn"."""
    for pattern, replacement in KEY_RULES[family]:
        new, n = re.subn("^" + pattern, replacement, key)
        if n:
            return new
    raise ValueError(f"reference checkpoint key {key!r} has no counterpart in the fpnets {family} model")


def map_reference_state_dict(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """The reference state dict under fpnets names (the tensors themselves, not copies)."""
    return {map_reference_key(k, family): v for k, v in state.items()}


def infer_arch(state: dict[str, Tensor], name: str = "") -> str:
    """The arch ("mnist", "svhn" or "cifar10-unaugmented") from the keys; the file name tells the
    last two apart (their state dicts are identical in form)."""
    if "conv_d1.weight" in state:
        return "mnist"
    if "layer1.0.conv_d1.weight" in state:
        return "cifar10-unaugmented" if "cifar" in name.lower() else "svhn"
    raise ValueError(
        "not a reference JFB checkpoint of a known architecture (expected conv_d1.* for MNIST or "
        f"layer1.0.conv_d1.* for SVHN/CIFAR-10); keys start with {sorted(state)[:5]}"
    )


def _is_explicit(state: dict[str, Tensor], name: str) -> bool:
    """Explicit if the file name says so, or if the latent BatchNorm saw exactly as many batches as the
    first encoder BatchNorm (one evaluation of R per forward)."""
    if "explicit" in name.lower():
        return True
    lat = state.get("lat_batch_norm.0.num_batches_tracked")
    enc = state.get("bn_1.num_batches_tracked", state.get("bn1.num_batches_tracked"))
    return lat is not None and enc is not None and int(enc) > 0 and int(lat) == int(enc)


def load_reference_checkpoint(
    path: str | Path, *, variant: str | None = None, arch: str | None = None, **options: Any
) -> tuple[FixedPointNetwork, dict[str, Any]]:
    """Build the matching fpnets model and load a reference checkpoint into it.

    Args:
        path: a ``.pth`` file of the reference implementation.
        variant: "fpn" or "explicit"; default: "explicit" for an explicit checkpoint (file name), else
            "fpn". The other variants have no latent BatchNorm and cannot take these weights.
        arch: override the inferred architecture ("mnist", "svhn", "cifar10-unaugmented").
        **options: passed to :func:`build_model` (solver, backward, ...). ``gamma`` defaults to 0.9,
            what the published checkpoints used; ``latent_blocks`` is read from the keys.

    Returns:
        (model, info): the model (in training mode, like any new module; call ``.eval()``) and a dict
        with ``arch``, ``variant``, ``gamma``, ``latent_blocks``, ``parameters``, ``test_acc_hist``,
        ``test_loss_hist``, ``best_test_acc``, ``best_epoch`` (1-based), ``epochs``,
        ``optimizer_state_dict``, ``lr_scheduler`` (the StepLR's attributes but its optimizer),
        ``key_map`` (reference name → fpnets name) and ``path``.
    """
    path = Path(path)
    raw = read_reference_checkpoint(path)
    if not isinstance(raw, dict) or "net_state_dict" not in raw:
        raise ValueError(f"{path}: not a reference checkpoint (no 'net_state_dict')")
    state: dict[str, Tensor] = raw["net_state_dict"]
    arch = infer_arch(state, path.name) if arch is None else arch
    family = "mnist" if arch == "mnist" else "svhn"
    if arch not in ("mnist", "svhn", "cifar10-unaugmented"):
        raise ValueError(
            f"reference checkpoints exist for mnist, svhn, cifar10-unaugmented; got arch {arch!r}"
        )
    if variant is None:
        variant = "explicit" if _is_explicit(state, path.name) else "fpn"
    if variant not in ("fpn", "explicit"):
        raise ValueError(
            f"reference checkpoints hold latent BatchNorm statistics and load into variant 'fpn' or "
            f"'explicit', got {variant!r}"
        )
    blocks = len({k.split(".")[1] for k in state if k.startswith("latent_convs.")})
    first = state["conv_d1.weight" if family == "mnist" else "conv1.weight"]
    options.setdefault("gamma", REFERENCE_GAMMA)
    options.setdefault("latent_blocks", blocks)
    options.setdefault("in_channels", int(first.shape[1]))
    options.setdefault("num_classes", int(state["fc_y.weight"].shape[0]))
    model = build_model(arch, variant, **options)
    key_map = {k: map_reference_key(k, family) for k in state}
    model.load_state_dict({key_map[k]: v for k, v in state.items()}, strict=True)

    acc = [float(a) for a in raw.get("test_acc_hist", [])]
    best = max(range(len(acc)), key=acc.__getitem__) if acc else None
    scheduler = raw.get("lr_scheduler")
    sched_state = (
        {k: v for k, v in vars(scheduler).items() if k != "optimizer"} if scheduler is not None else None
    )
    info = {
        "arch": arch,
        "variant": variant,
        "gamma": model.gamma,
        "latent_blocks": model.operator.num_blocks,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_acc_hist": acc,
        "test_loss_hist": [float(x) for x in raw.get("test_loss_hist", [])],
        "best_test_acc": acc[best] if best is not None else None,
        "best_epoch": best + 1 if best is not None else None,
        "epochs": len(acc),
        "optimizer_state_dict": raw.get("optimizer_state_dict"),
        "lr_scheduler": sched_state,
        "key_map": key_map,
        "path": str(path),
    }
    return model, info
