"""fpnets.data: BatchLoader (order, normalisation, DDP sharding, resume) and the batched augmentations."""

from __future__ import annotations

import pytest
import torch

from fpnets.data import (
    REFERENCE_CROP_FILL,
    REFERENCE_ERASE_VALUE,
    BatchLoader,
    CifarAugment,
    DatasetInfo,
    Split,
    cifar_augment,
    random_crop,
    random_erasing,
    random_hflip,
)

INFO = DatasetInfo("toy", 3, (6, 5), 10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


def toy_split(n: int = 10, channels: int = 3) -> Split:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, 6, 5), generator=g, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # pixel (0, 0, 0) identifies the sample
    return Split(images, torch.arange(n, dtype=torch.int64) % 10)


def ids(batches) -> list[int]:
    """Sample ids of un-normalised batches, read back from pixel (0, 0, 0) (see toy_split)."""
    return [round(float(v) * 255) for x, _ in batches for v in x[:, 0, 0, 0]]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------------------


def test_sequential_order_and_lengths():
    loader = BatchLoader(toy_split(10), batch_size=3)
    batches = list(loader)
    assert len(loader) == 4 and [len(y) for _, y in batches] == [3, 3, 3, 1]
    assert ids(batches) == list(range(10))
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (3, 3, 6, 5) and y.dtype == torch.int64
    dropped = BatchLoader(toy_split(10), batch_size=3, drop_last=True)
    assert len(dropped) == 3 and [len(y) for _, y in dropped] == [3, 3, 3]


def test_normalisation_values():
    split = toy_split(4)
    raw, _ = next(iter(BatchLoader(split, batch_size=4)))
    assert torch.equal(raw, split.images.float() / 255)
    x, _ = next(iter(BatchLoader(split, batch_size=4, normalize=INFO)))
    mean = torch.tensor(INFO.mean).view(1, 3, 1, 1)
    std = torch.tensor(INFO.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (split.images.float() / 255 - mean) / std)
    x2, _ = next(iter(BatchLoader(split, batch_size=4, normalize=(INFO.mean, INFO.std))))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match=r"normalize has 1 means and 1 stds for images with 3 channels"):
        BatchLoader(split, batch_size=4, normalize=((0.5,), (0.2,)))
    with pytest.raises(TypeError, match=r"normalize must be a DatasetInfo, \(mean, std\) or None"):
        BatchLoader(split, batch_size=4, normalize=0.5)


def test_shuffle_is_deterministic_per_seed_and_epoch():
    split = toy_split(10)
    a = BatchLoader(split, batch_size=4, shuffle=True, seed=7)
    b = BatchLoader(split, batch_size=4, shuffle=True, seed=7)
    e0 = ids(a)
    assert e0 == ids(b) and sorted(e0) == list(range(10)) and e0 != list(range(10))
    assert ids(a) == e0  # no set_epoch: the same order again
    a.set_epoch(1)
    e1 = ids(a)
    assert sorted(e1) == list(range(10)) and e1 != e0
    a.set_epoch(0)
    assert ids(a) == e0
    assert ids(BatchLoader(split, batch_size=4, shuffle=True, seed=8)) != e0


@pytest.mark.parametrize("n", [12, 10, 2])
def test_ddp_shards(n):
    split = toy_split(n)
    world = 3
    shards = []
    for rank in range(world):
        loader = BatchLoader(split, batch_size=2, shuffle=True, seed=1, rank=rank, world_size=world)
        loader.set_epoch(3)
        shards.append(ids(loader))
        assert len(shards[-1]) == loader.num_samples == -(-n // world)
    assert len({len(s) for s in shards}) == 1  # equal sizes
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # coverage
    assert len(flat) - len(set(flat)) == (-n) % world  # only the padding repeats
    # the concatenation interleaved by rank is the single-process order, padded from its start
    single = BatchLoader(split, batch_size=n, shuffle=True, seed=1)
    single.set_epoch(3)
    order = ids(single)
    padded = (order * 3)[: len(flat)]
    assert [shards[r][k] for k in range(len(shards[0])) for r in range(world)] == padded


def test_ddp_drop_last_is_disjoint():
    split = toy_split(10)
    shards = [
        ids(BatchLoader(split, batch_size=1, shuffle=True, rank=r, world_size=3, drop_last=True))
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set().union(*map(set, shards))) == 9


def test_bad_loader_arguments():
    split = toy_split(4)
    with pytest.raises(ValueError, match=r"rank must be an integer in 0..1"):
        BatchLoader(split, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1"):
        BatchLoader(split, batch_size=0)
    with pytest.raises(TypeError, match=r"split must be a fpnets.data.Split"):
        BatchLoader(split.images, batch_size=2)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0"):
        BatchLoader(split, batch_size=2).set_epoch(-1)


def _noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + torch.rand(x.shape, generator=generator)


def test_augment_determinism_and_resume():
    split = toy_split(10)
    loader = BatchLoader(split, batch_size=3, shuffle=True, seed=5, augment=_noise, normalize=INFO)
    loader.set_epoch(2)
    full = list(loader)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    resumed = list(loader.iter_from(2))
    assert len(resumed) == 2
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], resumed, strict=True)
    )
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[0], full[0][0])
    # ranks draw different augmentations for the same batch index
    r0 = BatchLoader(split, batch_size=2, augment=_noise, rank=0, world_size=2)
    r1 = BatchLoader(split, batch_size=2, augment=_noise, rank=1, world_size=2)
    d0 = next(iter(r0))[0] - split.images[[0, 2]].float() / 255
    d1 = next(iter(r1))[0] - split.images[[1, 3]].float() / 255
    assert not torch.allclose(d0, d1)


def test_augment_without_generator_and_train_only_semantics():
    split = toy_split(4)
    x, _ = next(iter(BatchLoader(split, batch_size=4, augment=lambda x: 1.0 - x)))
    torch.testing.assert_close(x, 1.0 - split.images.float() / 255)


# --------------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------------


def images(b: int = 64, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


def test_hflip_is_exact_mirror():
    x = images()
    assert torch.equal(random_hflip(x, gen(), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, gen(), p=0.0), x)
    out = random_hflip(x, gen(1), p=0.5)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()) and 10 < int(flipped.sum()) < 54


def test_crop_shifts_content_and_pads_with_fill():
    x = images(b=200, h=8, w=8)
    fill = (0.7, 0.8, 0.9)
    out = random_crop(x, gen(), padding=2, fill=fill)
    assert out.shape == x.shape
    padded = torch.empty(200, 3, 12, 12)
    padded[:] = torch.tensor(fill).view(1, 3, 1, 1)
    padded[..., 2:10, 2:10] = x
    offsets = []
    for k in range(200):
        match = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if torch.equal(out[k], padded[k, :, i : i + 8, j : j + 8])
        ]
        assert len(match) == 1
        offsets.append(match[0])
    assert len(set(offsets)) == 25  # every offset of the 5 x 5 occurs
    assert torch.equal(random_crop(x, gen(), padding=0), x)


def test_erasing_area_and_values():
    x = images(b=300)
    out = random_erasing(x, gen(), p=1.0, scale=(0.1, 0.25), ratio=(0.2, 5.0), value=(0.0, -1.0, 2.0))
    changed = (out != x).any(dim=1)  # (B, H, W)
    frac = changed.flatten(1).float().mean(dim=1)
    assert bool((frac > 0.08).all()) and bool((frac < 0.29).all())  # 0.1..0.25 up to integer rounding
    for k in range(300):
        rows = changed[k].any(dim=1).nonzero()[:, 0]
        cols = changed[k].any(dim=0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # one rectangle
        assert int(changed[k].sum()) == h * w
        region = out[k][:, changed[k]]
        assert torch.equal(region, torch.tensor([0.0, -1.0, 2.0]).view(3, 1).expand_as(region))
    square = random_erasing(x, gen(), p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert bool(((square != x).any(dim=1).flatten(1).sum(dim=1) == 256).all())  # 16 x 16
    assert torch.equal(random_erasing(x, gen(), p=0.0), x)
    erased = (random_erasing(x, gen(2), p=0.5) != x).flatten(1).any(dim=1).float().mean()
    assert 0.35 < float(erased) < 0.65


def test_augment_determinism_under_seed():
    x = images()
    aug = cifar_augment()
    assert torch.equal(aug(x, gen(3)), aug(x, gen(3)))
    assert not torch.equal(aug(x, gen(3)), aug(x, gen(4)))
    assert aug(x, gen(3)).shape == x.shape


def test_reference_preset_matches_normalise_then_augment():
    """The paper's code crops and erases after normalising; the pixel-space constants are equivalent."""
    x = images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ours = (cifar_augment("reference")(x, gen(9)) - mean) / std
    theirs = CifarAugment(fill=0.449, erase_value=(0.485, 0.456, 0.406))((x - mean) / std, gen(9))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert REFERENCE_CROP_FILL == (0.587821, 0.556576, 0.507025)
    assert REFERENCE_ERASE_VALUE == (0.596065, 0.558144, 0.49735)
    pixel = cifar_augment("pixel")
    assert pixel.fill == 0.449 and pixel.erase_value == 0.0 and pixel.erase_p == 0.95
    with pytest.raises(ValueError, match=r"unknown preset 'x'; valid presets: reference, pixel"):
        cifar_augment("x")


def test_augment_input_checks():
    with pytest.raises(
        ValueError, match=r"random_crop: expected float images \(B, C, H, W\), got torch.uint8"
    ):
        random_crop(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), gen())
    with pytest.raises(
        ValueError, match=r"random_erasing value: need one value or one per channel \(3\), got 2"
    ):
        random_erasing(images(b=2), gen(), p=1.0, value=(0.0, 1.0))
