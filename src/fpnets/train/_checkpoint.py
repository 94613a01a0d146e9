"""Checkpoints without pickle: safetensors for tensors, JSON for the rest, written atomically.

Layout of ``<run>/checkpoints``::

    ckpt-0003-00000036.model.safetensors   model state_dict
    ckpt-0003-00000036.state.safetensors   optimizer tensors and torch RNG states
    last.json                              manifest of the latest checkpoint
    best.json                              manifest of the best-validation checkpoint

A manifest names its tensor files with their SHA-256 and holds everything else (config, epoch,
optimizer hyper-parameters, scheduler state, numpy/python RNG states, metrics history). Tensor files
get fresh names for every save and are complete (temp file, fsync, rename) before the manifest that
names them is renamed into place, so a crash at any moment leaves the previous manifest and its
files intact. Files no manifest names any more are deleted after the manifests are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "fpnets-checkpoint/1"
MANIFESTS = ("last", "best")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or of another format."""


class WriteError(OSError):
    """A run file that could not be written (disk full, read-only file system, no permission).

    What was written before stays consistent: the run can be resumed once the cause is fixed.
    """


# ---------------------------------------------------------------------------------------------
# atomic file writing


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(final: Path) -> Path:
    """A new empty file next to ``final``, created with the usual permissions (umask applies,
    unlike ``tempfile.mkstemp``'s 0600)."""
    for _ in range(100):
        path = final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"cannot create a temporary file next to {final}")  # pragma: no cover


def _publish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_error(final: Path, exc: OSError) -> WriteError:
    err = WriteError(
        exc.errno,
        f"cannot write {str(final)!r}: {exc.strerror or exc}; the files written before are intact, "
        "so the run can be resumed (fpnets train --resume RUN) once this is fixed",
    )
    err.filename = str(final)
    return err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temp file in the same directory and a rename.

    An OSError (no space, read-only file system, permissions) becomes a :class:`WriteError`
    naming the file; ``path`` keeps its previous content.
    """
    final = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temp_path(final)
        tmp.write_bytes(data)
        _publish(tmp, final)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        raise _write_error(final, exc) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_file(tensors: dict[str, torch.Tensor], path: str) -> None:
    """``safetensors.torch.save_file`` (imported on first use: safetensors is an optional extra)."""
    from safetensors.torch import save_file as _save

    _save(tensors, path)


def atomic_save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """``safetensors.torch.save_file`` made atomic (temp file, fsync, rename)."""
    final = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temp_path(final)
        mode = tmp.stat().st_mode & 0o777  # what the umask allows; save_file would leave 0600
        save_file(dict(tensors), str(tmp))
        os.chmod(tmp, mode)
        _publish(tmp, final)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise _write_error(final, exc) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# state conversion


def tensors_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def split_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(state["param_groups"]), "state": plain}


def join_optimizer_state(
    tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any], template: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`; ``template`` (the live optimizer's state_dict)
    restores tuples (e.g. Adam's betas) that JSON turned into lists."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in plain["state"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = []
    for i, group in enumerate(plain["param_groups"]):
        live = template["param_groups"][i] if i < len(template["param_groups"]) else {}
        groups.append(
            {
                k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v
                for k, v in group.items()
            }
        )
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The RNG states of torch (CPU and CUDA), numpy and python as (tensors, JSON-able rest)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    plain = {
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": {"version": version, "state": list(pystate), "gauss": gauss},
    }
    return tensors, plain


def set_rng_state(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where the devices exist)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in plain:
        s = plain["numpy"]
        np.random.set_state(
            (s["kind"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached"])
        )
    if "python" in plain:
        s = plain["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss"]))


# ---------------------------------------------------------------------------------------------
# saving and loading


@dataclass
class Checkpoint:
    """A loaded checkpoint: model weights, the other tensors, and the manifest."""

    model: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])


def require_safetensors() -> None:
    """Raise ModuleNotFoundError now, rather than after an epoch, when safetensors is missing."""
    import safetensors  # noqa: F401


def save_checkpoint(
    directory: str | Path,
    *,
    model: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    tags: tuple[str, ...] = ("last",),
) -> Path:
    """Write a checkpoint and point the manifests ``tags`` (``last``, ``best``) at it.

    ``meta`` must hold ``epoch`` and ``step`` (ints) and be JSON-serialisable. Returns the path of
    the first manifest written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bad = [t for t in tags if t not in MANIFESTS]
    if bad or not tags:
        raise ValueError(f"checkpoint tags must be among {', '.join(MANIFESTS)}, got {tags!r}")
    stem = f"ckpt-{int(meta['epoch']):04d}-{int(meta['step']):08d}"
    files = {"model": f"{stem}.model.safetensors", "state": f"{stem}.state.safetensors"}
    atomic_save_tensors(directory / files["model"], tensors_for_saving(model))
    atomic_save_tensors(directory / files["state"], tensors_for_saving(tensors))
    manifest = {
        "format": FORMAT,
        **_jsonable(dict(meta)),
        "files": {
            role: {
                "name": name,
                "sha256": _sha256(directory / name),
                "bytes": (directory / name).stat().st_size,
            }
            for role, name in files.items()
        },
    }
    text = json.dumps(manifest, indent=1, allow_nan=True) + "\n"
    for tag in tags:
        atomic_write_text(directory / f"{tag}.json", text)
    _collect_garbage(directory)
    return directory / f"{tags[0]}.json"


def repoint_manifest(source: Path, tag: str) -> None:
    """Make manifest ``tag`` in ``source``'s directory name the same checkpoint as ``source``
    (atomically; nothing is written when it already does)."""
    text = Path(source).read_text("utf-8")
    target = Path(source).parent / f"{tag}.json"
    try:
        if target.read_text("utf-8") == text:
            return
    except OSError:
        pass
    atomic_write_text(target, text)
    _collect_garbage(target.parent)


def _referenced(directory: Path) -> set[str]:
    names: set[str] = set()
    for tag in MANIFESTS:
        path = directory / f"{tag}.json"
        try:
            manifest = json.loads(path.read_text("utf-8"))
            names.update(entry["name"] for entry in manifest["files"].values())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {"*"}  # an unreadable manifest: delete nothing
    return names


def _collect_garbage(directory: Path) -> None:
    keep = _referenced(directory)
    if "*" in keep:
        return
    for path in directory.glob("ckpt-*.safetensors"):
        if path.name not in keep:
            with contextlib.suppress(OSError):
                path.unlink()
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


def manifest_path(path: str | Path, tag: str = "best") -> Path:
    """The manifest for a run directory, a checkpoints directory or a manifest/tensor file path."""
    path = Path(path)
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            path = path / "checkpoints"
        candidate = path / f"{tag}.json"
        if not candidate.is_file():
            if tag == "best" and (path / "last.json").is_file():
                raise CheckpointError(
                    f"{str(path)!r} has a last.json but no best.json: the best checkpoint is missing "
                    "(give checkpoints/last.json to use the last weights instead)"
                )
            raise CheckpointError(f"no checkpoint in {str(path)!r} (expected {tag}.json)")
        return candidate
    if path.suffix == ".json":
        if not path.is_file():
            raise CheckpointError(f"checkpoint manifest {str(path)!r} does not exist")
        return path
    if path.name.endswith(".safetensors"):
        for tag_name in MANIFESTS:
            manifest = path.parent / f"{tag_name}.json"
            with contextlib.suppress(OSError, ValueError):
                files = json.loads(manifest.read_text("utf-8")).get("files", {})
                if any(entry.get("name") == path.name for entry in files.values()):
                    return manifest
        raise CheckpointError(f"no manifest in {str(path.parent)!r} names {path.name!r}")
    raise CheckpointError(f"{str(path)!r} is not a run directory, a checkpoint manifest or a checkpoint file")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an fpnets checkpoint (format {FORMAT})")
    for key, kind in (("epoch", int), ("step", int), ("files", dict)):
        value = manifest.get(key)
        if value is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {key!r} entry (hand-edited or truncated?)"
            )
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {key!r} must be {'an integer' if kind is int else 'a table'}, "
                f"got {json.dumps(value)[:60]}"
            )
    if manifest["epoch"] < 0 or manifest["step"] < 0:
        raise CheckpointError(f"checkpoint {str(path)!r}: negative epoch or step")
    return manifest


def load_checkpoint(path: str | Path, tag: str = "best", *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint from a run directory, checkpoints directory or manifest (``tag`` picks
    ``best`` or ``last`` for directories). ``verify`` checks the tensor files' SHA-256.

    A run that is still training may replace the manifest and delete the files it named between
    our reading the manifest and the files: each tensor file is read once into memory (so the
    checksum and the tensors come from the same bytes), and a file that vanished because the
    manifest moved on is retried with the new manifest.
    """
    mpath = manifest_path(path, tag)
    for _ in range(_LIVE_RETRIES):
        text = _manifest_text(mpath)
        meta = read_manifest(mpath)
        try:
            loaded = {role: _load_tensor_file(mpath, meta, role, verify) for role in ("model", "state")}
        except _Vanished as exc:
            if _manifest_text(mpath) != text:
                continue  # a concurrent save replaced the manifest: read the new one
            raise CheckpointError(f"checkpoint {str(mpath)!r} is incomplete: {exc.name} is missing") from None
        break
    else:
        raise CheckpointError(
            f"checkpoint {str(mpath)!r} changed {_LIVE_RETRIES} times while it was being read "
            "(a run is saving into it): try again, or copy the run folder first"
        )
    bad = [
        k for k, v in loaded["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {str(mpath)!r} holds NaN or Inf weights ({', '.join(bad[:3])}"
            + (", ..." if len(bad) > 3 else "")
            + "): the run diverged before it was saved, or the file was altered"
        )
    return Checkpoint(model=loaded["model"], tensors=loaded["state"], meta=meta, path=mpath)


_LIVE_RETRIES = 20


class _Vanished(Exception):
    """A tensor file the manifest names does not exist (``args[0]`` is its name)."""

    @property
    def name(self) -> str:
        return str(self.args[0])


def _manifest_text(mpath: Path) -> str | None:
    try:
        return mpath.read_text("utf-8")
    except OSError:
        return None


def _load_tensor_file(
    mpath: Path, meta: Mapping[str, Any], role: str, verify: bool
) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        entry = meta["files"][role]
        fpath = mpath.parent / entry["name"]
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint {str(mpath)!r} names no {role} file") from None
    try:
        data = fpath.read_bytes()
    except FileNotFoundError:
        raise _Vanished(entry["name"]) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file {str(fpath)!r}: {exc.strerror or exc}") from None
    if verify and hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"checkpoint file {str(fpath)!r} is corrupted (SHA-256 mismatch)")
    try:
        return load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint file {str(fpath)!r}: {exc}") from None


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "WriteError",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_text",
    "join_optimizer_state",
    "load_checkpoint",
    "manifest_path",
    "read_manifest",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "split_optimizer_state",
]
