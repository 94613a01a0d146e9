"""The CT reconstruction task for the trainer (``[task] name = "ct"``).

Learn a reconstruction u ≈ N_Θ(d) of an image u from its noisy parallel-beam sinogram d = A u + ε
(docs/ct.md). The pieces are this package's:

- data: :func:`~fpnets.tasks.ct.load_ellipse_splits` (random-ellipse phantoms, cached under the
  data directory, see :func:`ct_data_dir`) or user pairs read with
  :func:`~fpnets.tasks.ct.load_ct_pairs`; a batch is ``((d,), u)`` with d (B, 1, angles, detectors)
  and u (B, 1, N, N);
- models: :func:`~fpnets.tasks.ct.build_ct_model`; ``model.variant`` = ffpn (the paper's F-FPN,
  u* = P_d(R_Θ(u*)) with the difference regulariser), contractive (the F-FPN with a γ-contractive
  averaged R_Θ), potential (the F-FPN with R_Θ = γ · convex-potential layers, γ-contractive and
  TV-like), unrolled (K steps of the same T, backpropagated), tvs (TV superiorisation with two
  trainable scalars); fbp and tv are evaluation-only baselines (no parameters), built by
  :meth:`CTTask.build_baseline` with the FBP filter and the TV weight λ chosen on validation;
- loss: :func:`~fpnets.tasks.ct.reconstruction_loss` (MSE over batch and pixels);
- metrics (per sample): psnr (dB, higher is better), ssim (higher is better), mse (lower is better);
  the epoch is selected on ``val.psnr``;
- figures: ``reconstructions.png`` (ground truth | FBP | TV | the model on test images) and, for
  models that iterate T, ``convergence.png`` (the residual per iteration on a test batch).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..._errors import ConfigError
from ..._fixed_point import fixed_point
from ...layers import POTENTIAL_ACTIVATIONS
from ...norms import max_channel_norm
from ...operators.radon import FILTERS, ParallelBeamGeometry, geometry_preset
from .._base import (
    DataConfig,
    Metric,
    ModelConfig,
    Splits,
    Task,
    TensorSplit,
    check_variant_options,
    task_data_dir,
    variant_options,
)
from .baselines import FBPReconstructor, TVReconstructor
from .data import EllipseDataConfig, load_ct_pairs, load_ellipse_splits
from .metrics import mse, psnr, ssim
from .models import FFPN, LIPSCHITZ_RULES, UnrolledFFPN

__all__ = [
    "BASELINES",
    "FFPN_SOLVER_DEFAULTS",
    "VARIANTS",
    "VARIANT_KEYS",
    "CTData",
    "CTModel",
    "CTTask",
    "ct_data_dir",
    "select_fbp",
    "select_tv",
]

VARIANTS: dict[str, str] = {
    "ffpn": "ffpn",
    "contractive": "ffpn-contractive",
    "potential": "ffpn-potential",
    "unrolled": "unrolled",
    "tvs": "tvs",
    "fbp": "fbp",
    "tv": "tv",
}
"""``model.variant`` → the kind of :func:`fpnets.tasks.ct.build_ct_model`."""

BASELINES = ("fbp", "tv")
"""Variants without parameters: evaluated, never trained."""

FFPN_SOLVER_DEFAULTS: dict[str, Any] = {"tol": 5e-3, "max_iter": 100, "norm": "max_channel"}
"""Options of the F-FPN forward solve that ``[solver]`` leaves unset: the reference stopping rule
max_p |u_{k+1} − u_k|_p ≤ 5e-3, at most 100 applications of T."""

_REGULARISER = ("channels", "blocks", "negative_slope", "init", "fbp_filter", "relaxation", "weighting")
VARIANT_KEYS: dict[str, tuple[str, ...]] = {
    "ffpn": (*_REGULARISER, "gamma", "lipschitz"),
    "contractive": (*_REGULARISER, "gamma"),
    "potential": ("channels", "blocks", "gamma", "activation", "scale", *_REGULARISER[3:]),
    "unrolled": (*_REGULARISER, "steps"),
    "tvs": ("iterations", "step", "decay", "eps", "init", "fbp_filter", "relaxation", "weighting"),
    "tv": ("lam", "iterations"),
    "fbp": ("fbp_filter",),
}
"""The ``[model]`` option keys each variant takes (the others must stay unset)."""

DEFAULT_LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
"""Candidate TV weights λ tried on validation."""


def _data_error(message: str) -> Exception:
    from ...data import DataError

    return DataError(message)


def ct_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Where the generated ellipse data are cached and user pair files are looked for
    (:func:`fpnets.tasks._base.task_data_dir` of "ct"; files ``ct-ellipses-<N>-<hash>.npz``)."""
    return task_data_dir("ct", data_dir)


# -------------------------------------------------------------------------------------------------
# config sections


@dataclass
class CTData(DataConfig):
    """``[data]`` of the CT task: the scan geometry, the ellipse data set (or user files), batching.

    The geometry is a preset ("64": 64 × 64, 30 angles, 91 detectors; "128": the paper's 128 × 128,
    30 angles, 183 detectors) whose entries ``image_size``, ``angles`` and ``detectors`` may be
    overridden one by one (tiny geometries for tests).
    """

    batch_size: int = 16
    eval_batch_size: int = 100
    geometry: str = "64"
    """The preset: "64" (or "small") or "128" (or "paper")."""
    image_size: int | None = None
    """N, pixels per side; unset: the preset's. When set without ``detectors``, the detector
    count becomes the smallest odd number ≥ N√2 (every ray through the image is measured)."""
    angles: int | None = None
    """Projection angles over [0, π); unset: the preset's (30)."""
    detectors: int | None = None
    """Detector pixels per angle; unset: the preset's (or derived from ``image_size``)."""
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 200
    seed: int = 0
    """Seeds the phantoms and the noise (the dataset); ``train.seed`` seeds the model and batch order."""
    noise: float = 0.015
    """σ_b / mean |A u_b|: Gaussian noise relative to each sample's mean line integral (1.5 %)."""
    cache: bool = True
    """Keep the generated data in the data directory (:func:`ct_data_dir`) and reuse them."""
    train_file: str = ""
    """User (image, sinogram) pairs instead of ellipses: .npz or HDF5 files with arrays ``images``
    and ``sinograms`` (:func:`fpnets.tasks.ct.load_ct_pairs`), relative to the data directory. Set
    all three or none; the n_* sizes, seed and noise are then unused."""
    val_file: str = ""
    test_file: str = ""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"geometry": ("64", "small", "128", "paper")}

    def check(self) -> None:
        super().check()
        for key in ("image_size", "angles", "detectors"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {value}")
        files = [self.train_file, self.val_file, self.test_file]
        if any(files) and not all(files):
            raise ConfigError(
                "data.train_file, data.val_file and data.test_file must be set together (user pairs) "
                "or all left empty (generated ellipses)"
            )
        if not any(files):
            try:
                self.ellipse_config()
            except ValueError as exc:
                raise ConfigError(f"[data]: {exc}") from None
            if self.n_train < 1:
                raise ConfigError(f"data.n_train must be >= 1, got {self.n_train}")

    def scan(self) -> ParallelBeamGeometry:
        """The :class:`ParallelBeamGeometry` these values describe."""
        base = geometry_preset(self.geometry)
        n = base.n if self.image_size is None else self.image_size
        if self.detectors is not None:
            detectors = self.detectors
        elif self.image_size is not None:
            detectors = math.ceil(n * math.sqrt(2))
            detectors += 1 - detectors % 2
        else:
            detectors = base.n_detectors
        angles = base.n_angles if self.angles is None else self.angles
        if (n, angles, detectors) == (base.n, base.n_angles, base.n_detectors):
            return base
        return dataclasses.replace(base, n=n, n_angles=angles, n_detectors=detectors)

    def ellipse_config(self) -> EllipseDataConfig:
        """The :class:`EllipseDataConfig` of these values."""
        return EllipseDataConfig(
            geometry=self.scan(),
            n_train=self.n_train,
            n_val=self.n_val,
            n_test=self.n_test,
            seed=self.seed,
            noise=self.noise,
        )


@dataclass
class CTModel(ModelConfig):
    """``[model]`` of the CT task. Unset options take the model's defaults (docs/ct.md); an option
    the chosen variant does not take must stay unset (:data:`VARIANT_KEYS`)."""

    variant: str = "ffpn"
    """ffpn (the paper's F-FPN), contractive (F-FPN with a γ-contractive R_Θ), potential (F-FPN with
    R_Θ = γ · convex-potential layers, γ-contractive and TV-like), unrolled (K steps of
    the same T, same parameters), tvs (TV superiorisation, 2 parameters); fbp and tv are
    evaluation-only baselines. Selects the ``[variants.<name>]`` table too."""
    channels: int | None = None
    """Hidden channels of R_Θ (42 in the paper)."""
    blocks: int | None = None
    """Residual blocks of R_Θ (difference: 4, contractive: 3), or layers h_k (potential: 4)."""
    gamma: float | None = None
    """γ: Lip(R_Θ) ≤ γ < 1 for contractive and potential; the reference rule's target for ffpn (0.99)."""
    activation: str | None = None
    """potential: σ of the convex-potential layers ("hardtanh": Huber potentials, TV-like)."""
    scale: float | None = None
    """potential: the fixed factor α of W = α V in every layer (300; Huber threshold 1/α)."""
    negative_slope: float | None = None
    """LeakyReLU slope (0.05)."""
    init: str | None = None
    """u₀ of the iteration: "fbp" (Hann FBP clipped to [0, 1]) or "zeros"."""
    fbp_filter: str | None = None
    """The FBP filter ("ramp" or "hann"): of u₀, or of the fbp baseline (unset: chosen on validation)."""
    relaxation: float | None = None
    """λ ∈ (0, 2] of the projection step P_d (1.99); larger steps are expansive and refused."""
    weighting: str | None = None
    """P_d's preconditioner: "landweber" (Euclidean-nonexpansive) or "sart"."""
    lipschitz: str | None = None
    """ffpn: "reference" (the authors' rescaling rule after every step, default), "power" (the same
    rescaling driven by a power-iteration estimate of ‖∂T/∂u‖₂ at the fixed point, target 1) or
    "none"."""
    steps: int | None = None
    """K, the unrolled network's steps (20)."""
    iterations: int | None = None
    """tvs: superiorisation iterations (20); tv: Chambolle–Pock iterations (300)."""
    step: float | None = None
    """tvs: initial α of the perturbation steps β_k = α η^k (1)."""
    decay: float | None = None
    """tvs: initial η ∈ (0, 1) (0.9)."""
    eps: float | None = None
    """tvs: smoothing ε of TV_ε (0.01)."""
    lam: float | None = None
    """tv: the TV weight λ; unset: chosen on validation among ``lambdas``."""
    lambdas: list[float] = field(default_factory=lambda: list(DEFAULT_LAMBDAS))
    """Candidate TV weights λ tried on validation (for the tv baseline and the figures)."""
    select_samples: int = 64
    """Validation images used to choose the FBP filter and λ of the baselines (0: all)."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "variant": tuple(VARIANTS),
        "init": ("fbp", "zeros"),
        "fbp_filter": tuple(FILTERS),
        "weighting": ("landweber", "sart"),
        "lipschitz": LIPSCHITZ_RULES,
        "activation": POTENTIAL_ACTIVATIONS,
    }

    def check(self) -> None:
        check_variant_options(self, VARIANT_KEYS)
        for key in ("channels", "blocks", "steps", "iterations"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {value}")
        if self.relaxation is not None and not 0 < self.relaxation <= 2:
            raise ConfigError(
                f"model.relaxation must lie in (0, 2], got {self.relaxation}: the projection step "
                "P_d(v) = Π(v − λ s AᵀW(Av − d)) is nonexpansive only for λ ≤ 2 (its linear part has "
                "eigenvalues in [1 − λ, 1]); lower it to at most 2"
            )
        if self.gamma is not None and not 0 < self.gamma < 1:
            raise ConfigError(f"model.gamma must lie in (0, 1), got {self.gamma}")
        for key in ("step", "eps", "lam", "scale"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"model.{key} must be > 0, got {value}")
        if self.decay is not None and not 0 < self.decay < 1:
            raise ConfigError(f"model.decay must lie in (0, 1), got {self.decay}")
        if not self.lambdas or not all(lam >= 0 and math.isfinite(lam) for lam in self.lambdas):
            raise ConfigError(f"model.lambdas must be finite numbers >= 0, got {self.lambdas}")
        if self.select_samples < 0:
            raise ConfigError(f"model.select_samples must be >= 0, got {self.select_samples}")

    def options(self) -> dict[str, Any]:
        """Keyword options of :func:`fpnets.tasks.ct.build_ct_model` (the set keys of the variant)."""
        return variant_options(self, VARIANT_KEYS)


# -------------------------------------------------------------------------------------------------
# baselines chosen on validation


def _validation_head(val: TensorSplit, samples: int, what: str) -> tuple[Tensor, Tensor]:
    n = len(val) if samples <= 0 else min(samples, len(val))
    if n == 0:
        raise ValueError(f"cannot choose {what} on an empty validation split; set it in [model]")
    return val.inputs[0][:n].to(torch.float64), val.target[:n].to(torch.float64)  # (n,1,K,D), (n,1,N,N)


def select_fbp(
    geometry: ParallelBeamGeometry, val: TensorSplit, *, samples: int = 64
) -> tuple[FBPReconstructor, dict[str, float]]:
    """FBP with the filter ("ramp" or "hann") of best mean PSNR on the first ``samples`` validation
    pairs (0: all); returns it and ``{filter: mean PSNR}``."""
    d, u = _validation_head(val, samples, "the FBP filter (model.fbp_filter)")
    scores = {name: float(psnr(FBPReconstructor(geometry, name)(d), u).mean()) for name in FILTERS}
    return FBPReconstructor(geometry, max(scores, key=scores.__getitem__)), scores


def select_tv(
    geometry: ParallelBeamGeometry,
    val: TensorSplit,
    *,
    samples: int = 64,
    lambdas: list[float] | tuple[float, ...] = tuple(DEFAULT_LAMBDAS),
    iterations: int | None = None,
) -> tuple[TVReconstructor, dict[float, float]]:
    """TV reconstruction with the weight λ of best mean PSNR among ``lambdas`` on the first
    ``samples`` validation pairs (0: all); returns it and ``{λ: mean PSNR}``."""
    d, u = _validation_head(val, samples, "the TV weight (model.lam)")
    tv = TVReconstructor(geometry, **({} if iterations is None else {"iterations": iterations}))
    scores = tv.select_lambda(d, u, tuple(lambdas))
    return tv, scores


# -------------------------------------------------------------------------------------------------
# the task


class CTTask(Task):
    """Reconstruct images from noisy parallel-beam sinograms: F-FPN, contractive F-FPN, unrolled
    network, TV superiorisation; FBP and TV as evaluation-only baselines."""

    name = "ct"
    data_config = CTData
    model_config = CTModel
    metrics = (
        Metric("psnr", higher_is_better=True, label="PSNR (dB)"),
        Metric("ssim", higher_is_better=True, label="SSIM"),
        Metric("mse", higher_is_better=False, label="MSE"),
    )
    loss_label = "MSE"
    select = "val.psnr"
    extra_columns = ("rescales",)

    @property
    def geometry(self) -> ParallelBeamGeometry:
        """The scan of ``[data]``."""
        return self.config.data.scan()

    # -- data -------------------------------------------------------------------------------------

    def load_splits(self, data_dir: str | Path | None) -> Splits:
        """The train/val/test splits as :class:`TensorSplit` ``((d,), u)``, float32.

        Generated ellipses (cached in :func:`ct_data_dir` unless ``data.cache`` is false), or the
        user pair files of ``data.train_file`` etc. (relative to the data directory). A corrupt,
        mis-shaped or non-finite file raises :class:`fpnets.data.DataError` naming it.
        """
        d, geom = self.config.data, self.geometry
        if d.train_file:
            root = ct_data_dir(data_dir)
            out = []
            for name in (d.train_file, d.val_file, d.test_file):
                path = Path(name).expanduser()
                path = path if path.is_absolute() else root / path
                try:
                    split = load_ct_pairs(path, geom)
                except (OSError, KeyError, ValueError) as exc:
                    raise _data_error(f"CT pairs {path}: {exc}") from exc
                out.append(TensorSplit((split.sinograms,), split.images))
            return Splits(*out)
        where = ct_data_dir(data_dir) if d.cache else None
        data = load_ellipse_splits(where, d.ellipse_config())
        return Splits(*(TensorSplit((s.sinograms,), s.images) for s in (data.train, data.val, data.test)))

    def check_split(self, split: Any, name: str = "split") -> None:
        """Raise :class:`fpnets.data.DataError` unless ``split`` is a :class:`TensorSplit` of
        finite sinograms (n, 1, angles, detectors) and images (n, 1, N, N) of this geometry."""
        geom = self.geometry
        if not isinstance(split, TensorSplit) or len(split.inputs) != 1:
            raise TypeError(
                f"the CT task needs TensorSplit((sinograms,), images) splits, got {type(split).__name__}"
            )
        (d,), u = split.inputs, split.target
        want_d, want_u = (1, geom.n_angles, geom.n_detectors), (1, geom.n, geom.n)
        if d.dim() != 4 or tuple(d.shape[1:]) != want_d:
            raise _data_error(
                f"CT {name} split: sinograms must be (n, {', '.join(map(str, want_d))}) for the "
                f"{geom.n}×{geom.n} geometry with {geom.n_angles} angles and {geom.n_detectors} detectors "
                f"([data] geometry/image_size/angles/detectors), got {tuple(d.shape)}"
            )
        if u.dim() != 4 or tuple(u.shape[1:]) != want_u:
            raise _data_error(
                f"CT {name} split: images must be (n, {', '.join(map(str, want_u))}), got {tuple(u.shape)}"
            )
        for what, t in (("sinograms", d), ("images", u)):
            if not t.is_floating_point():
                raise _data_error(f"CT {name} split: {what} must be floating point, got {t.dtype}")
            bad = ~torch.isfinite(t.flatten(1)).all(1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                raise _data_error(
                    f"CT {name} split: {what} of {int(bad.sum())} sample(s) hold NaN or Inf values "
                    f"(first: sample {first}); clean or drop them"
                )

    def loader(
        self, split: Any, *, train: bool, rank: int = 0, world_size: int = 1, device: Any = None
    ) -> Any:
        self.check_split(split, "training" if train else "evaluation")
        return super().loader(split, train=train, rank=rank, world_size=world_size, device=device)

    # -- models -----------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The trainable network of ``model.variant`` for ``[data]``'s geometry.

        The F-FPNs take the forward solver of ``[solver]`` (unset tol/max_iter/norm: 5e-3, 100,
        max_channel, the reference stopping rule) and the backward of ``[backward]`` (unset: JFB),
        and do not warn when a solve misses the tolerance (the trainer records the iterations).
        The other variants have no fixed-point solve, so ``[backward]`` must stay unset. fbp and tv
        have no parameters: they are built by :meth:`build_baseline`.
        """
        from ...registry import backward_from_spec, solver_from_spec
        from . import build_ct_model

        cfg, m = self.config, self.config.model
        if m.variant in BASELINES:
            raise ConfigError(
                f"model.variant = {m.variant!r} is an evaluation-only baseline with no parameters to "
                f"train; evaluate it with CTTask.build_baseline({m.variant!r}, splits.val) or "
                "`python benchmarks/ct_table.py --baselines`, and train one of "
                f"{', '.join(v for v in VARIANTS if v not in BASELINES)}"
            )
        options = m.options()
        backward = cfg.backward.spec()
        if m.variant in ("ffpn", "contractive", "potential"):
            try:
                options["solver"] = solver_from_spec(cfg.solver.spec(), FFPN_SOLVER_DEFAULTS)
                if backward is not None:
                    options["backward"] = backward_from_spec(backward)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[solver]/[backward]: {exc}") from None
            options["warn"] = False
        elif backward is not None:
            raise ConfigError(
                f"backward.name = {cfg.backward.name!r} does not apply to the {m.variant} variant (it "
                "solves no fixed point and backpropagates through all its steps); unset [backward]"
            )
        try:
            return build_ct_model(VARIANTS[m.variant], self.geometry, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[model] ({m.variant}): {exc}") from None

    def build_baseline(self, kind: str, val: TensorSplit) -> nn.Module:
        """The fbp or tv baseline for ``[data]``'s geometry. When ``model.variant`` is that baseline,
        a set ``model.fbp_filter`` / ``model.lam`` (and ``model.iterations`` for tv) are used;
        otherwise the filter / λ of best PSNR on ``val`` (its first ``model.select_samples`` pairs)."""
        m, geom = self.config.model, self.geometry
        own = m.variant == kind
        if kind == "fbp":
            if own and m.fbp_filter is not None:
                return FBPReconstructor(geom, m.fbp_filter)
            return select_fbp(geom, val, samples=m.select_samples)[0]
        if kind == "tv":
            iterations = m.iterations if own else None
            if own and m.lam is not None:
                return TVReconstructor(
                    geom, m.lam, **({} if iterations is None else {"iterations": iterations})
                )
            return select_tv(geom, val, samples=m.select_samples, lambdas=m.lambdas, iterations=iterations)[0]
        raise ValueError(f"unknown baseline {kind!r}; valid baselines: {', '.join(BASELINES)}")

    def after_step(self, model: nn.Module) -> None:
        # the reference Lipschitz rule of the paper-form F-FPN; a no-op for every other CT model
        model.after_optimizer_step()  # type: ignore[operator]

    def epoch_stats(self, model: nn.Module) -> dict[str, float | None]:
        # how often the reference rule has rescaled R_Θ so far (None: the model has no such rule)
        if isinstance(model, FFPN) and model.lipschitz != "none":
            return {"rescales": model.rescales}
        return {"rescales": None}

    def restore(self, model: nn.Module, record: Mapping[str, Any]) -> None:
        if isinstance(model, FFPN) and record.get("rescales") is not None:
            model.rescales = int(record["rescales"])

    # -- loss and metrics -------------------------------------------------------------------------

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        from . import reconstruction_loss

        return reconstruction_loss(output, target.to(output.dtype))

    def measure(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        u, t = output.detach().to(torch.float64), target.to(torch.float64)
        return {"psnr": psnr(u, t), "ssim": ssim(u, t), "mse": mse(u, t)}

    def run_name(self) -> str:
        return f"{self.config.run.name or self.name}-{self.config.model.variant}"

    # -- figures ----------------------------------------------------------------------------------

    def figures(
        self, run_dir: Path, model: nn.Module, splits: Splits, *, device: Any, dtype: Any
    ) -> list[Path]:
        """``reconstructions.png``: ground truth | FBP | TV | this model on the first four test
        images (FBP filter and TV λ chosen on validation), titled with PSNR and SSIM;
        ``convergence.png`` (F-FPN and unrolled variants): the residual max_p |u_{k+1} − u_k|_p per
        iteration of T on the first test batch."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            warnings.warn("matplotlib is not installed; no CT figures written", RuntimeWarning, stacklevel=2)
            return []
        from .figures import reconstruction_figure

        test = splits.test
        if len(test) == 0:
            return []
        shown = min(4, len(test))
        d = test.inputs[0][:shown]  # (b, 1, K, D)
        truth = test.target[:shown].to(torch.float64)  # (b, 1, N, N)
        fbp = self.build_baseline("fbp", splits.val)
        tv = self.build_baseline("tv", splits.val)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ours = model(d.to(device=device, dtype=dtype)).to(device="cpu", dtype=torch.float64)
                d64 = d.to(torch.float64)
                recons = {
                    f"FBP ({fbp.filter})": fbp(d64),
                    f"TV (λ={tv.lam:g})": tv(d64),
                    self._label(): ours,
                }
            paths = [reconstruction_figure(truth, recons, run_dir / "reconstructions.png")]
            conv = self._convergence_figure(run_dir, model, test, device=device, dtype=dtype)
        finally:
            model.train(was_training)
        return paths + ([conv] if conv is not None else [])

    def _label(self) -> str:
        return {
            "ffpn": "F-FPN",
            "contractive": "F-FPN (contractive)",
            "potential": "F-FPN (potential)",
            "unrolled": "unrolled",
            "tvs": "TV superiorisation",
        }.get(self.config.model.variant, self.config.model.variant)

    @torch.no_grad()
    def _convergence_figure(
        self, run_dir: Path, model: nn.Module, test: TensorSplit, *, device: Any, dtype: Any
    ) -> Path | None:
        if not isinstance(model, (FFPN, UnrolledFFPN)):
            return None
        d = test.inputs[0][: self.config.data.eval_batch_size].to(device=device, dtype=dtype)  # (B, 1, K, D)
        u0 = model.initial(d)
        if isinstance(model, FFPN):
            sol = fixed_point(
                model.operator,
                u0,
                d,
                solver=model.solver,
                backward=model.backward_mode,
                warn=False,
                trace=True,
            )
            residuals = sol.trace.to("cpu", torch.float64)  # (K, B)
            tol = getattr(model.solver, "tol", None)
            marker, note = None, f"{int(sol.converged.sum())}/{d.shape[0]} converged"
        else:
            rows, u = [], u0
            for _ in range(3 * model.steps):
                nxt = model.operator(u, d)
                rows.append(max_channel_norm(nxt - u))
                u = nxt
            residuals = torch.stack(rows).to("cpu", torch.float64)  # (3K, B)
            tol, marker, note = None, model.steps, f"trained for K = {model.steps} steps"
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k = torch.arange(1, residuals.shape[0] + 1).numpy()
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        r = residuals.clamp_min(1e-12).numpy()
        ax.semilogy(k, r, color="C0", alpha=0.15, lw=0.8)
        ax.semilogy(
            k, residuals.median(dim=1).values.clamp_min(1e-12).numpy(), color="C3", lw=2, label="median"
        )
        if tol:
            ax.axhline(tol, color="k", ls="--", lw=0.8, label=f"tolerance {tol:g}")
        if marker is not None:
            ax.axvline(marker, color="k", ls=":", lw=0.8, label="unrolled steps K")
        ax.set(
            xlabel="iteration k",
            ylabel="max_p |u_{k+1} − u_k|_p",
            title=f"{self._label()}: {d.shape[0]} test sinograms, {note}",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        path = run_dir / "convergence.png"
        FigureCanvasAgg(fig)
        fig.savefig(path, format="png", dpi=110)
        return path
