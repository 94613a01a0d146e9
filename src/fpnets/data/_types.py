"""What :func:`fpnets.data.load_splits` returns, and the ways loading data can fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class DataError(RuntimeError):
    """A data set could not be loaded: a corrupt or truncated file, a failed checksum, a failed download.

    The message names the file and says what is wrong with it.
    """


class ChecksumError(DataError):
    """A local data file does not match the official checksum of the file it stands for.

    The message names the file and, when its checksum is that of another official file (another
    data set's, or a swapped one), which file it is; ``verify=False`` skips the check.
    """


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The files of a data set are not on this machine and could not be downloaded.

    The message lists the expected file names, the folders searched, and where to put the files.
    """


@dataclass(frozen=True)
class Split:
    """One split of an image-classification data set, held in memory.

    Attributes:
        images: (N, C, H, W) uint8 pixels, 0..255, channels first.
        labels: (N,) int64 class indices in 0..num_classes-1.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"Split.images must be a uint8 tensor (N, C, H, W), got {_describe(self.images)}")
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"Split.labels must be an int64 tensor (N,), got {_describe(self.labels)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"Split: {self.images.shape[0]} images but {self.labels.shape[0]} labels; they must match"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int | None = None) -> Tensor:
        """(num_classes,) int64 number of samples of each class."""
        minlength = 0 if num_classes is None else num_classes
        return torch.bincount(self.labels, minlength=minlength)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a data set.

    Attributes:
        name: the registry name ("digits", "mnist", "fashion-mnist", "svhn", "cifar10").
        in_channels: C, channels of an image.
        image_size: (H, W) in pixels.
        num_classes: number of classes; labels lie in 0..num_classes-1.
        mean: per-channel mean of the pixels scaled to [0, 1], used to normalise: x̂ = (x − mean) / std.
        std: per-channel standard deviation, same scale.
    """

    name: str
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"DatasetInfo {self.name!r}: mean and std need one value per channel "
                f"({self.in_channels}), got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"DatasetInfo {self.name!r}: std must be positive, got {self.std}")


@dataclass(frozen=True)
class Splits:
    """Train, validation and test splits of one data set.

    ``val`` is held out of the official training set (a seeded permutation), so that model
    selection never looks at ``test``, which is the official test set.

    Attributes:
        train, val, test: the three :class:`Split` objects (``val`` may be empty when asked for
            ``val_size=0``).
        info: the :class:`DatasetInfo`.
        files: the files the splits were read from (empty for data bundled with a package).
        seed: the seed of the train/validation permutation.
    """

    train: Split
    val: Split
    test: Split
    info: DatasetInfo
    files: tuple[Path, ...] = field(default=())
    seed: int = 0

    def __iter__(self):
        """``train, val, test = splits``."""
        return iter((self.train, self.val, self.test))

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples of each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
