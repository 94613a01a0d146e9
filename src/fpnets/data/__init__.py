"""Image-classification data for fpnets: loading, validation splits, batching and augmentation.

- :func:`load_splits` reads "digits", "mnist", "fashion-mnist", "svhn" or "cifar10" into memory
  as train / validation / test :class:`Split` objects (uint8 images, int64 labels), with the
  validation set held out of the official training set. Missing files are downloaded into a cache
  when the network allows it and verified by SHA-256; local files are verified against the official
  checksums too (``verify=False`` skips it), a file of another data set is named as such
  (:class:`ChecksumError`), and corrupt files raise :class:`DataError`.
- :class:`BatchLoader` iterates over a split in batches, with reproducible shuffling per epoch,
  optional augmentation, normalisation and DistributedDataParallel sharding.
- :func:`cifar_augment` is the paper's CIFAR-10 augmentation (flip, padded crop, random erasing),
  written with torch ops on whole batches.
"""

from ._augment import (
    REFERENCE_CROP_FILL,
    REFERENCE_ERASE_VALUE,
    Augment,
    CifarAugment,
    cifar_augment,
    random_crop,
    random_erasing,
    random_hflip,
)
from ._datasets import DATASETS, DatasetSpec, dataset_info, hold_out, load_splits
from ._download import cache_root
from ._formats import RestrictedUnpickler, read_cifar_batch, read_idx, read_svhn_mat
from ._loader import BatchLoader, derive_seed
from ._types import ChecksumError, DataError, DatasetInfo, DatasetNotFoundError, Split, Splits

__all__ = [
    "DATASETS",
    "REFERENCE_CROP_FILL",
    "REFERENCE_ERASE_VALUE",
    "Augment",
    "BatchLoader",
    "ChecksumError",
    "CifarAugment",
    "DataError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSpec",
    "RestrictedUnpickler",
    "Split",
    "Splits",
    "cache_root",
    "cifar_augment",
    "dataset_info",
    "derive_seed",
    "hold_out",
    "load_splits",
    "random_crop",
    "random_erasing",
    "random_hflip",
    "read_cifar_batch",
    "read_idx",
    "read_svhn_mat",
]
