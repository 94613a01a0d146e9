"""Image classification (the JFB paper's experiments): digits, MNIST, Fashion-MNIST, SVHN, CIFAR-10.

Data from :mod:`fpnets.data`, models from :func:`fpnets.models.build_model`, cross-entropy loss,
accuracy (higher is better), the reference implementation's Lipschitz rule after every step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import ConfigError
from ._base import DataConfig, Metric, ModelConfig, Task

AUGMENTS = {"none": None, "cifar10": "reference", "cifar10-pixel": "pixel"}
"""Values of ``data.augment`` and the :func:`fpnets.data.cifar_augment` preset each names."""


@dataclass
class ClassificationData(DataConfig):
    """``[data]`` of the classification task: which dataset and how it is batched."""

    name: str = "digits"
    """Dataset for :func:`fpnets.data.load_splits` (digits, mnist, fashion-mnist, svhn, cifar10)."""
    val_size: int | None = None
    """Validation samples held out of the training set; unset: the dataset's default (5000; digits 270)."""
    batch_size: int = 100
    eval_batch_size: int = 500
    augment: str = "none"
    """Training augmentation: "none", "cifar10" (the paper's flip/crop/erasing, reference constants)
    or "cifar10-pixel" (the same with grey padding and black erasing)."""
    download: bool | None = None
    """Allow downloading missing files; unset: the data package's default."""
    limit: int = 0
    """Use only the first ``limit`` samples of every split (smoke tests); 0 = all."""
    verify: bool = True
    """Check local dataset files against the official checksums (false for files of your own)."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"augment": tuple(AUGMENTS)}

    def check(self) -> None:
        super().check()
        if self.limit < 0:
            raise ConfigError(f"data.limit must be >= 0, got {self.limit}")
        if self.val_size is not None and self.val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {self.val_size}")


@dataclass
class ClassificationModel(ModelConfig):
    """``[model]`` of the classification task; unset values take the architecture's defaults."""

    arch: str = "digits"
    variant: str = "fpn"
    """fpn (the paper's network, JFB), jacobian (the paper's Jacobian-based baseline), explicit
    (S(R(0, Q(d))), same parameters) or contractive (spectral-normalised R); selects the
    ``[variants.<name>]`` table too."""
    gamma: float | None = None
    latent_blocks: int | None = None
    lipschitz: str | None = None
    """"reference" (the reference code's rescaling rule) or "none"; unset: the variant's default."""
    lipschitz_every: int | None = None
    """Run the Lipschitz rule's probe (two extra evaluations of R) after every k-th optimizer step
    only; unset: every step, as the reference code does."""
    channels_last: bool = True
    """Channels-last (NHWC) weights and activations: same values, faster convolutions on CPU."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further keyword options for :func:`fpnets.models.build_model` (lipschitz_every, compile, dropout, ...)."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "variant": ("fpn", "jacobian", "explicit", "contractive"),
        "lipschitz": ("reference", "none"),
    }

    def check(self) -> None:
        if self.lipschitz_every is not None and self.lipschitz_every < 1:
            raise ConfigError(
                f"model.lipschitz_every must be >= 1 (probe every k-th step), got {self.lipschitz_every}"
            )


class ClassificationTask(Task):
    """Classify images: N(d) = S(u*) gives logits; cross-entropy loss; accuracy."""

    name = "classification"
    data_config = ClassificationData
    model_config = ClassificationModel
    metrics = (Metric("acc", higher_is_better=True, label="accuracy", percent=True),)
    loss_label = "cross-entropy"
    select = "val.acc"
    extra_columns = ("rescales",)

    def load_splits(self, data_dir: str | Path | None) -> Any:
        from ..data import Split, load_splits

        d = self.config.data
        splits = load_splits(
            d.name, data_dir, val_size=d.val_size, seed=self.config.train.seed, download=d.download
        )
        if d.limit <= 0:
            return splits
        cut = {
            name: Split(getattr(splits, name).images[: d.limit], getattr(splits, name).labels[: d.limit])
            for name in ("train", "val", "test")
        }
        return dataclasses.replace(splits, **cut)

    def loader(
        self, split: Any, *, train: bool, rank: int = 0, world_size: int = 1, device: Any = None
    ) -> Any:
        from ..data import BatchLoader, cifar_augment, dataset_info

        d = self.config.data
        info = dataset_info(d.name)
        if train:
            preset = AUGMENTS[d.augment]
            return BatchLoader(
                split,
                d.batch_size,
                shuffle=True,
                seed=self.config.train.seed,
                augment=None if preset is None else cifar_augment(preset),
                normalize=info,
                rank=rank,
                world_size=world_size,
                device=device,
            )
        return BatchLoader(split, d.eval_batch_size, shuffle=False, normalize=info, device=device)

    def build_model(self) -> nn.Module:
        from ..data import dataset_info
        from ..models import build_model

        m, cfg = self.config.model, self.config
        info = dataset_info(cfg.data.name)
        options: dict[str, Any] = {"in_channels": info.in_channels, "num_classes": info.num_classes}
        for key in ("gamma", "latent_blocks", "lipschitz", "lipschitz_every"):
            if getattr(m, key) is not None:
                options[key] = getattr(m, key)
        options.update(m.options)
        options["solver"] = cfg.solver.spec()
        backward = cfg.backward.spec()
        if backward is not None:
            options["backward"] = backward
        model = build_model(m.arch, m.variant, **options)
        if m.channels_last:
            model.channels_last_()
        return model

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def measure(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"acc": (output.detach().argmax(dim=1) == target).double()}

    def after_step(self, model: nn.Module) -> None:
        # under DDP every process calls this: the models average their Lipschitz estimate over the
        # processes, so the replicas stay identical
        model.after_optimizer_step()  # type: ignore[operator]

    def epoch_stats(self, model: nn.Module) -> dict[str, float | None]:
        # how often the reference Lipschitz rule has rescaled R so far (None: the rule is off)
        return {"rescales": model.rescales}  # type: ignore[dict-item]

    def restore(self, model: nn.Module, record: Any) -> None:
        if record.get("rescales") is not None:
            model.rescales = int(record["rescales"])  # type: ignore[assignment]

    def run_name(self) -> str:
        return f"{self.config.run.name or self.config.data.name}-{self.config.model.variant}"
