"""Batched data augmentation with torch ops only, driven by an explicit :class:`torch.Generator`.

Every function takes float images x of shape (B, C, H, W), in [0, 1] (before normalisation), and a
generator, and draws its random numbers for the whole batch at once, per sample. The draws are
made on the generator's device and moved to the images' device, so a CPU generator gives the same
augmentation whether the images live on the CPU or a GPU.

An *augment* is any callable ``augment(x, generator) -> x`` of this kind;
:class:`~fpnets.data.BatchLoader` calls it on training batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Augment = Callable[[Tensor, torch.Generator], Tensor]
"""``augment(x, generator) -> x``: x float (B, C, H, W) in [0, 1]."""

Fill = float | Sequence[float]
"""A value for every channel, or one value per channel."""


def _check_images(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: expected float images (B, C, H, W), got {got}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, x: Tensor) -> Tensor:
    """U[0, 1) numbers drawn on the generator's device, returned on x's device (float32)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(x.device)


def _per_channel(value: Fill, x: Tensor, who: str) -> Tensor:
    """``value`` as a (1, C, 1, 1) tensor of x's dtype and device."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(-1)
    if v.numel() not in (1, x.shape[1]):
        raise ValueError(f"{who}: need one value or one per channel ({x.shape[1]}), got {v.numel()}")
    return v.expand(x.shape[1]).reshape(1, -1, 1, 1)


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p`` (torchvision's RandomHorizontalFlip)."""
    _check_images(x, "random_hflip")
    flip = _uniform((x.shape[0],), generator, x) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: Tensor, generator: torch.Generator, padding: int = 2, fill: Fill = 0.0) -> Tensor:
    """Pad each side by ``padding`` pixels of value ``fill``, then crop back to (H, W) at a random offset.

    As torchvision's ``RandomCrop(size=(H, W), padding=padding, fill=fill)``: the top-left corner of
    the crop is uniform over the (2·padding + 1)² positions, independently per sample.
    """
    _check_images(x, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding!r}")
    if padding == 0:
        return x
    batch, channels, height, width = x.shape
    padded = (
        _per_channel(fill, x, "random_crop fill")
        .expand(batch, channels, height + 2 * padding, width + 2 * padding)
        .clone()
    )
    padded[..., padding : padding + height, padding : padding + width] = x
    offsets = (_uniform((2, batch), generator, x) * (2 * padding + 1)).long().clamp_max(2 * padding)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def random_erasing(
    x: Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: Fill = 0.0,
    attempts: int = 10,
) -> Tensor:
    """Fill a random rectangle of each image with ``value``, with probability ``p`` (Zhong et al. 2020).

    As torchvision's ``RandomErasing``: the rectangle's area is a fraction U(scale) of H·W, its
    aspect ratio h/w is log-uniform in ``ratio``; h and w are rounded to integers; of ``attempts``
    such draws, the first with h < H and w < W is used (if none fits, the image is left alone); its
    top-left corner is uniform over the positions where it fits.
    """
    _check_images(x, "random_erasing")
    if not (0.0 < scale[0] <= scale[1] <= 1.0 and 0.0 < ratio[0] <= ratio[1]):
        raise ValueError(
            f"random_erasing: need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
            f"got scale={scale}, ratio={ratio}"
        )
    batch, _, height, width = x.shape
    u = _uniform((batch, 2 * attempts + 3), generator, x).double()
    apply = u[:, 0] < p
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 1 : 1 + attempts])  # (B, attempts)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1 + attempts : 1 + 2 * attempts])
    h = torch.round(torch.sqrt(area * aspect)).long()
    w = torch.round(torch.sqrt(area / aspect)).long()
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first attempt that fits
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    apply = apply & fits.any(dim=1)
    top = (u[:, -2] * (height - h + 1)).long().clamp(min=0)
    left = (u[:, -1] * (width - w + 1)).long().clamp(min=0)
    top, left = torch.minimum(top, (height - h).clamp(min=0)), torch.minimum(left, (width - w).clamp(min=0))
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]  # (B, H, W)
    return torch.where(mask[:, None], _per_channel(value, x, "random_erasing value"), x)


# --------------------------------------------------------------------------------------------------
# The paper's CIFAR-10 augmentation
# --------------------------------------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _pixel_value(normalised: Sequence[float]) -> tuple[float, ...]:
    """The [0, 1] pixel value that normalises (ImageNet mean/std) to ``normalised``, per channel."""
    return tuple(
        round(m + v * s, 6) for m, v, s in zip(_IMAGENET_MEAN, normalised, _IMAGENET_STD, strict=True)
    )


REFERENCE_CROP_FILL = _pixel_value((0.449,) * 3)
"""(0.587821, 0.556576, 0.507025): pixel value of the reference code's crop padding, fill=0.449
applied after normalisation."""
REFERENCE_ERASE_VALUE = _pixel_value(_IMAGENET_MEAN)
"""(0.596065, 0.558144, 0.497350): pixel value of the reference code's erasing value
[0.485, 0.456, 0.406], applied after normalisation."""


@dataclass(frozen=True)
class CifarAugment:
    """Horizontal flip, padded random crop and random erasing, in that order, on [0, 1] images.

    Call it as ``augment(x, generator)``. Defaults: the paper's CIFAR-10 training augmentation (see
    :func:`cifar_augment`).

    Attributes:
        flip_p: probability of a horizontal flip.
        padding: pixels of padding on each side before the random crop back to (H, W).
        fill: pixel value of the padding (one value, or one per channel).
        erase_p: probability of erasing a rectangle.
        erase_scale: range of the erased area as a fraction of the image.
        erase_ratio: range of the erased rectangle's aspect ratio h/w (sampled log-uniformly).
        erase_value: pixel value written into the rectangle (one value, or one per channel).
    """

    flip_p: float = 0.5
    padding: int = 2
    fill: Fill = REFERENCE_CROP_FILL
    erase_p: float = 0.95
    erase_scale: tuple[float, float] = (0.1, 0.25)
    erase_ratio: tuple[float, float] = (0.2, 5.0)
    erase_value: Fill = REFERENCE_ERASE_VALUE

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = random_hflip(x, generator, self.flip_p)
        x = random_crop(x, generator, self.padding, self.fill)
        if self.erase_p > 0:
            x = random_erasing(
                x, generator, self.erase_p, self.erase_scale, self.erase_ratio, self.erase_value
            )
        return x


def cifar_augment(preset: str = "reference") -> CifarAugment:
    """The CIFAR-10 training augmentation of the JFB paper, as a :class:`CifarAugment`.

    RandomHorizontalFlip(p=0.5), RandomCrop(32, padding=2), RandomErasing(p=0.95,
    scale=(0.1, 0.25), ratio=(0.2, 5)). The two presets differ only in the constants written into
    the padding and the erased rectangle:

    - ``"reference"`` (default) reproduces the reference code (Typal-Research/jacobian_free_backprop,
      ``utils.cifar_loaders``), which crops and erases *after* normalising with the ImageNet
      mean/std, with ``fill=0.449`` and ``value=[0.485, 0.456, 0.406]`` in normalised units. Since
      cropping and erasing commute with a per-channel affine map, applying them before
      normalisation with the pixel values :data:`REFERENCE_CROP_FILL` and
      :data:`REFERENCE_ERASE_VALUE` gives the same images.
    - ``"pixel"`` takes the same numbers as pixel values in [0, 1]: padding 0.449 (grey) and
      erasing to 0 (black).
    """
    if preset == "reference":
        return CifarAugment()
    if preset == "pixel":
        return CifarAugment(fill=0.449, erase_value=0.0)
    raise ValueError(f"cifar_augment: unknown preset {preset!r}; valid presets: reference, pixel")
