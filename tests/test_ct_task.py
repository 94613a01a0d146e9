"""The CT task pieces: ellipse data and its cache, user data, metrics, F-FPN models and baselines."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import fpnets
from fpnets.layers import lipschitz_estimate
from fpnets.operators.radon import ParallelBeamGeometry, RadonTransform
from fpnets.tasks.ct import (
    FFPN,
    METRIC_DIRECTIONS,
    METRICS,
    CacheRebuildWarning,
    ContractiveRegulariser,
    DifferenceRegulariser,
    EllipseDataConfig,
    FBPReconstructor,
    TVReconstructor,
    TVSuperiorization,
    UnrolledFFPN,
    build_ct_model,
    load_ct_pairs,
    load_ellipse_splits,
    measure,
    mse,
    psnr,
    random_ellipses,
    reconstruction_loss,
    ssim,
)
from fpnets.tasks.ct import data as ct_data

GEOM = ParallelBeamGeometry(n=16, n_angles=8, n_detectors=23)
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny problems: several threads only add OpenMP synchronisation on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**kw: object) -> EllipseDataConfig:
    opts: dict = {"geometry": GEOM, "n_train": 6, "n_val": 3, "n_test": 3, "seed": 5}
    opts.update(kw)
    return EllipseDataConfig(**opts)


# ----------------------------------------------------------------------------------------------
# Metrics


def test_metrics_match_scikit_image() -> None:
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 1, 21, 18, dtype=F64, generator=g)
    recon = (truth + 0.1 * torch.randn(truth.shape, dtype=F64, generator=g)).clamp(0, 1)
    for b in range(4):
        t, r = truth[b, 0].numpy(), recon[b, 0].numpy()
        assert float(ssim(recon, truth)[b]) == pytest.approx(
            structural_similarity(t, r, data_range=1.0), abs=1e-4
        )
        assert float(psnr(recon, truth)[b]) == pytest.approx(
            peak_signal_noise_ratio(t, r, data_range=1.0), abs=1e-4
        )
        assert float(mse(recon, truth)[b]) == pytest.approx(mean_squared_error(t, r), abs=1e-10)
    assert ssim(recon.float(), truth.float()).dtype == torch.float32


def test_metric_directions_and_identity() -> None:
    assert METRIC_DIRECTIONS == {"psnr": "higher", "ssim": "higher", "mse": "lower"}
    assert set(METRICS) == set(METRIC_DIRECTIONS)
    x = torch.rand(2, 1, 9, 9, dtype=F64)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=F64))
    assert torch.isinf(psnr(x, x)).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:, :, :8])
    with pytest.raises(ValueError, match="smaller than the 7×7 window"):
        ssim(x[..., :5, :5], x[..., :5, :5])


# ----------------------------------------------------------------------------------------------
# Data


def test_ellipses_are_seeded_and_in_the_unit_interval() -> None:
    a = random_ellipses(5, 32, np.random.default_rng(1))
    b = random_ellipses(5, 32, np.random.default_rng(1))
    c = random_ellipses(5, 32, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert (a.reshape(5, -1) > 0).any(axis=1).all()  # no empty image


def test_noise_is_a_fraction_of_each_samples_mean_line_integral() -> None:
    radon = RadonTransform(GEOM)
    images = torch.from_numpy(random_ellipses(4, 16, np.random.default_rng(0)))[:, None]
    clean = radon(images)
    noisy = measure(radon, images, 0.05, torch.Generator().manual_seed(0))
    rel = (noisy - clean).flatten(1).std(1) / clean.abs().flatten(1).mean(1)
    # 184 draws per sample: the sample std is within ~20 % of 0.05
    assert ((rel - 0.05).abs() < 0.01).all()
    torch.testing.assert_close(measure(radon, images, 0.0), clean)


def test_splits_shapes_cache_and_independence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config()
    data = load_ellipse_splits(tmp_path, cfg)
    assert data.train.images.shape == (6, 1, 16, 16) and data.train.images.dtype == torch.float32
    assert data.test.sinograms.shape == (3, 1, 8, 23)
    assert len(data.val) == 3 and data.split("val") is data.val
    assert float(data.train.images.min()) >= 0 and float(data.train.images.max()) <= 1
    assert not torch.equal(data.val.images, data.test.images)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_generation(_: EllipseDataConfig) -> None:
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(ct_data, "_generate", no_generation)
        again = load_ellipse_splits(tmp_path, cfg)
    torch.testing.assert_close(again.train.sinograms, data.train.sinograms)
    # growing the training set leaves val and test unchanged
    bigger = load_ellipse_splits(None, small_config(n_train=9))
    torch.testing.assert_close(bigger.test.images, data.test.images)
    torch.testing.assert_close(bigger.val.sinograms, data.val.sinograms)
    torch.testing.assert_close(bigger.train.images[:6], data.train.images)
    inputs, targets = data.train.dataset()[0]
    assert inputs.shape == (1, 8, 23) and targets.shape == (1, 16, 16)


def test_cache_from_other_parameters_is_rebuilt(tmp_path: Path) -> None:
    cfg = small_config()
    other = small_config(noise=0.05)
    load_ellipse_splits(tmp_path, other)
    (other_path,) = tmp_path.glob("*.npz")
    target = tmp_path / cfg.cache_name()
    other_path.rename(target)  # a file from other parameters under this configuration's name
    with pytest.warns(CacheRebuildWarning, match="other parameters.*noise"):
        data = load_ellipse_splits(tmp_path, cfg)
    fresh = load_ellipse_splits(None, cfg)
    torch.testing.assert_close(data.train.sinograms, fresh.train.sinograms)
    load_ellipse_splits(tmp_path, cfg)  # the rebuilt file is now valid: no warning (warnings are errors)


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path: Path) -> None:
    cfg = small_config()
    (tmp_path / cfg.cache_name()).write_bytes(b"not a zip file")
    with pytest.warns(CacheRebuildWarning, match="could not be read"):
        data = load_ellipse_splits(tmp_path, cfg)
    assert data.train.images.shape == (6, 1, 16, 16)


def test_user_pairs_npz_and_hdf5(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    images = np.random.default_rng(0).random((3, 16, 16))
    sinos = np.random.default_rng(1).random((3, 8, 23))
    np.savez(tmp_path / "pairs.npz", images=images, sinograms=sinos)
    split = load_ct_pairs(tmp_path / "pairs.npz", GEOM)
    assert split.images.shape == (3, 1, 16, 16) and split.sinograms.shape == (3, 1, 8, 23)
    np.testing.assert_allclose(split.images[:, 0].numpy(), images.astype(np.float32))
    with h5py.File(tmp_path / "pairs.h5", "w") as f:
        f["u"] = images[:, None]
        f["d"] = sinos
    split = load_ct_pairs(tmp_path / "pairs.h5", GEOM, images_key="u", sinograms_key="d")
    assert split.sinograms.shape == (3, 1, 8, 23)


@pytest.mark.parametrize(
    ("images", "sinos", "match"),
    [
        (np.zeros((3, 16, 15)), np.zeros((3, 8, 23)), r"images have shape \(3, 16, 15\)"),
        (np.zeros((3, 16, 16)), np.zeros((3, 23, 8)), "sinograms have shape"),
        (np.zeros((3, 16, 16)), np.zeros((2, 8, 23)), "3 images but 2 sinograms"),
        (np.full((3, 16, 16), np.nan), np.zeros((3, 8, 23)), "NaN or Inf"),
    ],
)
def test_user_pairs_errors(tmp_path: Path, images: np.ndarray, sinos: np.ndarray, match: str) -> None:
    np.savez(tmp_path / "bad.npz", images=images, sinograms=sinos)
    with pytest.raises(ValueError, match=match):
        load_ct_pairs(tmp_path / "bad.npz", GEOM)


def test_user_pairs_file_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "keys.npz", x=np.zeros(3))
    with pytest.raises(KeyError, match="no array named 'images'"):
        load_ct_pairs(tmp_path / "keys.npz", GEOM)
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_ct_pairs(tmp_path / "broken.npz", GEOM)
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_ct_pairs(tmp_path / "x.csv", GEOM)
    with pytest.raises(FileNotFoundError):
        load_ct_pairs(tmp_path / "missing.npz", GEOM)


# ----------------------------------------------------------------------------------------------
# Models


def conv_params(c_in: int, c_out: int) -> int:
    return c_out * c_in * 9 + c_out


def test_paper_parameter_count() -> None:
    # the authors' ellipse network: convs 1→42, then six 42→42, then 42→1 (3×3, with bias)
    expected = conv_params(1, 42) + 6 * conv_params(42, 42) + conv_params(42, 1)
    assert expected == 96_307  # the count the authors' notebook prints
    assert sum(p.numel() for p in DifferenceRegulariser().parameters()) == expected
    assert sum(p.numel() for p in ContractiveRegulariser().parameters()) == expected


def test_contractive_regulariser_respects_its_bound() -> None:
    reg = ContractiveRegulariser(channels=4, blocks=2, gamma=0.7).double()
    with torch.no_grad():  # make the raw weights large: the bound must hold anyway
        for p in reg.parameters():
            p.mul_(10)
    assert reg.lipschitz_bound == 0.7
    u = torch.randn(3, 1, 10, 10, dtype=F64)
    assert (lipschitz_estimate(reg, u, iters=30) <= 0.7 + 1e-9).all()
    v = u + 0.3 * torch.randn_like(u)
    ratio = torch.linalg.vector_norm((reg(u) - reg(v)).flatten(1), dim=1) / torch.linalg.vector_norm(
        (u - v).flatten(1), dim=1
    )
    assert (ratio <= 0.7 + 1e-12).all()


def sinograms(batch: int = 3, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_ellipse_splits(None, small_config(n_train=batch, n_val=0, n_test=0))
    return data.train.sinograms.to(dtype), data.train.images.to(dtype)


def test_ffpn_contractive_reaches_the_fixed_point_and_trains() -> None:
    d, u_true = sinograms()
    model = FFPN(
        GEOM,
        regulariser="contractive",
        channels=4,
        blocks=1,
        gamma=0.5,
        solver=fpnets.Picard(tol=1e-8, max_iter=200),
    ).double()
    assert model.lipschitz_bound == pytest.approx(0.5)
    u = model(d)
    sol = model.solution
    assert sol is not None and sol.converged.all()
    with torch.no_grad():
        residual = torch.linalg.vector_norm((model.operator(u, d) - u).flatten(1), dim=1)
    assert (residual <= 1e-7).all()
    assert float(u.detach().min()) >= 0 and float(u.detach().max()) <= 1
    reconstruction_loss(u, u_true).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_ffpn_accepts_solver_and_backward_objects_and_inits() -> None:
    d, _ = sinograms(2)
    common = {"regulariser": "contractive", "channels": 3, "blocks": 1, "gamma": 0.5}
    ref = FFPN(GEOM, **common, solver=fpnets.Picard(tol=1e-9, max_iter=300)).double()
    other = FFPN(
        GEOM, **common, solver=fpnets.Anderson(tol=1e-9, max_iter=300), backward=fpnets.IFT(), init="zeros"
    ).double()
    other.load_state_dict(ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(d), ref(d), rtol=0, atol=1e-7)  # a unique fixed point
    with pytest.raises(TypeError, match="solver must be a fpnets Solver"):
        FFPN(GEOM, solver="picard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown init"):
        FFPN(GEOM, init="ones")


def test_ffpn_input_checks() -> None:
    model = FFPN(GEOM, channels=2, blocks=2)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 23\) for this geometry"):
        model(torch.zeros(2, 1, 23, 8))
    bad = torch.zeros(2, 1, 8, 23)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(bad)


def test_reference_lipschitz_rule_rescales_the_blocks() -> None:
    d, u_true = sinograms(2, torch.float32)
    model = FFPN(GEOM, channels=3, blocks=2, gamma=0.01, solver=fpnets.Picard(tol=1e-3, max_iter=3))
    assert model.lipschitz == "reference" and model.lipschitz_bound is None
    model.train()
    reconstruction_loss(model(d), u_true).backward()
    before = [p.detach().clone() for p in model.regulariser.rescalable_parameters()]
    rho = model.after_optimizer_step()
    assert rho is not None and rho > 0.01  # γ = 0.01 is far below any ratio of this T
    factor = (0.01 / rho) ** (1 / 2)  # (γ/ρ)^(1/blocks)
    for after, old in zip(model.regulariser.rescalable_parameters(), before, strict=True):
        torch.testing.assert_close(after.detach(), old * factor)
    assert model.rescales == 1
    assert model.after_optimizer_step() is None  # the stored point is used once
    model.eval()
    model(d)
    assert model.after_optimizer_step() is None  # only training forwards are measured


def test_unrolled_network_is_k_applications_of_t() -> None:
    d, u_true = sinograms(2)
    unrolled = UnrolledFFPN(GEOM, steps=4, channels=3, blocks=2).double()
    ffpn = FFPN(GEOM, channels=3, blocks=2)
    assert sum(p.numel() for p in unrolled.parameters()) == sum(p.numel() for p in ffpn.parameters())
    out = unrolled(d)
    with torch.no_grad():
        u = unrolled.initial(d)
        for _ in range(4):
            u = unrolled.operator(u, d)
    torch.testing.assert_close(out.detach(), u)
    reconstruction_loss(out, u_true).backward()
    assert all(p.grad is not None for p in unrolled.parameters())


def test_tv_superiorisation_gradients_match_finite_differences() -> None:
    d, u_true = sinograms(2)
    model = TVSuperiorization(GEOM, iterations=3, step=0.5, decay=0.8).double()
    assert sum(p.numel() for p in model.parameters()) == 2
    assert float(model.step.detach()) == pytest.approx(0.5)
    assert float(model.decay.detach()) == pytest.approx(0.8)
    loss = reconstruction_loss(model(d), u_true)
    loss.backward()
    for p in (model.step_param, model.decay_param):
        assert p.grad is not None
        with torch.no_grad():
            p += 1e-6
            up = reconstruction_loss(model(d), u_true)
            p -= 2e-6
            down = reconstruction_loss(model(d), u_true)
            p += 1e-6
        assert float(p.grad) == pytest.approx(float(up - down) / 2e-6, rel=1e-4, abs=1e-9)


def test_baselines_and_lambda_selection() -> None:
    d, u_true = sinograms(3)
    fbp = FBPReconstructor(GEOM)
    out = fbp(d)
    assert out.shape == u_true.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    tv = TVReconstructor(GEOM, iterations=60)
    scores = tv.select_lambda(d, u_true, lambdas=(1e-4, 1e-2, 10.0))
    assert tv.lam == max(scores, key=lambda k: scores[k])
    # λ = 10 flattens everything: it cannot be the best on ellipses
    assert tv.lam != 10.0
    assert tv(d).shape == u_true.shape and tv.last_result is not None


def test_build_ct_model_kinds() -> None:
    expected = {
        "ffpn": FFPN,
        "ffpn-contractive": FFPN,
        "unrolled": UnrolledFFPN,
        "tvs": TVSuperiorization,
        "tv": TVReconstructor,
        "fbp": FBPReconstructor,
    }
    small = {
        "ffpn": {"channels": 2},
        "ffpn-contractive": {"channels": 2, "blocks": 1},
        "unrolled": {"channels": 2},
    }
    for kind, cls in expected.items():
        model = build_ct_model(kind, GEOM, **small.get(kind, {}))
        assert isinstance(model, cls) and model.solution is None
    assert isinstance(
        build_ct_model("ffpn-contractive", GEOM, channels=2).regulariser, ContractiveRegulariser
    )
    with pytest.raises(ValueError, match="unknown CT model kind"):
        build_ct_model("cnn", GEOM)
    with pytest.raises(TypeError):
        build_ct_model("fbp", GEOM, channels=3)
    u, v = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert float(reconstruction_loss(u, v)) == pytest.approx(float(mse(u, v).mean()), rel=1e-6)
    assert math.isfinite(float(psnr(u, v).mean()))


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    doc = Path(__file__).resolve().parents[1] / "docs" / "ct.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert blocks
    for code in blocks:
        exec(compile(code, str(doc), "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "converged" in out and "psnr" in out


def test_reconstruction_figure_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fpnets.tasks.ct.figures import reconstruction_figure

    d, u = sinograms(2, torch.float32)
    path = reconstruction_figure(u, {"fbp": FBPReconstructor(GEOM)(d)}, tmp_path / "fig" / "recon.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="has shape"):
        reconstruction_figure(u, {"bad": u[:, :, :4]}, tmp_path / "x.png")


def test_every_model_has_the_step_hook() -> None:
    for kind in ("ffpn-contractive", "unrolled", "tvs", "tv", "fbp"):
        model = build_ct_model(
            kind, GEOM, **({"channels": 2} if "ffpn" in kind or kind == "unrolled" else {})
        )
        assert model.after_optimizer_step() is None
    with pytest.raises(ValueError, match="lipschitz='reference' needs"):
        FFPN(GEOM, regulariser=torch.nn.Identity(), lipschitz="reference")
