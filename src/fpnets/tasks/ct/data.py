"""CT data: random-ellipse phantoms, noisy sinograms, cached train/val/test splits, and a loader for
user (image, sinogram) pairs.

Phantoms (:func:`random_ellipses`): each image is a sum of K ~ U{min_ellipses, …, max_ellipses}
ellipses with indicator intensities c ~ U[0.1, 0.6], centres uniform in the disc of radius 0.6
(in units of the half-width w/2 of the imaged square), semi-axes ~ U[0.08, 0.45] (same units) and
orientation ~ U[0, π), sampled at the pixel centres; overlaps add, and the sum is clipped to [0, 1].

Measurements (:func:`measure`): d_b = A u_b + σ_b ε_b, ε_b ~ N(0, I), with
σ_b = noise · mean_r |(A u_b)_r| — the noise level is a fraction (default 1.5 %, as in the paper's
"individual noise" data) of each sample's own mean absolute line integral.

Cache (:func:`load_ellipse_splits`): one ``.npz`` per configuration under ``data_dir``, named by
the geometry size and a hash of the generation parameters, holding float32 arrays
``{split}_images`` (n, 1, N, N) and ``{split}_sinograms`` (n, 1, n_angles, n_detectors) and a JSON
``meta`` record (format version, geometry, counts, seed, noise, phantom parameters). On load the
record must equal the requested one: a file made from other parameters is rebuilt (with a
:class:`CacheRebuildWarning`), never reused; an unreadable or inconsistent file is rebuilt with a
warning too. Writes are atomic (temporary file, then rename).

Splits are independent of each other's sizes: each split draws from its own child of
``numpy.random.SeedSequence(seed)``, so growing the training set leaves val and test unchanged, and
the first m samples of a split do not depend on its size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ...operators.radon import SMALL_GEOMETRY, ParallelBeamGeometry, RadonTransform

__all__ = [
    "CACHE_VERSION",
    "SPLITS",
    "CTData",
    "CTSplit",
    "CacheRebuildWarning",
    "EllipseDataConfig",
    "load_ct_pairs",
    "load_ellipse_splits",
    "measure",
    "random_ellipses",
]

CACHE_VERSION = 1
"""Format and generator version recorded in every cache file; bump when generation changes."""

SPLITS = ("train", "val", "test")


class CacheRebuildWarning(UserWarning):
    """A cached data file was not usable (other parameters, corrupt) and has been rebuilt."""


@dataclass(frozen=True)
class CTSplit:
    """One split: ground-truth images u and their sinograms d.

    Attributes:
        images: (n, 1, N, N) float32, values in [0, 1].
        sinograms: (n, 1, n_angles, n_detectors) float32.
    """

    images: Tensor
    sinograms: Tensor

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.sinograms.shape[0]:
            raise ValueError(
                f"CTSplit: {self.images.shape[0]} images but {self.sinograms.shape[0]} sinograms; they must pair up"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def dataset(self) -> TensorDataset:
        """(input, target) = (sinogram d, image u) pairs, as a model is called: ``model(d) ≈ u``."""
        return TensorDataset(self.sinograms, self.images)


@dataclass(frozen=True)
class CTData:
    """The three splits and how they were made."""

    train: CTSplit
    val: CTSplit
    test: CTSplit
    geometry: ParallelBeamGeometry
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> CTSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class EllipseDataConfig:
    """Parameters of the random-ellipse data set (module docstring).

    Attributes:
        geometry: the scan (default :data:`fpnets.operators.radon.SMALL_GEOMETRY`, 64 × 64).
        n_train, n_val, n_test: split sizes (the paper: 10,000 train and 1,000 test at 128 × 128).
        seed: the root seed of all three splits.
        noise: σ_b / mean |A u_b| (1.5 % by default).
        min_ellipses, max_ellipses: bounds of the number of ellipses per image.
    """

    geometry: ParallelBeamGeometry = SMALL_GEOMETRY
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 200
    seed: int = 0
    noise: float = 0.015
    min_ellipses: int = 5
    max_ellipses: int = 12

    def __post_init__(self) -> None:
        for key in ("n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"EllipseDataConfig: {key} must be an integer >= 0, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"EllipseDataConfig: seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.noise, (int, float)) and 0 <= self.noise < 1):
            raise ValueError(f"EllipseDataConfig: noise must lie in [0, 1), got {self.noise!r}")
        if not (1 <= self.min_ellipses <= self.max_ellipses):
            raise ValueError(
                f"EllipseDataConfig: need 1 <= min_ellipses <= max_ellipses, got "
                f"{self.min_ellipses}, {self.max_ellipses}"
            )

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def record(self) -> dict:
        """The generation parameters as plain data (stored in and checked against the cache)."""
        d = dataclasses.asdict(self)
        d["geometry"] = self.geometry.describe()
        return {"version": CACHE_VERSION, "kind": "random-ellipses", **d}

    def cache_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:12]
        return f"ct-ellipses-{self.geometry.n}-{digest}.npz"


# ----------------------------------------------------------------------------------------------
# Generation


def random_ellipses(
    count: int,
    n: int,
    rng: np.random.Generator,
    min_ellipses: int = 5,
    max_ellipses: int = 12,
    chunk: int = 16,
) -> np.ndarray:
    """``count`` random-ellipse phantoms of n × n pixels in [0, 1] (module docstring): (count, n, n)
    float64. Coordinates are normalised to [−1, 1]² (pixel centres), so the phantoms do not depend
    on the geometry's physical width."""
    c = -1 + (np.arange(n) + 0.5) * (2.0 / n)
    x, y = np.meshgrid(c, c, indexing="xy")  # (n, n): x along columns, y along rows
    kmax = max_ellipses
    # parameters image by image (so that the first m images do not depend on count), (count, K) each
    params = np.zeros((count, 7, kmax))
    for i in range(count):
        k = rng.integers(min_ellipses, max_ellipses + 1)
        radius = 0.6 * np.sqrt(rng.random(k))
        phi = rng.uniform(0, 2 * np.pi, k)
        params[i, 0, :k] = radius * np.cos(phi)  # centre x, in the disc of radius 0.6
        params[i, 1, :k] = radius * np.sin(phi)  # centre y
        params[i, 2, :k] = rng.uniform(0.08, 0.45, k)  # semi-axis a
        params[i, 3, :k] = rng.uniform(0.08, 0.45, k)  # semi-axis b
        params[i, 4, :k] = rng.uniform(0, np.pi, k)  # orientation
        params[i, 5, :k] = rng.uniform(0.1, 0.6, k)  # intensity
        params[i, 6, :k] = 1.0  # active
    params[:, 2:4][params[:, 6:7].repeat(2, axis=1) == 0] = 1.0  # inactive: any nonzero axes
    out = np.empty((count, n, n), dtype=np.float64)
    for start in range(0, count, chunk):
        p = params[start : start + chunk, :, :, None, None]  # (b, 7, K, 1, 1)
        dx = x - p[:, 0]  # (b, K, n, n)
        dy = y - p[:, 1]
        cr, sr = np.cos(p[:, 4]), np.sin(p[:, 4])
        xr, yr = dx * cr + dy * sr, -dx * sr + dy * cr
        inside = (xr / p[:, 2]) ** 2 + (yr / p[:, 3]) ** 2 <= 1.0
        out[start : start + chunk] = np.clip((inside * (p[:, 5] * p[:, 6])).sum(axis=1), 0.0, 1.0)
    return out


def measure(
    radon: RadonTransform, images: Tensor, noise: float, generator: torch.Generator | None = None
) -> Tensor:
    """d = A u + σ ε with σ_b = noise · mean_r |(A u_b)_r|, per sample: (B, 1, N, N) -> (B, 1, K, D).

    Computed in the images' dtype; ε ~ N(0, I) drawn from ``generator`` (on the CPU), sample by sample.
    """
    clean = radon.forward(images)  # (B, 1, K, D)
    sigma = noise * clean.abs().flatten(1).mean(1)  # (B,)
    # sample by sample, so that a sample's noise does not depend on the batch it is drawn in
    eps = torch.stack(
        [torch.randn(clean.shape[1:], dtype=clean.dtype, generator=generator) for _ in range(len(clean))]
    )
    eps = eps.to(clean.device)
    return clean + sigma.view(-1, 1, 1, 1) * eps


def _generate(cfg: EllipseDataConfig) -> dict[str, np.ndarray]:
    radon = RadonTransform(cfg.geometry)
    children = np.random.SeedSequence(cfg.seed).spawn(len(SPLITS))
    arrays: dict[str, np.ndarray] = {}
    for name, child in zip(SPLITS, children, strict=True):
        count = cfg.counts()[name]
        img_seed, noise_seed = child.spawn(2)
        rng = np.random.default_rng(img_seed)
        images = torch.from_numpy(
            random_ellipses(count, cfg.geometry.n, rng, cfg.min_ellipses, cfg.max_ellipses)
        )
        images = images.unsqueeze(1)  # (n, 1, N, N) float64
        gen = torch.Generator().manual_seed(int(noise_seed.generate_state(1, dtype=np.uint64)[0] >> 1))
        sinos = torch.empty(count, 1, *cfg.geometry.sinogram_shape, dtype=torch.float64)
        for start in range(0, count, 256):
            sinos[start : start + 256] = measure(radon, images[start : start + 256], cfg.noise, gen)
        arrays[f"{name}_images"] = images.numpy().astype(np.float32)
        arrays[f"{name}_sinograms"] = sinos.numpy().astype(np.float32)
    return arrays


# ----------------------------------------------------------------------------------------------
# Cache


def _read_cache(path: Path, cfg: EllipseDataConfig) -> tuple[dict[str, np.ndarray] | None, str]:
    """(arrays, "") if the file is a valid cache for cfg, else (None, why not)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "meta" not in f.files:
                return None, "it has no 'meta' record"
            meta = json.loads(str(f["meta"]))
            if meta != json.loads(json.dumps(cfg.record())):
                diff = sorted(k for k in set(meta) | set(cfg.record()) if meta.get(k) != cfg.record().get(k))
                return None, f"it was generated with other parameters (differing: {', '.join(diff)})"
            arrays = {key: f[key] for key in f.files if key != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        return None, f"it could not be read ({type(exc).__name__}: {exc})"
    g = cfg.geometry
    for name, count in cfg.counts().items():
        expect = {
            f"{name}_images": (count, 1, *g.image_shape),
            f"{name}_sinograms": (count, 1, *g.sinogram_shape),
        }
        for key, shape in expect.items():
            if key not in arrays:
                return None, f"it lacks the array {key!r}"
            if arrays[key].shape != shape or arrays[key].dtype != np.float32:
                return (
                    None,
                    f"its array {key!r} has shape {arrays[key].shape}, dtype {arrays[key].dtype}; expected {shape}, float32",
                )
            if not np.isfinite(arrays[key]).all():
                return None, f"its array {key!r} holds NaN or Inf values"
    return arrays, ""


def _write_cache(path: Path, cfg: EllipseDataConfig, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(cfg.record(), sort_keys=True)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_data(arrays: dict[str, np.ndarray], cfg: EllipseDataConfig) -> CTData:
    splits = {
        name: CTSplit(
            images=torch.from_numpy(arrays[f"{name}_images"]),
            sinograms=torch.from_numpy(arrays[f"{name}_sinograms"]),
        )
        for name in SPLITS
    }
    return CTData(**splits, geometry=cfg.geometry, meta=cfg.record())


def load_ellipse_splits(
    data_dir: str | os.PathLike | None, config: EllipseDataConfig | None = None, *, rebuild: bool = False
) -> CTData:
    """The random-ellipse splits for ``config``, from the cache in ``data_dir`` or generated (and
    cached there). ``data_dir=None`` generates in memory without caching; ``rebuild`` forces
    regeneration. A cache file from other parameters or an unreadable one is rebuilt with a
    :class:`CacheRebuildWarning` naming the reason."""
    cfg = EllipseDataConfig() if config is None else config
    if not isinstance(cfg, EllipseDataConfig):
        raise TypeError(f"config must be an EllipseDataConfig, got {type(cfg).__name__}")
    if data_dir is None:
        return _to_data(_generate(cfg), cfg)
    path = Path(data_dir) / cfg.cache_name()
    if path.exists() and not rebuild:
        arrays, why = _read_cache(path, cfg)
        if arrays is not None:
            return _to_data(arrays, cfg)
        warnings.warn(
            f"CT data cache {path} is not usable: {why}; rebuilding it", CacheRebuildWarning, stacklevel=2
        )
    arrays = _generate(cfg)
    _write_cache(path, cfg, arrays)
    return _to_data(arrays, cfg)


# ----------------------------------------------------------------------------------------------
# User data


def _read_arrays(path: Path, keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in keys if k not in f.files]
                if missing:
                    raise KeyError(
                        f"{path}: no array named {', '.join(map(repr, missing))}; it holds {', '.join(f.files)} "
                        "(pass images_key= / sinograms_key=)"
                    )
                return f[keys[0]], f[keys[1]]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    if suffix in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError as exc:  # pragma: no cover - h5py is in the dev environment
            raise ImportError("reading HDF5 CT data needs h5py: pip install 'fpnets[ct]'") from exc
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in keys if k not in f]
                if missing:
                    raise KeyError(
                        f"{path}: no dataset named {', '.join(map(repr, missing))}; it holds {', '.join(f.keys())} "
                        "(pass images_key= / sinograms_key=)"
                    )
                return np.asarray(f[keys[0]]), np.asarray(f[keys[1]])
        except OSError as exc:
            raise ValueError(f"{path} is not a readable HDF5 file ({exc})") from exc
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .npz, .h5 or .hdf5")


def load_ct_pairs(
    path: str | os.PathLike,
    geometry: ParallelBeamGeometry,
    *,
    images_key: str = "images",
    sinograms_key: str = "sinograms",
) -> CTSplit:
    """User (image, sinogram) pairs from ``.npz`` or HDF5 (``.h5``/``.hdf5``, needs h5py).

    Images: (n, N, N) or (n, 1, N, N); sinograms: (n, n_angles, n_detectors) or
    (n, 1, n_angles, n_detectors), as ``geometry`` says. Returned as float32 tensors with the channel
    axis. Raises ValueError for a shape that does not fit the geometry, unequal counts, or NaN/Inf.
    """
    if not isinstance(geometry, ParallelBeamGeometry):
        raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CT data file {path} does not exist")
    images, sinos = _read_arrays(path, (images_key, sinograms_key))

    def shaped(a: np.ndarray, tail: tuple[int, int], what: str) -> np.ndarray:
        given = a.shape
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4 or a.shape[1] != 1 or tuple(a.shape[2:]) != tail:
            raise ValueError(
                f"{path}: {what} have shape {given}; this geometry needs (n, {tail[0]}, {tail[1]}) "
                f"or (n, 1, {tail[0]}, {tail[1]})"
            )
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{path}: {what} must be numeric, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {what} hold NaN or Inf values; clean the data first")
        return a.astype(np.float32)

    images = shaped(images, geometry.image_shape, "images")
    sinos = shaped(sinos, geometry.sinogram_shape, "sinograms")
    if images.shape[0] != sinos.shape[0]:
        raise ValueError(
            f"{path}: {images.shape[0]} images but {sinos.shape[0]} sinograms; they must pair up"
        )
    return CTSplit(images=torch.from_numpy(images), sinograms=torch.from_numpy(sinos))
