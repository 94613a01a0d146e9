"""Readers for the TNTP text format of the Transportation Networks collection.

A TNTP directory holds ``<name>_net.tntp`` (links), ``<name>_trips.tntp`` (origin–destination
demand), optionally ``<name>_node.tntp`` (node coordinates) and ``<name>_flow.tntp`` (best-known
equilibrium link flows). Files start with metadata lines ``<KEY> value`` closed by
``<END OF METADATA>``; ``~`` starts a comment; data lines may end with ``;``.

Every reader raises :class:`TNTPError` naming the file and line of malformed input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "NetFile",
    "TNTPError",
    "TripsFile",
    "find_file",
    "read_flow",
    "read_net",
    "read_node",
    "read_trips",
]


class TNTPError(ValueError):
    """Malformed or inconsistent TNTP input; the message names the file and, where known, the line."""


_META = re.compile(r"^\s*<([^>]+)>\s*(.*?)\s*$")
_TRIP_ENTRY = re.compile(r"^\s*(\S+)\s*:\s*([^;\s]+)\s*$")


def _strip(line: str) -> str:
    """A line without its ``~`` comment and surrounding blanks."""
    return line.split("~", 1)[0].strip()


def _read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise TNTPError(f"{path}: cannot read the file ({exc})") from exc


def _split_metadata(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    """(metadata, index of the first line after it). Files without metadata start at line 0."""
    meta: dict[str, str] = {}
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        m = _META.match(line)
        if m is None:
            if meta:
                raise TNTPError(
                    f"{path}, line {i + 1}: expected a metadata line '<KEY> value' or <END OF METADATA>, "
                    f"got {raw.strip()!r}"
                )
            return meta, i
        key = m.group(1).strip().upper()
        if key == "END OF METADATA":
            return meta, i + 1
        meta[key] = m.group(2)
    if meta:
        raise TNTPError(f"{path}: metadata is not closed by <END OF METADATA>")
    return meta, len(lines)


def _meta_int(path: Path, meta: dict[str, str], key: str) -> int | None:
    if key not in meta:
        return None
    try:
        return int(float(meta[key]))
    except ValueError:
        raise TNTPError(f"{path}: metadata <{key}> must be a number, got {meta[key]!r}") from None


def _number(path: Path, lineno: int, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise TNTPError(f"{path}, line {lineno}: {what} must be a number, got {token!r}") from None
    if not math.isfinite(value):
        raise TNTPError(f"{path}, line {lineno}: {what} must be finite, got {token!r}")
    return value


def _node_id(path: Path, lineno: int, token: str, what: str) -> int:
    value = _number(path, lineno, token, what)
    if value != int(value) or value < 1:
        raise TNTPError(
            f"{path}, line {lineno}: {what} must be a positive integer node number, got {token!r}"
        )
    return int(value)


@dataclass(frozen=True)
class NetFile:
    """The content of a ``*_net.tntp`` file (node numbers 1-based, as in the file).

    Attributes:
        tail, head: (E,) int64 init and term node of each link.
        capacity: (E,) c₀, link capacity.
        length: (E,) link length.
        free_flow_time: (E,) t₀, free-flow travel time.
        b, power: (E,) B and p of the BPR cost t(v) = t₀ (1 + B (v / c)^p).
        toll, link_type: (E,) as in the file (not used by the costs).
        num_nodes, num_zones, first_thru_node: from the metadata (num_nodes falls back to the
            largest node number, num_zones to num_nodes, first_thru_node to 1).
        metadata: all metadata lines, keys upper-case.
    """

    path: Path
    tail: np.ndarray
    head: np.ndarray
    capacity: np.ndarray
    length: np.ndarray
    free_flow_time: np.ndarray
    b: np.ndarray
    power: np.ndarray
    toll: np.ndarray
    link_type: np.ndarray
    num_nodes: int
    num_zones: int
    first_thru_node: int
    metadata: dict[str, str] = field(default_factory=dict)


def read_net(path: str | Path) -> NetFile:
    """Read a ``*_net.tntp`` link file.

    Columns: init node, term node, capacity, length, free-flow time, B, power, then optionally
    speed, toll, link type. Raises :class:`TNTPError` on malformed lines, negative or zero
    capacity, negative free-flow time, B or power, and counts that disagree with the metadata.
    """
    path = Path(path)
    lines = _read_lines(path)
    meta, start = _split_metadata(path, lines)
    rows: list[tuple[float, ...]] = []
    for i in range(start, len(lines)):
        line = _strip(lines[i]).rstrip(";").strip()
        if not line:
            continue
        tokens = line.replace(";", " ").split()
        lineno = i + 1
        if len(tokens) < 7:
            raise TNTPError(
                f"{path}, line {lineno}: a link line needs at least 7 columns (init node, term node, "
                f"capacity, length, free-flow time, B, power), got {len(tokens)}: {lines[i].strip()!r}"
            )
        tail = _node_id(path, lineno, tokens[0], "init node")
        head = _node_id(path, lineno, tokens[1], "term node")
        names = ("capacity", "length", "free-flow time", "B", "power", "speed", "toll", "link type")
        values = [_number(path, lineno, tok, name) for tok, name in zip(tokens[2:10], names, strict=False)]
        values += [0.0] * (8 - len(values))
        cap, _length, fft, b, power = values[:5]
        if cap <= 0:
            raise TNTPError(f"{path}, line {lineno}: capacity must be positive, got {cap!r}")
        if fft < 0 or b < 0 or power < 0:
            raise TNTPError(
                f"{path}, line {lineno}: free-flow time, B and power must be >= 0, got {fft!r}, {b!r}, {power!r}"
            )
        if tail == head:
            raise TNTPError(f"{path}, line {lineno}: link {tail} -> {head} is a loop")
        rows.append((tail, head, *values))
    if not rows:
        raise TNTPError(f"{path}: no link lines found")
    arr = np.asarray(rows, dtype=np.float64)  # (E, 10)
    tail = arr[:, 0].astype(np.int64)
    head = arr[:, 1].astype(np.int64)
    max_node = int(max(tail.max(), head.max()))
    num_nodes = _meta_int(path, meta, "NUMBER OF NODES")
    num_links = _meta_int(path, meta, "NUMBER OF LINKS")
    if num_links is not None and num_links != len(rows):
        raise TNTPError(f"{path}: metadata says {num_links} links, the file lists {len(rows)}")
    if num_nodes is None:
        num_nodes = max_node
    elif max_node > num_nodes:
        raise TNTPError(f"{path}: a link uses node {max_node} but metadata says {num_nodes} nodes")
    num_zones = _meta_int(path, meta, "NUMBER OF ZONES")
    num_zones = num_nodes if num_zones is None else num_zones
    if not 0 < num_zones <= num_nodes:
        raise TNTPError(f"{path}: <NUMBER OF ZONES> {num_zones} must lie in [1, {num_nodes}]")
    first_thru = _meta_int(path, meta, "FIRST THRU NODE")
    first_thru = 1 if first_thru is None else first_thru
    if first_thru < 1:
        raise TNTPError(f"{path}: <FIRST THRU NODE> must be >= 1, got {first_thru}")
    return NetFile(
        path=path,
        tail=tail,
        head=head,
        capacity=arr[:, 2].copy(),
        length=arr[:, 3].copy(),
        free_flow_time=arr[:, 4].copy(),
        b=arr[:, 5].copy(),
        power=arr[:, 6].copy(),
        toll=arr[:, 8].copy(),
        link_type=arr[:, 9].copy(),
        num_nodes=num_nodes,
        num_zones=num_zones,
        first_thru_node=first_thru,
        metadata=meta,
    )


@dataclass(frozen=True)
class TripsFile:
    """The content of a ``*_trips.tntp`` file.

    Attributes:
        demand: (Z, Z) float64 q, q[o, d] = trips from zone o + 1 to zone d + 1.
        total: the metadata <TOTAL OD FLOW>, or None.
    """

    path: Path
    demand: np.ndarray
    total: float | None
    metadata: dict[str, str] = field(default_factory=dict)


def read_trips(
    path: str | Path, num_zones: int | None = None, *, total_rtol: float = 1e-6, total: str = "error"
) -> TripsFile:
    """Read a ``*_trips.tntp`` demand file (``Origin o`` blocks of ``d : q;`` entries).

    Args:
        num_zones: Z; default: the metadata <NUMBER OF ZONES> (required then).
        total_rtol: relative tolerance for the metadata <TOTAL OD FLOW> against the sum of entries.
        total: what a mismatch does: "error" (raise :class:`TNTPError`), "warn" (a UserWarning)
            or "ignore".

    Raises :class:`TNTPError` on malformed entries, zones out of range, duplicated entries and
    negative demand.
    """
    import warnings

    if total not in ("error", "warn", "ignore"):
        raise ValueError(f"read_trips: total must be 'error', 'warn' or 'ignore', got {total!r}")
    path = Path(path)
    lines = _read_lines(path)
    meta, start = _split_metadata(path, lines)
    z_meta = _meta_int(path, meta, "NUMBER OF ZONES")
    zones = num_zones if num_zones is not None else z_meta
    if zones is None:
        raise TNTPError(f"{path}: no <NUMBER OF ZONES> metadata; pass num_zones")
    if z_meta is not None and num_zones is not None and z_meta != num_zones:
        raise TNTPError(f"{path}: metadata says {z_meta} zones, the network has {num_zones}")
    demand = np.zeros((zones, zones), dtype=np.float64)
    seen = np.zeros((zones, zones), dtype=bool)
    origin: int | None = None
    for i in range(start, len(lines)):
        line = _strip(lines[i])
        if not line:
            continue
        lineno = i + 1
        if line.lower().startswith("origin"):
            parts = line.split()
            if len(parts) != 2:
                raise TNTPError(f"{path}, line {lineno}: expected 'Origin <zone>', got {lines[i].strip()!r}")
            origin = _node_id(path, lineno, parts[1], "origin zone")
            if origin > zones:
                raise TNTPError(f"{path}, line {lineno}: origin zone {origin} exceeds the {zones} zones")
            continue
        if origin is None:
            raise TNTPError(f"{path}, line {lineno}: demand entries before the first 'Origin' line")
        for entry in line.split(";"):
            if not entry.strip():
                continue
            m = _TRIP_ENTRY.match(entry)
            if m is None:
                raise TNTPError(
                    f"{path}, line {lineno}: expected entries 'zone : demand;', got {entry.strip()!r}"
                )
            dest = _node_id(path, lineno, m.group(1), "destination zone")
            q = _number(path, lineno, m.group(2), "demand")
            if dest > zones:
                raise TNTPError(f"{path}, line {lineno}: destination zone {dest} exceeds the {zones} zones")
            if q < 0:
                raise TNTPError(f"{path}, line {lineno}: negative demand {q!r} from zone {origin} to {dest}")
            if seen[origin - 1, dest - 1]:
                raise TNTPError(f"{path}, line {lineno}: demand from zone {origin} to {dest} given twice")
            seen[origin - 1, dest - 1] = True
            demand[origin - 1, dest - 1] = q
    declared: float | None = None
    if "TOTAL OD FLOW" in meta:
        try:
            declared = float(meta["TOTAL OD FLOW"])
        except ValueError:
            raise TNTPError(
                f"{path}: <TOTAL OD FLOW> must be a number, got {meta['TOTAL OD FLOW']!r}"
            ) from None
        found = float(demand.sum())
        if abs(found - declared) > total_rtol * max(abs(declared), 1.0) and total != "ignore":
            msg = (
                f"{path}: <TOTAL OD FLOW> says {declared:g} but the entries sum to {found:g} "
                f"(relative difference {abs(found - declared) / max(abs(declared), 1.0):.2e}); fix the file, "
                "or read it with total='warn'"
            )
            if total == "error":
                raise TNTPError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    return TripsFile(path=path, demand=demand, total=declared, metadata=meta)


def _table(path: Path, min_cols: int, what: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the data lines of a headed table (the first non-numeric line is its header)."""
    lines = _read_lines(path)
    _, start = _split_metadata(path, lines)
    rows = []
    for i in range(start, len(lines)):
        line = _strip(lines[i]).replace(";", " ").strip()
        if not line:
            continue
        tokens = line.split()
        try:
            float(tokens[0])
        except ValueError:
            if not rows:
                continue  # the header line
            raise TNTPError(f"{path}, line {i + 1}: expected {what}, got {lines[i].strip()!r}") from None
        if len(tokens) < min_cols:
            raise TNTPError(
                f"{path}, line {i + 1}: expected {what} ({min_cols} columns), got {lines[i].strip()!r}"
            )
        rows.append((i + 1, tokens))
    if not rows:
        raise TNTPError(f"{path}: no data lines found")
    return rows


def read_node(path: str | Path, num_nodes: int) -> np.ndarray:
    """(n, 2) float64 node coordinates (x, y) from a ``*_node.tntp`` file; NaN for unlisted nodes."""
    path = Path(path)
    xy = np.full((num_nodes, 2), np.nan)
    for lineno, tok in _table(path, 3, "'node x y'"):
        node = _node_id(path, lineno, tok[0], "node")
        if node > num_nodes:
            raise TNTPError(f"{path}, line {lineno}: node {node} exceeds the network's {num_nodes} nodes")
        xy[node - 1] = (_number(path, lineno, tok[1], "x"), _number(path, lineno, tok[2], "y"))
    return xy


def read_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tail, head, volume, cost) from a ``*_flow.tntp`` best-known flow file (nodes 1-based)."""
    path = Path(path)
    rows = _table(path, 3, "'from to volume [cost]'")
    tail = np.array([_node_id(path, n, t[0], "from node") for n, t in rows], dtype=np.int64)
    head = np.array([_node_id(path, n, t[1], "to node") for n, t in rows], dtype=np.int64)
    vol = np.array([_number(path, n, t[2], "volume") for n, t in rows])
    cost = np.array([_number(path, n, t[3], "cost") if len(t) > 3 else np.nan for n, t in rows])
    return tail, head, vol, cost


def find_file(directory: str | Path, kind: str, *, required: bool = True) -> Path | None:
    """The one ``*_<kind>.tntp`` file in ``directory`` (kind: net, trips, node, flow)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such network directory")
    found = sorted(p for p in directory.iterdir() if p.name.lower().endswith(f"_{kind}.tntp"))
    if len(found) > 1:
        raise TNTPError(f"{directory}: several *_{kind}.tntp files: {', '.join(p.name for p in found)}")
    if not found:
        if required:
            raise FileNotFoundError(f"{directory}: no *_{kind}.tntp file")
        return None
    return found[0]
