"""The data-set registry and :func:`load_splits`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._download import DownloadError, Remote, cache_root, ensure
from ._formats import check_images, check_labels, read_cifar_batch, read_idx, read_svhn_mat
from ._types import DataError, DatasetInfo, DatasetNotFoundError, Split, Splits
from ._verify import KNOWN_FILES, KnownFile, archive_verified, check_file, mismatch_message, raise_mismatches

Arrays = tuple[np.ndarray, np.ndarray]
"""(images (N, C, H, W) uint8, labels (N,) int64)."""

DEFAULT_VAL_SIZE = 5000
"""Validation samples held out of the official training set when ``val_size`` is not given."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, download and read one data set.

    Attributes:
        info: the :class:`DatasetInfo` (shapes, classes, normalisation constants).
        files: the file names the reader needs, as the official distribution names them.
        aliases: other accepted names per file in ``files`` (e.g. without ``.gz``).
        subdirs: subfolders of ``data_dir`` (and of the cache folder) that are searched too.
        remotes: what to download when the files are missing; empty when nothing can be downloaded.
        read: reads ``{file name: path}`` into ``(train, test)`` arrays.
        default_val_size: validation samples held out of the training set by default.
        homepage: where the data set is published, for error messages.
        title: the data set's usual spelling in messages ("Fashion-MNIST"); default ``info.name``.
        content_sums: per file in ``files``, official digests (SHA-256 or MD5, hex) of its content,
            decompressed when the local copy is gzip; a local file is verified against these and
            against the digests of the remote that provides it.
    """

    info: DatasetInfo
    files: tuple[str, ...]
    aliases: Mapping[str, tuple[str, ...]]
    subdirs: tuple[str, ...]
    remotes: tuple[Remote, ...]
    read: Callable[[dict[str, Path]], tuple[Arrays, Arrays]]
    default_val_size: int = DEFAULT_VAL_SIZE
    homepage: str = ""
    title: str = ""
    content_sums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        """``title``, or the registry name when no title is set."""
        return self.title or self.info.name


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def _read_idx_pair(images: Path, labels: Path, num_classes: int) -> Arrays:
    x = check_images(images, read_idx(images, ndim=3), (28, 28))
    y = read_idx(labels, ndim=1)
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{labels}: {y.shape[0]} labels, but {images.name} holds {x.shape[0]} images")
    return x[:, None], check_labels(labels, y, x.shape[0], num_classes)


def _read_idx_dataset(paths: dict[str, Path]) -> tuple[Arrays, Arrays]:
    train = _read_idx_pair(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"], 10)
    test = _read_idx_pair(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"], 10)
    return train, test


def _read_svhn(paths: dict[str, Path]) -> tuple[Arrays, Arrays]:
    return read_svhn_mat(paths["train_32x32.mat"]), read_svhn_mat(paths["test_32x32.mat"])


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _read_cifar10(paths: dict[str, Path]) -> tuple[Arrays, Arrays]:
    parts = [read_cifar_batch(paths[name]) for name in _CIFAR_TRAIN]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, read_cifar_batch(paths["test_batch"])


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_aliases() -> dict[str, tuple[str, ...]]:
    # Distributions name them with .gz, without, or with a dot before idx (train-images.idx3-ubyte).
    out = {}
    for f in _IDX_FILES:
        dotted = f.replace("-idx", ".idx")
        out[f] = (f + ".gz", f, dotted + ".gz", dotted)
    return out


def _idx_remotes(urls: tuple[str, ...], sums: Mapping[str, tuple[int, str]]) -> tuple[Remote, ...]:
    return tuple(
        Remote(f + ".gz", tuple(u + f + ".gz" for u in urls), sha256=sums[f][1], size=sums[f][0])
        for f in _IDX_FILES
    )


# SHA-256 and sizes of the official files as listed by tensorflow-datasets
# (tensorflow_datasets/url_checksums/{mnist,fashion_mnist,svhn_cropped}.txt) and, for CIFAR-10,
# by Keras (keras/datasets/cifar10.py); the MNIST and Fashion-MNIST MD5s that torchvision lists
# (f68b3c2d..., 8d4fb7e6..., ...) belong to the same files.
_MNIST_SUMS = {
    "train-images-idx3-ubyte": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
_FASHION_SUMS = {
    "train-images-idx3-ubyte": (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    "train-labels-idx1-ubyte": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    "t10k-images-idx3-ubyte": (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    "t10k-labels-idx1-ubyte": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}
# SHA-256 of the decompressed official IDX files (the content of the .gz files above), as listed
# with the official .gz digests by several public MNIST/Fashion-MNIST loaders; they let a local copy
# that was re-compressed or unpacked pass. The MNIST train-images content has the MD5
# 6bbc9ace898e44ae57da46a324031adb.
_MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FASHION_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# MD5 of the extracted CIFAR-10 batches (python version), as torchvision lists them.
_CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

_DIGITS_INFO = DatasetInfo(
    "digits", 1, (8, 8), 10, mean=(0.3051,), std=(0.3752,)
)  # mean/std of the default training split (1167 images, values / 255)

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        info=_DIGITS_INFO,
        files=(),
        aliases={},
        subdirs=(),
        remotes=(),
        read=lambda paths: _load_digits(),
        default_val_size=270,
        homepage="scikit-learn's bundled copy of the UCI optical digits test set",
        title="digits",
    ),
    "mnist": DatasetSpec(
        info=DatasetInfo("mnist", 1, (28, 28), 10, mean=(0.1307,), std=(0.3081,)),
        files=_IDX_FILES,
        aliases=_idx_aliases(),
        subdirs=("mnist", "MNIST/raw", "MNIST"),
        remotes=_idx_remotes(_MNIST_URLS, _MNIST_SUMS),
        read=_read_idx_dataset,
        homepage="http://yann.lecun.com/exdb/mnist/ (mirror " + _MNIST_URLS[0] + ")",
        title="MNIST",
        content_sums={f: (h,) for f, h in _MNIST_CONTENT_SHA256.items()},
    ),
    "fashion-mnist": DatasetSpec(
        info=DatasetInfo("fashion-mnist", 1, (28, 28), 10, mean=(0.2860,), std=(0.3530,)),
        files=_IDX_FILES,
        aliases=_idx_aliases(),
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        remotes=_idx_remotes(_FASHION_URLS, _FASHION_SUMS),
        read=_read_idx_dataset,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        title="Fashion-MNIST",
        content_sums={f: (h,) for f, h in _FASHION_CONTENT_SHA256.items()},
    ),
    "svhn": DatasetSpec(
        info=DatasetInfo(
            "svhn", 3, (32, 32), 10, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970)
        ),
        files=("train_32x32.mat", "test_32x32.mat"),
        aliases={},
        subdirs=("svhn", "SVHN"),
        remotes=(
            Remote(
                "train_32x32.mat",
                (_SVHN_URL + "train_32x32.mat",),
                sha256="435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                size=182040794,
            ),
            Remote(
                "test_32x32.mat",
                (_SVHN_URL + "test_32x32.mat",),
                sha256="cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                size=64275384,
            ),
        ),
        read=_read_svhn,
        homepage="http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits)",
        title="SVHN",
    ),
    "cifar10": DatasetSpec(
        # ImageNet statistics, as the paper's CIFAR-10 code normalised with.
        info=DatasetInfo("cifar10", 3, (32, 32), 10, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        files=(*_CIFAR_TRAIN, "test_batch"),
        aliases={},
        subdirs=("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py", "cifar-10"),
        remotes=(
            Remote(
                "cifar-10-python.tar.gz",
                (_CIFAR_URL,),
                sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                size=170498071,
                members=tuple(f"cifar-10-batches-py/{f}" for f in (*_CIFAR_TRAIN, "test_batch")),
                extract_to="cifar-10-batches-py",
            ),
        ),
        read=_read_cifar10,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz, extracted)",
        title="CIFAR-10",
        content_sums={f: (h,) for f, h in _CIFAR_BATCH_MD5.items()},
    ),
}
"""Every data set :func:`load_splits` knows, by name."""


def _register_known_files() -> None:
    """Fill :data:`fpnets.data._verify.KNOWN_FILES` with every official digest of the registry."""
    for key, spec in DATASETS.items():
        for remote in spec.remotes:
            for digest in (remote.sha256, remote.md5):
                if digest:
                    KNOWN_FILES[digest] = KnownFile(key, spec.display_name, remote.filename)
        for name, digests in spec.content_sums.items():
            for digest in digests:
                KNOWN_FILES[digest] = KnownFile(key, spec.display_name, name)


_register_known_files()

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; an unknown name raises ValueError listing the valid ones."""
    key = name.lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` without loading any data."""
    return dataset_spec(name).info


# --------------------------------------------------------------------------------------------------
# digits (bundled with scikit-learn)
# --------------------------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 360
"""Images of the fixed digits test set (20% of 1797)."""
_DIGITS_SPLIT_SEED = 0
"""Seed of the fixed digits train/test permutation; a constant, never the ``seed`` argument."""


def _load_digits() -> tuple[Arrays, Arrays]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16) as uint8 0..255, split train/test.

    The test set is fixed: the first ``DIGITS_TEST_SIZE`` indices of a permutation with a constant
    seed. The rest plays the role of an official training set (validation is held out of it).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install fpnets[train]") from exc
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(labels.shape[0])
    test, train = np.sort(perm[:DIGITS_TEST_SIZE]), np.sort(perm[DIGITS_TEST_SIZE:])
    return (images[train], labels[train]), (images[test], labels[test])


# --------------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------------


def _search_dirs(spec: DatasetSpec, data_dir: Path | None) -> list[Path]:
    """``data_dir`` and its data-set subfolders, then the cache folder (and where archives extract to)."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [data_dir, *(data_dir / sub for sub in spec.subdirs)]
    cache = cache_root() / spec.info.name
    dirs += [cache, *(cache / r.extract_to for r in spec.remotes if r.extract_to)]
    return list(dict.fromkeys(dirs))


def _find_in(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    found = {}
    for f in spec.files:
        for candidate in spec.aliases.get(f, (f,)):
            if (folder / candidate).is_file():
                found[f] = folder / candidate
                break
        else:
            return None
    return found


def _find(spec: DatasetSpec, dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = _find_in(spec, d)
        if found is not None:
            return found
    return None


def _not_found_message(spec: DatasetSpec, dirs: list[Path], reason: str, cache: Path | None = None) -> str:
    """Which files to put where; ``cache``: the cache folder that was *not* searched (explicit data_dir)."""
    name = spec.info.name
    names = [spec.aliases.get(f, (f,))[0] for f in spec.files]
    lines = [
        f"{name}: data files not found ({reason}).",
        "Put these files into one folder"
        + (" (gzip-compressed or not)" if any(n.endswith(".gz") for n in names) else "")
        + ":",
        "    " + ", ".join(names),
        f"then pass that folder, or a folder holding it as {spec.subdirs[0]}/, as data_dir= "
        "(--data-dir on the command line), or set the environment variable FPNETS_DATA to it.",
        f"Files are published at {spec.homepage}.",
        "Folders searched: " + ", ".join(str(d) for d in dirs) + ".",
    ]
    for d in dirs:
        present = [f for f in spec.files if any((d / c).is_file() for c in spec.aliases.get(f, (f,)))]
        if present:
            lines.append(f"Found only {', '.join(present)} in {d}.")
            missing = [f for f in spec.files if f not in present]
            lines.append(f"Missing from {d}: {', '.join(missing)}.")
    if cache is not None:
        lines.append(
            f"The download cache {cache} is not used when data_dir is given: put the missing files "
            "into data_dir, or pass no data_dir to load from (and download into) the cache."
        )
    return "\n".join(lines)


def locate(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    download: bool | None,
    *,
    verify: bool = False,
) -> dict[str, Path]:
    """Paths of the files of ``spec``: found locally, or downloaded into the cache.

    ``data_dir`` given explicitly: the files must be there (or in its data-set subfolders); a
    missing file raises :class:`DatasetNotFoundError` naming it and the folder, never a silent
    fall-back to the cache. ``data_dir`` None: ``$FPNETS_DATA`` if set, then the cache.
    ``download``: False never downloads; None downloads into the cache only when the files are not
    found (and no data_dir was given); True ignores ``data_dir`` and uses the cache, downloading
    any file that is missing there or fails its checksum. ``verify``: check the files found against
    the official checksums (:func:`verify_files`).
    """
    explicit = data_dir is not None
    if data_dir is None and os.environ.get("FPNETS_DATA"):
        data_dir = os.environ["FPNETS_DATA"]
    root = None if data_dir is None else Path(data_dir).expanduser()
    cache = cache_root() / spec.info.name
    if download is True:
        dirs = _search_dirs(spec, None)
        _fetch_all(spec, cache, dirs, verify=True)
        found = _find(spec, dirs)
    elif explicit:
        assert root is not None
        dirs = [root, *(root / sub for sub in spec.subdirs)]
        found = _find(spec, dirs)
        if found is None:
            reason = "download=False" if download is False else f"not in data_dir {root}"
            raise DatasetNotFoundError(_not_found_message(spec, dirs, reason, cache=cache))
    else:
        dirs = _search_dirs(spec, root)
        found = _find(spec, dirs)
        if found is None:
            if download is False or not spec.remotes:
                raise DatasetNotFoundError(_not_found_message(spec, dirs, "download=False"))
            _fetch_all(spec, cache, dirs, verify=False)
            found = _find(spec, _search_dirs(spec, None))
    if found is None:  # pragma: no cover - a download that succeeded provides every file
        raise DataError(f"{spec.info.name}: downloaded into {cache}, but the expected files are not there")
    if verify:
        verify_files(spec, found)
    return found


def _expected_digests(spec: DatasetSpec, name: str, path: Path) -> frozenset[str] | None:
    """The official digests of file ``name`` of ``spec`` found at ``path``; None when ``path`` was
    extracted from an archive that was verified when it was downloaded."""
    accepted = set(spec.content_sums.get(name, ()))
    for remote in spec.remotes:
        digests = [d for d in (remote.sha256, remote.md5) if d]
        if remote.members:
            if path.name in {Path(m).name for m in remote.members} and archive_verified(path, digests):
                return None
        elif remote.filename in spec.aliases.get(name, (name,)):
            accepted.update(digests)
    return frozenset(accepted)


def verify_files(spec: DatasetSpec, paths: Mapping[str, Path]) -> None:
    """Check every file of ``spec`` against its official digests (see :mod:`fpnets.data._verify`).

    Raises:
        ChecksumError: listing each file that fails, saying which official file it is when its digest
            is known (another data set's, or a swapped file), and how to skip the check.
        DataError: a file named ``.gz`` is not gzip or is corrupt.
    """
    lines = []
    for name in spec.files:
        path = paths[name]
        expected = _expected_digests(spec, name, path)
        if not expected:  # extracted from a verified archive, or nothing known to check against
            continue
        digests = check_file(path, expected)
        if digests is not None:
            lines.append(mismatch_message(path, spec.info.name, spec.display_name, name, digests))
    if lines:
        cache = cache_root().expanduser().resolve()
        in_cache = any(cache in paths[n].resolve().parents for n in spec.files)
        raise_mismatches(lines, in_cache=in_cache)


def _fetch_all(spec: DatasetSpec, cache: Path, dirs: list[Path], *, verify: bool) -> None:
    try:
        for remote in spec.remotes:
            ensure(remote, cache, verify=verify)
    except DownloadError as exc:
        raise DatasetNotFoundError(
            _not_found_message(spec, dirs, f"and downloading them into {cache} failed: {exc}")
        ) from exc


# --------------------------------------------------------------------------------------------------
# load_splits
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"load_splits: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def hold_out(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted, from a permutation of range(n) seeded by ``seed``.

    The permutation is ``numpy.random.default_rng(seed).permutation(n)``; its first ``val_size``
    entries are the validation set.
    """
    if val_size >= n:
        raise ValueError(f"load_splits: val_size={val_size} must be smaller than the {n} training samples")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def load_splits(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    download: bool | None = None,
    verify: bool = True,
) -> Splits:
    """Load a data set into memory as train / validation / test splits.

    Args:
        name: "digits", "mnist", "fashion-mnist", "svhn" or "cifar10"; an unknown name raises
            ValueError listing the valid ones.
        data_dir: folder holding the files, or a folder holding them in a subfolder named after the
            data set (``mnist/``, ``fashion-mnist/``, ``svhn/``, ``cifar-10-batches-py/``, ...).
            Given explicitly, the files must be there: a missing file raises
            :class:`DatasetNotFoundError` naming it and the folder (the cache is not used). Default:
            ``$FPNETS_DATA``, then the download cache. Ignored for "digits", which ships with
            scikit-learn.
        val_size: samples held out of the official training set for validation (model selection
            happens on it, never on the test set). Default: 5000 (270 for digits). 0 gives an
            empty validation split.
        seed: seed of the train/validation permutation (:func:`hold_out`); the test set never
            depends on it.
        download: None (default) downloads the official files into the cache
            (``$FPNETS_CACHE``, else ``~/.cache/fpnets``) only when they are not found; False never
            downloads; True uses the cache only, downloading what is missing there or fails its
            checksum. Downloads are verified against their published SHA-256.
        verify: check every file against the official checksums (SHA-256 of the file, or of its
            decompressed content for a gzip file, so re-compressed and unpacked copies pass; MD5
            for the CIFAR-10 batches). A file of another data set is named as such. Digests are
            computed once per process per file (cached by path, size and modification time).
            False skips the check, for your own versions of the files.

    Returns:
        :class:`Splits` with uint8 (N, C, H, W) images and int64 labels. The test split is the
        official test set (for digits, a fixed 360-image subset).

    Raises:
        DatasetNotFoundError: the files are missing and could not be downloaded; the message says
            which files to put in which folder.
        ChecksumError: with ``verify``, a file is not the official one (a :class:`DataError`).
        DataError: a file is corrupt or truncated, or a download failed its checksum; the message
            names the file and what is wrong.
    """
    spec = dataset_spec(name)
    seed = _check_int("seed", seed, 0)
    val_size = spec.default_val_size if val_size is None else _check_int("val_size", val_size, 0)
    if spec.files:
        if not isinstance(verify, bool):
            raise TypeError(f"load_splits: verify must be True or False, got {verify!r}")
        paths = locate(spec, data_dir, download, verify=verify)
        files = tuple(paths[f] for f in spec.files)
    else:
        paths, files = {}, ()
    (train_x, train_y), (test_x, test_y) = spec.read(paths)
    train_idx, val_idx = hold_out(train_y.shape[0], val_size, seed)
    images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Splits(
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=Split(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        info=spec.info,
        files=files,
        seed=seed,
    )
