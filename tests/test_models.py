"""fpnets.models: architectures, variants, the reference Lipschitz rule and the reference checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fpnets import IFT, JFB, Anderson, CGNormal, Picard, Unrolled, couples_samples
from fpnets.layers import lipschitz_estimate
from fpnets.models import (
    ARCHS,
    VARIANTS,
    FixedPointNetwork,
    build_model,
    load_reference_checkpoint,
    map_reference_state_dict,
    read_reference_checkpoint,
    valid_options,
)
from fpnets.norms import l2_norm, max_channel_norm
from fpnets.train import train_step

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "jfb-reference"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference checkpoints not found at {REFERENCE}"
)

COUNTS = {
    ("digits", ()): 11_224,
    ("mnist", ()): 54_352,
    ("mnist", (("latent_blocks", 1), ("gamma", 0.9))): 35_856,
    ("svhn", ()): 163_744,
    ("cifar10-unaugmented", ()): 163_744,
    ("cifar10", ()): 843_430,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def inputs(model: FixedPointNetwork, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *model.input_shape, generator=g)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("arch", "opts"), list(COUNTS))
def test_exact_parameter_counts(arch: str, opts: tuple, variant: str) -> None:
    model = build_model(arch, variant, **dict(opts))
    assert n_params(model) == COUNTS[(arch, opts)]


def test_variants_share_parameter_names() -> None:
    fpn = build_model("mnist", "fpn").state_dict()
    explicit = build_model("mnist", "explicit").state_dict()
    assert {k: v.shape for k, v in fpn.items()} == {k: v.shape for k, v in explicit.items()}
    params = {k for k, _ in build_model("mnist", "fpn").named_parameters()}
    for variant in ("jacobian", "contractive"):
        assert {k for k, _ in build_model("mnist", variant).named_parameters()} == params


def test_svhn_unused_batchnorms_are_kept_but_frozen() -> None:
    model = build_model("svhn")
    unused = [*model.encoder.unused_bn1.parameters(), *model.encoder.unused_bn2.parameters()]
    assert sum(p.numel() for p in unused) == 256
    assert not any(p.requires_grad for p in unused)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(arch: str, variant: str) -> None:
    torch.manual_seed(0)
    # a short solve keeps this fast; shapes do not depend on it (solves are checked below)
    backward = IFT(CGNormal(max_iter=4), warn=False) if variant == "jacobian" else None
    model = build_model(arch, variant, num_classes=7, solver={"max_iter": 4}, backward=backward)
    x = inputs(model)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.readout.fc.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    if variant == "explicit":
        assert model.solution is None and model.converged_fraction is None
    else:
        assert model.solution is not None and model.solution.value.shape[0] == 2


@pytest.mark.parametrize("arch", ["digits", "mnist"])
def test_fpn_forward_converges_to_a_fixed_point_in_eval_mode(arch: str) -> None:
    torch.manual_seed(1)
    model = build_model(arch, "fpn").eval()
    x = inputs(model, batch=4)
    with torch.no_grad():
        model(x)
        sol = model.solution
        assert sol is not None and bool(sol.converged.all()) and model.converged_fraction == 1.0
        assert float(sol.residual.max()) <= sol.tol
        q = model.encoder(x)
        u = sol.value
        assert torch.all(max_channel_norm(model.operator(u, q) - u) <= sol.tol)
        torch.testing.assert_close(model(x), model.readout(u))


def test_default_solver_settings_follow_the_paper() -> None:
    expected = {
        ("mnist", "fpn"): (0.1, 50),
        ("mnist", "jacobian"): (0.1, 50),
        ("svhn", "fpn"): (1e-4, 200),
        ("cifar10", "fpn"): (0.1, 50),
        ("cifar10", "jacobian"): (1e-4, 500),
        ("cifar10-unaugmented", "jacobian"): (0.1, 50),
    }
    for (arch, variant), (tol, max_iter) in expected.items():
        solver = build_model(arch, variant).latent.solver
        assert isinstance(solver, Picard)
        assert (solver.tol, solver.max_iter) == (tol, max_iter)
        assert solver.norm is max_channel_norm
    assert isinstance(build_model("mnist").latent.backward_mode, JFB)
    back = build_model("cifar10", "jacobian").latent.backward_mode
    assert isinstance(back, IFT) and isinstance(back.solver, CGNormal)
    assert (back.solver.tol, back.solver.max_iter) == (1e-4, 500)


def test_solver_and_backward_options() -> None:
    model = build_model("mnist", solver={"name": "anderson", "m": 3}, backward={"name": "neumann", "k": 2})
    solver = model.latent.solver
    assert isinstance(solver, Anderson) and solver.m == 3 and (solver.tol, solver.max_iter) == (0.1, 50)
    assert solver.norm is max_channel_norm
    assert model.latent.backward_mode.k == 2
    own = Picard(tol=1e-3, max_iter=7)
    model = build_model("digits", "jacobian", solver=own, backward="jfb")
    assert model.latent.solver is own and isinstance(model.latent.backward_mode, JFB)
    model = build_model("digits", tol=1e-3, max_iter=11, lipschitz="none", gamma=0.7, latent_blocks=3)
    assert (model.latent.solver.tol, model.latent.solver.max_iter) == (1e-3, 11)
    assert model.gamma == 0.7 and model.operator.num_blocks == 3 and model.lipschitz == "none"
    assert build_model("mnist", "explicit").lipschitz == "none"
    assert build_model("mnist", "contractive").lipschitz == "none"
    assert build_model("mnist", "jacobian").lipschitz == "reference"


def test_explicit_is_readout_of_one_application_at_zero() -> None:
    torch.manual_seed(2)
    model = build_model("mnist", "explicit").eval()
    x = inputs(model, batch=3)
    with torch.no_grad():
        q = model.encoder(x)
        expected = model.readout(model.operator(torch.zeros_like(q), q))
        torch.testing.assert_close(model(x), expected)
    fpn = build_model("mnist", "fpn").eval()
    fpn.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(fpn(x), expected)


def test_latent_batchnorm_statistics_update_at_every_iteration_in_training() -> None:
    torch.manual_seed(3)
    model = build_model("mnist", "fpn", latent_blocks=1).train()
    bn = model.operator.blocks[0].norm
    assert isinstance(bn, nn.BatchNorm2d) and not bn.affine
    before = int(bn.num_batches_tracked)
    model(inputs(model, batch=4))
    sol = model.solution
    assert sol is not None
    # every evaluation of R in the solve; the last one (T(u*) for the whole batch) also carries the
    # JFB gradient, so no extra application is made
    assert int(bn.num_batches_tracked) - before == sol.evaluations


def test_jacobian_variant_has_no_batchnorm_in_T() -> None:
    for arch in ARCHS:
        model = build_model(arch, "jacobian").train()
        assert not any(isinstance(m, _BatchNorm) for m in model.operator.modules())
        assert not couples_samples(model.operator)
        assert any(isinstance(m, _BatchNorm) for m in build_model(arch, "fpn").operator.modules())


def test_jacobian_variant_gradient_matches_a_long_unroll_in_float64() -> None:
    torch.manual_seed(4)
    solver = Picard(tol=1e-13, max_iter=400, norm=l2_norm)
    ift = build_model(
        "digits", "jacobian", solver=solver, backward=IFT(CGNormal(tol=1e-12, max_iter=400), throw=True)
    )
    unrolled = build_model("digits", "jacobian", solver=solver, backward=Unrolled())
    unrolled.load_state_dict(ift.state_dict())
    x = inputs(ift, batch=2).double()
    grads = []
    for model in (ift, unrolled):
        model.double().eval()
        model(x).square().sum().backward()
        assert model.solution is not None and bool(model.solution.converged.all())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "latent.operator.blocks.0.conv1.weight" in grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-7, atol=1e-10)
    # and JFB differs from both (the latent gradient is not exact)
    jfb = build_model("digits", "jacobian", solver=solver, backward=JFB()).double().eval()
    jfb.load_state_dict(ift.state_dict())
    jfb(x).square().sum().backward()
    w = "latent.operator.blocks.0.conv1.weight"
    assert not torch.allclose(dict(jfb.named_parameters())[w].grad, grads[0][w])


@pytest.mark.parametrize("arch", ["digits", "mnist", "cifar10-unaugmented", "cifar10"])
def test_contractive_variant_is_a_gamma_contraction(arch: str) -> None:
    torch.manual_seed(5)
    model = build_model(arch, "contractive", gamma=0.8).double().train()
    op = model.operator
    assert not any(isinstance(m, _BatchNorm) for m in op.modules())
    op.requires_grad_(False)  # only derivatives in u are needed (and the weight norms get cached)
    with torch.no_grad():  # blow the raw weights up: the bound must not care
        for p in op.rescalable_parameters():
            p.mul_(10.0)
        shape = model.encoder.eval()(inputs(model, batch=1).double()).shape  # (1, C, h, w) latent
    g = torch.Generator().manual_seed(0)
    q = 3 * torch.randn(shape, generator=g, dtype=torch.float64)  # stands in for Q(d)
    for _ in range(2):
        u = 3 * torch.randn(q.shape, generator=g, dtype=q.dtype)
        est = lipschitz_estimate(lambda z, q=q: op(z, q), u, iters=30, generator=g)
        assert torch.all(est <= 0.8 * (1 + 1e-6)), est
        v = u + torch.randn(q.shape, generator=g, dtype=q.dtype)
        with torch.no_grad():
            ratio = l2_norm(op(u, q) - op(v, q)) / l2_norm(u - v)
        assert torch.all(ratio <= 0.8), ratio


def test_reference_lipschitz_rule_rescales_after_the_optimizer_step() -> None:
    torch.manual_seed(6)
    model = build_model("mnist", "jacobian", gamma=0.5, solver={"max_iter": 5}).train()
    assert model.lipschitz == "reference"
    op = model.operator
    with torch.no_grad():
        for p in op.rescalable_parameters():
            p.mul_(4.0)
    before = [p.detach().clone() for p in op.rescalable_parameters()]
    assert model.after_optimizer_step() is None  # nothing measured yet
    model(inputs(model, batch=8))
    ratio = model.after_optimizer_step()
    assert ratio is not None and ratio > model.gamma
    factor = (model.gamma / ratio) ** (1 / op.num_blocks)
    for p, b in zip(op.rescalable_parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), b * factor)
    assert model.after_optimizer_step() is None  # the stored point is used once
    model.eval()
    model(inputs(model, batch=2))
    assert model.after_optimizer_step() is None  # eval forwards store nothing


def test_reference_lipschitz_rule_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(8)
    model = build_model("mnist", "fpn").train()
    model(inputs(model, batch=8))
    stats = [b.clone() for b in model.operator.buffers()]
    assert model.after_optimizer_step() is not None
    for b, s in zip(model.operator.buffers(), stats, strict=True):
        assert torch.equal(b, s)


def test_reference_lipschitz_rule_leaves_a_contraction_alone_and_can_be_off() -> None:
    torch.manual_seed(7)
    model = build_model("digits", "contractive", lipschitz="reference").train()
    before = [p.detach().clone() for p in model.operator.rescalable_parameters()]
    model(inputs(model, batch=4))
    ratio = model.after_optimizer_step()
    assert ratio is not None and ratio <= model.gamma
    for p, b in zip(model.operator.rescalable_parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    off = build_model("mnist", "fpn", lipschitz="none").train()
    off(inputs(off))
    assert off.after_optimizer_step() is None


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown arch 'resnet'; valid archs: digits, mnist, svhn, cifar10"):
        build_model("resnet")
    with pytest.raises(ValueError, match=r"unknown variant 'deq'; valid variants: fpn, explicit, jacobian"):
        build_model("mnist", "deq")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'depth' for arch 'mnist'; valid options: .*gamma"
    ):
        build_model("mnist", depth=3)
    assert {"solver", "backward", "gamma", "latent_blocks", "lipschitz", "in_channels", "num_classes"} <= set(
        valid_options("cifar10")
    )
    with pytest.raises(ValueError, match=r"unknown lipschitz mode 'spectral'; valid modes: reference, none"):
        build_model("mnist", lipschitz="spectral")
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\)"):
        build_model("mnist", gamma=1.0)
    with pytest.raises(ValueError, match="latent_blocks must be a positive integer"):
        build_model("mnist", latent_blocks=0)
    with pytest.raises(ValueError, match="give either a solver object or tol, not both"):
        build_model("mnist", solver=Picard(), tol=1e-3)
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        build_model("mnist", solver="newton")
    with pytest.raises(TypeError, match="solver must be a fpnets Solver"):
        build_model("mnist", solver=3)
    with pytest.raises(ValueError, match="a mapping needs a 'name' key"):
        build_model("mnist", backward={"k": 3})
    model = build_model("mnist")
    with pytest.raises(ValueError, match=re.escape("mnist model expects input of shape (B, 1, 28, 28)")):
        model(torch.randn(2, 1, 32, 32))


def test_reader_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"net_state_dict": {}, "payload": Path("x")}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        read_reference_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# reference checkpoints

CHECKPOINTS = {
    "MNIST_FPN_weights_99.36.pth": ("mnist", "fpn", 35_856, 1),
    "MNIST_FPN_Explicit_weights_99.29.pth": ("mnist", "explicit", 35_856, 1),
    "SVHN_FPN_weights_94.12.pth": ("svhn", "fpn", 163_744, 1),
    "CIFAR10_FPN_Unaugmented_weights_80.45.pth": ("cifar10-unaugmented", "fpn", 163_744, 1),
}


@needs_reference
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_reference_checkpoint_loads_one_to_one(name: str) -> None:
    arch, variant, count, blocks = CHECKPOINTS[name]
    path = REFERENCE / name
    raw = read_reference_checkpoint(path)["net_state_dict"]
    model, info = load_reference_checkpoint(path)
    assert (info["arch"], info["variant"], info["parameters"], info["latent_blocks"]) == (
        arch,
        variant,
        count,
        blocks,
    )
    assert model.variant == variant and n_params(model) == count and info["gamma"] == 0.9
    assert info["best_test_acc"] == pytest.approx(float(name.rsplit("_", 1)[1][:-4]), abs=5e-3)
    assert info["epochs"] == len(info["test_acc_hist"]) and info["best_epoch"] >= 1
    # names and shapes: the reference state dict maps onto a freshly built model exactly
    fresh = build_model(arch, variant, latent_blocks=blocks, gamma=0.9).state_dict()
    mapped = map_reference_state_dict(raw, "mnist" if arch == "mnist" else "svhn")
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in fresh.items()}
    assert len(info["key_map"]) == len(raw) == len(set(info["key_map"].values()))
    loaded = model.state_dict()
    for ref_key, ours in info["key_map"].items():
        assert torch.equal(loaded[ours], raw[ref_key]), ref_key


@needs_reference
def test_reference_checkpoint_options() -> None:
    path = REFERENCE / "MNIST_FPN_Explicit_weights_99.29.pth"
    model, info = load_reference_checkpoint(path, variant="fpn", solver={"tol": 1e-4, "max_iter": 300})
    assert model.variant == info["variant"] == "fpn" and model.latent.solver.tol == 1e-4
    with pytest.raises(ValueError, match="load into variant 'fpn' or 'explicit', got 'jacobian'"):
        load_reference_checkpoint(path, variant="jacobian")
    model, _ = load_reference_checkpoint(
        REFERENCE / "MNIST_FPN_weights_99.36.pth", solver={"tol": 1e-4, "max_iter": 300}
    )
    model.eval()
    with torch.no_grad():
        model(inputs(model, batch=2))
    assert model.converged_fraction == 1.0


def test_reference_rescale_measures_the_dependence_on_u_only() -> None:
    # both evaluations share the perturbed Q(d), as in the reference: ρ = Lip_u for a map linear in u
    from fpnets.layers import reference_rescale_

    w = torch.ones(())
    u, x = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    rho = reference_rescale_(lambda u, x: 0.3 * u + 5.0 * x, u, x, 0.5, [w], blocks=1)
    assert rho == pytest.approx(0.3, rel=1e-5) and w.item() == 1.0


def _rescale_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model("digits", "jacobian", solver={"max_iter": 5}).train()
        with torch.no_grad():
            for p in model.operator.rescalable_parameters():
                p.mul_(4.0)
        torch.manual_seed(rank)  # different data and noise on every process
        model(torch.randn(4, 1, 8, 8))
        ratio = model.after_optimizer_step()
        params = {k: p.detach() for k, p in model.named_parameters()}  # BN statistics differ, as in DDP
        torch.save({"ratio": ratio, "state": params}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_reference_rule_keeps_data_parallel_replicas_identical(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rescale_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["ratio"] == b["ratio"] > 0.5
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key


def _train_steps(lipschitz: str, steps: int, **options) -> tuple[FixedPointNetwork, list]:
    torch.manual_seed(11)
    model = build_model("digits", "fpn", lipschitz=lipschitz, **options).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ratios = []
    for i in range(steps):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        # the trainer's step; dropout draws from the global RNG; the rule's ratio ρ (None: not probed)
        train_step(
            model,
            x,
            y,
            nn.functional.cross_entropy,
            opt,
            after_step=lambda: ratios.append(model.after_optimizer_step()),
        )
    return model, ratios


def test_a_probe_that_does_not_rescale_leaves_training_unchanged() -> None:
    probed, ratios = _train_steps("reference", 6)
    plain, _ = _train_steps("none", 6)
    assert all(r is not None and r < probed.gamma for r in ratios)  # measured, never rescaled
    assert probed.rescales == 0
    for (name, a), b in zip(probed.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_lipschitz_every_k_steps() -> None:
    _, ratios = _train_steps("reference", 7, lipschitz_every=3)
    assert [r is not None for r in ratios] == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="lipschitz_every must be a positive integer"):
        build_model("digits", "fpn", lipschitz_every=0)


@pytest.mark.parametrize("slope", [0.0, 0.1, 0.3, 1.0])
def test_inner_block_sigma_twice_is_one_leaky_relu_of_slope_squared(slope: float) -> None:
    from fpnets.models.base import InnerBlock

    block = InnerBlock(4, batch_norm=False, contractive=False, negative_slope=slope).double()
    z, h = torch.randn(2, 4, 5, 5, dtype=torch.float64), 3 * torch.randn(2, 4, 5, 5, dtype=torch.float64)
    sigma_twice = torch.nn.functional.leaky_relu(torch.nn.functional.leaky_relu(h, slope), slope)
    torch.testing.assert_close(block.combine(z, h), z + sigma_twice, rtol=1e-14, atol=1e-15)
