"""2-D parallel-beam CT: the Radon transform A as a sparse matrix, its adjoint, FBP, and the relaxed
projection step P_d onto measurement-consistent images in the box [0, 1].

Geometry (:class:`ParallelBeamGeometry`): an N × N pixel grid on the square [−w/2, w/2]² (w =
``width``, pixel size h = w/N), ``n_angles`` directions θ_k = k π / n_angles, k = 0 … n_angles − 1,
and ``n_detectors`` detector centres s_j = (j − (n_detectors − 1)/2) · Δs. Ray (k, j) is the line
{x : x · (cos θ_k, sin θ_k) = s_j}. Image layout: ``u[..., i, j]`` is the pixel whose centre is
(x_j, y_i) = (−w/2 + (j + ½) h, −w/2 + (i + ½) h), so the row index i runs along y (display with
``origin="lower"``); a sinogram is ``(..., n_angles, n_detectors)``.

System matrix: a_{r,p} = length of the intersection of ray r with pixel p (Siddon-style exact
line-intersection lengths, one ray per detector centre, no strip integration), so (A u)_r is the
line integral of the piecewise-constant image u along ray r, in units of ``width``. A ray that runs
exactly along a pixel edge (θ = 0 or π/2 with s_j on a grid line) gives half of its length to each
of the two pixels it separates. The matrix is built vectorised in numpy (the 128 × 128, 30-angle,
183-detector geometry in well under a second) and cached in memory per geometry.

Relaxed projection (:class:`RelaxedProjection`), with R_i = Σ_p a_{ip} (row sums), C_p = Σ_i a_{ip}
(column sums) and W = diag(1/R_i):

    P_d(v) = Π_[0,1](v − λ S Aᵀ W (A v − d)).

Schur test: for a nonnegative matrix, ‖W^½ A diag(C)^−½‖₂ ≤ 1, hence ‖Aᵀ W A‖₂ ≤ max_p C_p. With
the default ("landweber") scaling S = s I, s = 1/max_p C_p and λ ∈ (0, 2], the linear part
I − λ s AᵀWA is symmetric with eigenvalues in [1 − λ, 1], so v ↦ v − λ s AᵀW(Av − d) is
nonexpansive in the Euclidean norm (averaged for λ < 2), and so is its composition with the box
projection Π_[0,1] (a Euclidean projection onto a convex set). The "sart" scaling S = diag(1/C_p)
gives the SART/SIRT step, nonexpansive in the norm ‖x‖²_{C} = Σ_p C_p x_p² (not in general in the
Euclidean norm); the clamp is also the projection onto the box in that weighted norm.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PAPER_GEOMETRY",
    "SMALL_GEOMETRY",
    "ParallelBeamGeometry",
    "RadonTransform",
    "RelaxedProjection",
    "geometry_preset",
    "system_matrix",
]

_SNAP = 1e-12  # |cos θ|, |sin θ| below this are exactly 0 (rays parallel to an axis)
_ON_LINE = 1e-9  # a coordinate within this many pixels of a grid line lies on it


@dataclass(frozen=True)
class ParallelBeamGeometry:
    """A 2-D parallel-beam scan of an N × N image.

    Attributes:
        n: N, pixels per side.
        n_angles: number of projection angles θ_k = k π / n_angles over [0, π).
        n_detectors: detector pixels per angle, centred on the rotation axis.
        width: w, side of the imaged square [−w/2, w/2]² (physical units; line integrals are in
            these units).
        detector_spacing: Δs, distance between detector centres; None means the pixel size w/N.
    """

    n: int = 128
    n_angles: int = 30
    n_detectors: int = 183
    width: float = 2.0
    detector_spacing: float | None = None

    def __post_init__(self) -> None:
        for key in ("n", "n_angles", "n_detectors"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelBeamGeometry: {key} must be a positive integer, got {value!r}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"ParallelBeamGeometry: width must be a finite number > 0, got {self.width!r}")
        ds = self.detector_spacing
        if ds is not None and not (isinstance(ds, (int, float)) and math.isfinite(ds) and ds > 0):
            raise ValueError(
                f"ParallelBeamGeometry: detector_spacing must be a finite number > 0 or None, got {ds!r}"
            )

    @property
    def pixel_size(self) -> float:
        """h = w / N."""
        return self.width / self.n

    @property
    def spacing(self) -> float:
        """Δs, the detector spacing in force."""
        return self.pixel_size if self.detector_spacing is None else float(self.detector_spacing)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(N, N)."""
        return (self.n, self.n)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """(n_angles, n_detectors)."""
        return (self.n_angles, self.n_detectors)

    def angles(self) -> np.ndarray:
        """θ_k = k π / n_angles, (n_angles,) float64."""
        return np.arange(self.n_angles, dtype=np.float64) * (np.pi / self.n_angles)

    def detector_positions(self) -> np.ndarray:
        """s_j = (j − (n_detectors − 1)/2) Δs, (n_detectors,) float64."""
        return (np.arange(self.n_detectors, dtype=np.float64) - (self.n_detectors - 1) / 2) * self.spacing

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y), each (N, N): X[i, j] = x_j, Y[i, j] = y_i."""
        c = -self.width / 2 + (np.arange(self.n) + 0.5) * self.pixel_size
        return np.meshgrid(c, c, indexing="xy")

    def covers_image(self) -> bool:
        """True when the detector row spans the image's diagonal (every pixel is seen at every angle)."""
        return self.n_detectors * self.spacing >= self.width * math.sqrt(2)

    def describe(self) -> dict[str, float | int]:
        """Plain-data description (for cache metadata)."""
        return {
            "n": self.n,
            "n_angles": self.n_angles,
            "n_detectors": self.n_detectors,
            "width": float(self.width),
            "detector_spacing": self.spacing,
        }


PAPER_GEOMETRY = ParallelBeamGeometry(n=128, n_angles=30, n_detectors=183)
"""The F-FPN paper's ellipse geometry: 128 × 128, 30 angles, 183 detectors (183 ≥ 128·√2 = 181.0,
spacing one pixel)."""

SMALL_GEOMETRY = ParallelBeamGeometry(n=64, n_angles=30, n_detectors=91)
"""The CPU-sized counterpart: 64 × 64, 30 angles, 91 detectors (the smallest odd count ≥ 64·√2 =
90.5 at one-pixel spacing, so a detector sits on the rotation axis, as in the 128 geometry)."""

_PRESETS = {"paper": PAPER_GEOMETRY, "128": PAPER_GEOMETRY, "small": SMALL_GEOMETRY, "64": SMALL_GEOMETRY}


def geometry_preset(name: str | int) -> ParallelBeamGeometry:
    """The named geometry: "paper" / "128" (:data:`PAPER_GEOMETRY`) or "small" / "64"
    (:data:`SMALL_GEOMETRY`)."""
    key = str(name)
    if key not in _PRESETS:
        raise ValueError(f"unknown CT geometry {name!r}; valid names: {', '.join(_PRESETS)}")
    return _PRESETS[key]


# ----------------------------------------------------------------------------------------------
# The system matrix


def _trace_rays(geom: ParallelBeamGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO triplets (row, column, length) of A; rows r = k · n_detectors + j, columns p = i · N + j."""
    n, h, half = geom.n, geom.pixel_size, geom.width / 2
    theta = geom.angles()
    cos, sin = np.cos(theta), np.sin(theta)
    cos[np.abs(cos) < _SNAP] = 0.0
    sin[np.abs(sin) < _SNAP] = 0.0
    s = geom.detector_positions()
    # ray (k, j): p(t) = s_j (cos θ_k, sin θ_k) + t (−sin θ_k, cos θ_k)
    p0x = s[None, :] * cos[:, None]  # (K, D)
    p0y = s[None, :] * sin[:, None]  # (K, D)
    dx = np.broadcast_to(-sin[:, None], p0x.shape)  # (K, D)
    dy = np.broadcast_to(cos[:, None], p0y.shape)  # (K, D)
    lines = -half + h * np.arange(n + 1, dtype=np.float64)  # (N+1,) grid lines
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = (lines - p0x[..., None]) / dx[..., None]  # (K, D, N+1) crossings of x = const
        ty = (lines - p0y[..., None]) / dy[..., None]  # (K, D, N+1) crossings of y = const
    tx[np.broadcast_to(dx[..., None] == 0, tx.shape)] = np.inf
    ty[np.broadcast_to(dy[..., None] == 0, ty.shape)] = np.inf
    t = np.sort(np.concatenate([tx, ty], axis=-1), axis=-1)  # (K, D, 2N+2)
    with np.errstate(invalid="ignore"):
        length = np.diff(t, axis=-1)  # (K, D, 2N+1) segment lengths (the direction is a unit vector)
        mid = 0.5 * (t[..., 1:] + t[..., :-1])
    keep = np.isfinite(length) & (length > 1e-12 * h)
    rays, segs = np.nonzero(keep.reshape(-1, keep.shape[-1]))
    length = length.reshape(-1, length.shape[-1])[rays, segs]
    mid = mid.reshape(-1, mid.shape[-1])[rays, segs]
    ux = (p0x.reshape(-1)[rays] + mid * dx.reshape(-1)[rays] + half) / h  # position in pixels
    uy = (p0y.reshape(-1)[rays] + mid * dy.reshape(-1)[rays] + half) / h

    def cells(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a midpoint on a grid line (only possible for a coordinate that is constant along the ray)
        # belongs half to each side
        r = np.round(u)
        on = np.abs(u - r) < _ON_LINE
        lo = np.where(on, r - 1, np.floor(u)).astype(np.int64)
        hi = np.where(on, r, np.floor(u)).astype(np.int64)
        return lo, hi

    x_lo, x_hi = cells(ux)
    y_lo, y_hi = cells(uy)
    rows = np.concatenate([rays, rays])
    ix = np.concatenate([x_lo, x_hi])
    iy = np.concatenate([y_lo, y_hi])
    vals = np.concatenate([0.5 * length, 0.5 * length])
    inside = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    return rows[inside], (iy * n + ix)[inside], vals[inside]


@contextlib.contextmanager
def _quiet_csr() -> Iterator[None]:
    """Silence torch's one-time "sparse CSR support is in beta" notice (not a fault of the caller)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


_CACHE: dict[ParallelBeamGeometry, tuple[Tensor, Tensor]] = {}
_CACHE_LOCK = threading.Lock()


def system_matrix(geom: ParallelBeamGeometry) -> tuple[Tensor, Tensor]:
    """(A, Aᵀ) as float64 CPU sparse CSR tensors, A: (n_angles · n_detectors, N²), cached per geometry.

    Entry a_{r,p} is the length of ray r inside pixel p (module docstring).
    """
    with _CACHE_LOCK:
        hit = _CACHE.get(geom)
    if hit is not None:
        return hit
    rows, cols, vals = _trace_rays(geom)
    m, n_pix = geom.n_angles * geom.n_detectors, geom.n * geom.n
    idx = torch.from_numpy(np.stack([rows, cols]))
    coo = torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (m, n_pix), check_invariants=True).coalesce()
    with _quiet_csr():
        a = coo.to_sparse_csr()
        at = coo.t().coalesce().to_sparse_csr()
    with _CACHE_LOCK:
        _CACHE[geom] = (a, at)
    return a, at


# ----------------------------------------------------------------------------------------------
# The operator


class _Apply(torch.autograd.Function):
    """y = M x for a sparse M on batch rows x: (B, n) -> (B, m); the gradient applies Mᵀ (again a
    :class:`_Apply`, so higher derivatives work)."""

    @staticmethod
    def forward(ctx, x: Tensor, mat: Tensor, mat_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.mats = (mat, mat_t)
        return (mat @ x.t()).t().contiguous()  # (m, B) -> (B, m)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        mat, mat_t = ctx.mats
        return _Apply.apply(grad, mat_t, mat), None, None


def _check_finite(x: Tensor, who: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{who}: input holds NaN or Inf values; clean the data before reconstruction")


FilterName = Literal["ramp", "hann"]
FILTERS: tuple[str, ...] = ("ramp", "hann")


class RadonTransform:
    """The parallel-beam ray transform A of a :class:`ParallelBeamGeometry`, as a batched operator.

    ``A(u)``: (B, 1, N, N) -> (B, 1, n_angles, n_detectors); ``adjoint(y)`` = Aᵀ y the other way.
    Both accept float32 and float64 on any device: the matrix is converted on first use for that
    (dtype, device) and kept, so a model holding this operator follows ``model.to(device)`` without
    further steps. Both are differentiable (the gradient of A is Aᵀ and conversely). Inputs are
    checked for shape and, unless ``check_finite=False``, for NaN/Inf.
    """

    def __init__(self, geometry: ParallelBeamGeometry, *, check_finite: bool = True) -> None:
        if not isinstance(geometry, ParallelBeamGeometry):
            raise TypeError(f"RadonTransform needs a ParallelBeamGeometry, got {type(geometry).__name__}")
        self.geometry = geometry
        self.check_finite = check_finite
        self._mats: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._norm: float | None = None
        self._sums: tuple[Tensor, Tensor] | None = None

    def __repr__(self) -> str:
        g = self.geometry
        return f"RadonTransform(n={g.n}, n_angles={g.n_angles}, n_detectors={g.n_detectors}, width={g.width})"

    # -- matrices -------------------------------------------------------------------------------

    def matrices(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """(A, Aᵀ) as sparse CSR tensors of ``dtype`` on ``device``."""
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"RadonTransform supports float32 and float64, got {dtype}")
        device = torch.device(device)
        key = (dtype, device)
        if key not in self._mats:
            a, at = system_matrix(self.geometry)
            with _quiet_csr():
                self._mats[key] = (a.to(dtype=dtype).to(device), at.to(dtype=dtype).to(device))
        return self._mats[key]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RadonTransform:
        """Prepare the matrices on ``device`` in ``dtype`` (float32 when not given); returns self."""
        self.matrices(dtype or torch.float32, device or "cpu")
        return self

    def row_sums(self) -> Tensor:
        """R_i = Σ_p a_{ip}, (n_angles, n_detectors) float64: the length of ray i inside the square."""
        return self._row_col_sums()[0]

    def column_sums(self) -> Tensor:
        """C_p = Σ_i a_{ip}, (N, N) float64: the total length of all rays through pixel p."""
        return self._row_col_sums()[1]

    def _row_col_sums(self) -> tuple[Tensor, Tensor]:
        if self._sums is None:
            a, at = system_matrix(self.geometry)
            g = self.geometry
            ones_p = torch.ones(g.n * g.n, 1, dtype=torch.float64)
            ones_r = torch.ones(g.n_angles * g.n_detectors, 1, dtype=torch.float64)
            rows = (a @ ones_p).reshape(g.sinogram_shape)
            cols = (at @ ones_r).reshape(g.image_shape)
            self._sums = (rows, cols)
        return self._sums

    # -- application ----------------------------------------------------------------------------

    def _check(self, x: Tensor, shape: tuple[int, int], what: str, who: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != shape:
            raise ValueError(
                f"{who} expects {what} of shape (B, 1, {shape[0]}, {shape[1]}) for this geometry, "
                f"got {tuple(x.shape)}"
            )
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{who} supports float32 and float64 tensors, got {x.dtype}")
        if self.check_finite:
            _check_finite(x, who)

    def forward(self, u: Tensor) -> Tensor:
        """A u: (B, 1, N, N) -> (B, 1, n_angles, n_detectors)."""
        g = self.geometry
        self._check(u, g.image_shape, "images", "RadonTransform.forward")
        a, at = self.matrices(u.dtype, u.device)
        y = _Apply.apply(u.reshape(u.shape[0], -1), a, at)  # (B, K·D)
        return y.reshape(u.shape[0], 1, *g.sinogram_shape)

    __call__ = forward

    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ y (unfiltered back-projection): (B, 1, n_angles, n_detectors) -> (B, 1, N, N)."""
        g = self.geometry
        self._check(y, g.sinogram_shape, "sinograms", "RadonTransform.adjoint")
        a, at = self.matrices(y.dtype, y.device)
        u = _Apply.apply(y.reshape(y.shape[0], -1), at, a)  # (B, N²)
        return u.reshape(y.shape[0], 1, *g.image_shape)

    def norm(self, iters: int = 200, tol: float = 1e-10, seed: int = 0) -> float:
        """‖A‖₂ by power iteration on AᵀA (float64, cached), a lower bound converging to ‖A‖₂."""
        if self._norm is None:
            a, at = system_matrix(self.geometry)
            gen = torch.Generator().manual_seed(seed)
            v = torch.rand(a.shape[1], 1, dtype=torch.float64, generator=gen)  # positive start
            v /= torch.linalg.vector_norm(v)
            sigma2 = 0.0
            for _ in range(iters):
                w = at @ (a @ v)
                new = float(torch.linalg.vector_norm(w))
                v = w / new
                if abs(new - sigma2) <= tol * new:
                    sigma2 = new
                    break
                sigma2 = new
            self._norm = math.sqrt(sigma2)
        return self._norm

    # -- filtered back-projection ------------------------------------------------------------------

    def filter_response(
        self,
        filter: FilterName = "ramp",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, int]:
        """(Ĥ, L): the real frequency response (L//2 + 1,) of the discrete ramp filter, optionally
        Hann-windowed, on the zero-padded detector length L (a power of two ≥ 2 n_detectors).

        The ramp is the band-limited kernel h(0) = 1/(4Δs²), h(k) = −1/(π² k² Δs²) for odd k, 0
        for even k ≠ 0 (Ram-Lak in the spatial domain, no DC offset), times Δs for the quadrature;
        "hann" multiplies by ½ (1 + cos(2π f)), f ∈ [0, ½] cycles per detector.
        """
        if filter not in FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; valid filters: {', '.join(FILTERS)}")
        d, ds = self.geometry.n_detectors, self.geometry.spacing
        length = 1 << max(6, math.ceil(math.log2(2 * d)))
        k = torch.arange(length, dtype=torch.float64)
        k = torch.where(k < length // 2, k, k - length)  # signed offsets in FFT order
        h = torch.zeros(length, dtype=torch.float64)
        odd = k.remainder(2) == 1
        h[odd] = -1.0 / (math.pi**2 * k[odd] ** 2 * ds**2)
        h[0] = 1.0 / (4 * ds**2)
        response = torch.fft.rfft(h).real * ds  # (L//2 + 1,)
        if filter == "hann":
            f = torch.fft.rfftfreq(length, dtype=torch.float64)
            response = response * 0.5 * (1 + torch.cos(2 * math.pi * f))
        return response.to(dtype=dtype, device=device), length

    def fbp(self, y: Tensor, filter: FilterName = "ramp") -> Tensor:
        """Filtered back-projection: f ≈ (π / n_angles) (Δs / h²) Aᵀ (h ∗ y), (B, 1, K, D) -> (B, 1, N, N).

        The filter acts along the detector axis in the frequency domain (:meth:`filter_response`);
        Σ_j a_{(k,j),p} ≈ h²/Δs turns Aᵀ into a quadrature of ∫₀^π q_θ(x·θ) dθ. No clipping.
        """
        g = self.geometry
        self._check(y, g.sinogram_shape, "sinograms", "RadonTransform.fbp")
        response, length = self.filter_response(filter, y.dtype, y.device)
        spec = torch.fft.rfft(y, n=length, dim=-1)  # (B, 1, K, L//2+1)
        q = torch.fft.irfft(spec * response, n=length, dim=-1)[..., : g.n_detectors]  # (B, 1, K, D)
        scale = (math.pi / g.n_angles) * g.spacing / g.pixel_size**2
        return scale * self.adjoint(q.contiguous())


# ----------------------------------------------------------------------------------------------
# The relaxed projection step


Weighting = Literal["landweber", "sart"]
WEIGHTINGS: tuple[str, ...] = ("landweber", "sart")


class RelaxedProjection:
    """P_d(v) = Π_[lo,hi](v − λ S Aᵀ W (A v − d)) with W = diag(1/R_i) (inverse row sums).

    Args:
        radon: the operator A.
        relaxation: λ ∈ (0, 2]. The reference F-FPN code used 1.99 (the default).
        weighting: "landweber" (S = s I, Euclidean-nonexpansive, the default) or "sart" (S =
            diag(1/C_p), nonexpansive in the C-weighted norm ‖x‖²_C = Σ_p C_p x_p²).
        step: s for "landweber"; None gives s = 1/max_p C_p. A larger s is refused: the proof of
            nonexpansiveness needs s ≤ 1/max_p C_p (Schur test: ‖AᵀWA‖₂ ≤ max_p C_p).
        box: (lo, hi), the box the result is clamped to; None: no clamp.

    Bound: for "landweber", Lip(P_d) ≤ 1 in the Euclidean norm for every d (the linear part
    I − λ s AᵀWA has eigenvalues in [1 − λ, 1]); :attr:`lipschitz_bound` returns this proven bound.
    Rays that miss the image (R_i = 0) get W_i = 0; pixels no ray sees (C_p = 0) get S_p = 0.

    Shapes: v (B, 1, N, N), d (B, 1, n_angles, n_detectors) -> (B, 1, N, N).
    """

    def __init__(
        self,
        radon: RadonTransform,
        relaxation: float = 1.99,
        weighting: Weighting = "landweber",
        step: float | None = None,
        box: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        if not isinstance(radon, RadonTransform):
            raise TypeError(f"RelaxedProjection needs a RadonTransform, got {type(radon).__name__}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid weightings: {', '.join(WEIGHTINGS)}")
        if not (isinstance(relaxation, (int, float)) and 0.0 < relaxation <= 2.0):
            raise ValueError(
                f"RelaxedProjection: relaxation λ must lie in (0, 2] for a nonexpansive step "
                f"(the linear part has eigenvalues in [1 − λ, 1]), got {relaxation!r}"
            )
        if box is not None and not (box[0] < box[1]):
            raise ValueError(f"RelaxedProjection: box must be (lo, hi) with lo < hi, got {box!r}")
        self.radon = radon
        self.relaxation = float(relaxation)
        self.weighting = weighting
        self.box = None if box is None else (float(box[0]), float(box[1]))
        rows, cols = radon.row_sums(), radon.column_sums()
        self.max_column_sum = float(cols.max())
        limit = 1.0 / self.max_column_sum
        if weighting == "sart":
            if step is not None:
                raise ValueError("RelaxedProjection: step applies to the 'landweber' weighting only")
            self.step = limit
        elif step is None:
            self.step = limit
        else:
            if not (isinstance(step, (int, float)) and step > 0):
                raise ValueError(f"RelaxedProjection: step must be a number > 0, got {step!r}")
            if step > limit * (1 + 1e-12):
                raise ValueError(
                    f"RelaxedProjection: step {step:g} is not provably nonexpansive; the bound "
                    f"‖AᵀWA‖₂ ≤ max column sum = {self.max_column_sum:g} allows step ≤ {limit:g} "
                    "(for larger steps, lower the relaxation instead)"
                )
            self.step = float(step)
        self._row_w = torch.where(rows > 0, 1.0 / rows.clamp_min(1e-300), torch.zeros_like(rows))  # (K, D)
        if weighting == "sart":
            self._col_w = torch.where(cols > 0, 1.0 / cols.clamp_min(1e-300), torch.zeros_like(cols))
        else:
            self._col_w = torch.full_like(cols, self.step)  # (N, N)
        self._weights: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    @property
    def lipschitz_bound(self) -> float:
        """The proven Lipschitz constant of v ↦ P_d(v): 1.0 in the Euclidean norm ("landweber"),
        1.0 in the C-weighted norm ("sart")."""
        return 1.0

    def weights(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(W, S) as (1, 1, K, D) and (1, 1, N, N) tensors (S includes λ)."""
        key = (dtype, torch.device(device))
        if key not in self._weights:
            w = self._row_w.to(dtype=dtype, device=device)[None, None]
            s = (self.relaxation * self._col_w).to(dtype=dtype, device=device)[None, None]
            self._weights[key] = (w, s)
        return self._weights[key]

    def linear_step(self, v: Tensor, d: Tensor) -> Tensor:
        """v − λ S Aᵀ W (A v − d), without the box."""
        if d.shape[0] != v.shape[0]:
            raise ValueError(
                f"RelaxedProjection: images and sinograms need the same batch size, got "
                f"{v.shape[0]} and {d.shape[0]}"
            )
        w, s = self.weights(v.dtype, v.device)
        residual = self.radon.forward(v) - d  # (B, 1, K, D)
        return v - s * self.radon.adjoint(w * residual)

    def __call__(self, v: Tensor, d: Tensor) -> Tensor:
        """P_d(v): (B, 1, N, N), (B, 1, K, D) -> (B, 1, N, N)."""
        out = self.linear_step(v, d)
        return out if self.box is None else out.clamp(self.box[0], self.box[1])

    def __repr__(self) -> str:
        return (
            f"RelaxedProjection(relaxation={self.relaxation}, weighting={self.weighting!r}, "
            f"step={self.step:.4g}, box={self.box})"
        )
