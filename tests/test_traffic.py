"""Traffic routing: TNTP reader, network, equilibrium solver, data sets, metrics."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from fpnets.tasks.traffic import (
    ContextModel,
    LinkCosts,
    Network,
    TNTPError,
    build_dataset,
    relative_gap,
    solve_equilibrium,
)
from fpnets.tasks.traffic import data as traffic_data
from fpnets.tasks.traffic.metrics import (
    conservation_error,
    relative_error,
    relative_error_total,
    trafix_score,
    wardrop_gap,
)
from fpnets.tasks.traffic.tntp import read_net, read_trips

from conftest import load_benchmark

NETWORKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "transportation-networks"

# A 6-node network: zones 1, 2, 3 (first thru node 4). Links 1->3 and 3->2 would make a cheap
# path from zone 1 to zone 2 through zone 3, which the first-thru-node rule forbids.
NET = """<NUMBER OF ZONES> 3
<NUMBER OF NODES> 6
<FIRST THRU NODE> 4
<NUMBER OF LINKS> {links}
<ORIGINAL HEADER>~ Init node Term node Capacity Length FFT B Power Speed Toll Type ;
<END OF METADATA>

~ init_node term_node capacity length free_flow_time b power speed toll link_type ;
{rows}
"""
LINKS = [
    (1, 4, 100, 2),
    (4, 1, 100, 2),
    (4, 5, 80, 3),
    (5, 4, 80, 3),
    (5, 2, 100, 2),
    (2, 5, 100, 2),
    (4, 6, 60, 2),
    (6, 4, 60, 2),
    (6, 5, 60, 2),
    (5, 6, 60, 2),
    (6, 3, 100, 1),
    (3, 6, 100, 1),
    (1, 3, 100, 1),
    (3, 2, 100, 1),
]
TRIPS = """<NUMBER OF ZONES> 3
<TOTAL OD FLOW> {total}
<END OF METADATA>

Origin 1
    1 :      0.0;     2 :    120.0;     3 :    40.0;
Origin 2
    1 :     60.0;     3 :    50.0;
~ a comment line
Origin 3
    1 :     30.0;     2 :    {q32};
"""


def write_network(tmp: Path, *, links=LINKS, total: str = "300.0", q32: str = "0.0", extra: str = "") -> Path:
    rows = "\n".join(f"\t{a}\t{b}\t{c}\t1\t{t}\t0.15\t4\t0\t0\t1\t;" for a, b, c, t in links) + extra
    d = tmp / "Toy"
    d.mkdir(exist_ok=True)
    (d / "Toy_net.tntp").write_text(NET.format(links=len(links) + extra.count("\n"), rows=rows))
    (d / "Toy_trips.tntp").write_text(TRIPS.format(total=total, q32=q32))
    return d


def toy(tmp_path: Path) -> Network:
    return Network.from_tntp(write_network(tmp_path))


# ---------------------------------------------------------------------------------------------- reader
def test_reader_parses_metadata_comments_and_semicolons(tmp_path: Path) -> None:
    net = toy(tmp_path)
    assert (net.num_nodes, net.num_zones, net.first_thru_node, net.num_links) == (6, 3, 3, len(LINKS))
    np.testing.assert_array_equal(net.tail, [a - 1 for a, *_ in LINKS])
    np.testing.assert_array_equal(net.capacity, [c for _, _, c, _ in LINKS])
    q = net.demand
    assert q[0, 1] == 120 and q[1, 2] == 50 and q[2, 0] == 30 and q.sum() == 300
    # incidence: N x = inflow − outflow; the all-or-nothing flows of one OD pair conserve flow
    n = net.incidence
    assert n.shape == (6, len(LINKS)) and np.all(n.sum(0) == 0)


def test_reader_errors_name_file_and_line(tmp_path: Path) -> None:
    d = write_network(tmp_path)
    text = (d / "Toy_net.tntp").read_text().replace("\t4\t5\t80\t1\t3", "\t4\t5\tabc\t1\t3")
    (d / "Toy_net.tntp").write_text(text)
    with pytest.raises(TNTPError, match=r"Toy_net\.tntp, line 11: capacity must be a number"):
        read_net(d / "Toy_net.tntp")


def test_reader_rejects_negative_capacity_and_demand(tmp_path: Path) -> None:
    d = write_network(tmp_path, links=[*LINKS[:-1], (3, 2, -5, 1)])
    with pytest.raises(TNTPError, match="capacity must be positive"):
        read_net(d / "Toy_net.tntp")
    d = write_network(tmp_path, q32="-3.0", total="297.0")
    with pytest.raises(TNTPError, match=r"Toy_trips\.tntp, line \d+: negative demand"):
        read_trips(d / "Toy_trips.tntp")


def test_total_od_flow_checked(tmp_path: Path) -> None:
    d = write_network(tmp_path, total="310.0")
    with pytest.raises(TNTPError, match="TOTAL OD FLOW> says 310 but the entries sum to 300"):
        Network.from_tntp(d)
    with pytest.warns(UserWarning, match="TOTAL OD FLOW"):
        net = Network.from_tntp(d, total="warn")
    assert net.demand.sum() == 300


def test_unconnected_od_pair_raises(tmp_path: Path) -> None:
    # without 6->3 and 1->3, zone 3 cannot be reached (3 is a zone: 4->...->3 needs 6->3)
    links = [lk for lk in LINKS if lk[:2] not in ((6, 3), (1, 3))]
    with pytest.raises(TNTPError, match=r"OD pairs with demand are not connected.*1->3"):
        Network.from_tntp(write_network(tmp_path, links=links))


def test_first_thru_node_is_enforced(tmp_path: Path) -> None:
    net = toy(tmp_path)
    t = net.free_flow_time[None, :]
    dist = net.shortest_paths().distances(t)[0]  # (Z, Z)
    # 1->3->2 costs 2 but passes through zone 3; the allowed route 1->4->5->2 costs 7
    assert dist[0, 1] == pytest.approx(7.0)
    assert dist[0, 2] == pytest.approx(1.0)  # ending at zone 3 is allowed
    res = solve_equilibrium(net, gap=1e-10)
    through_zone3 = net.head == 2  # links entering zone 3 (node index 2)
    # flow into zone 3 equals its demand: nothing passes through it
    assert res.link_flow[0, through_zone3].sum() == pytest.approx(net.demand[:, 2].sum(), rel=1e-9)


def test_nan_contexts_raise(tmp_path: Path) -> None:
    net = toy(tmp_path)
    model = ContextModel.random(net, seed=0)
    d = model.sample(3, seed=1)
    d[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"contexts hold NaN or Inf \(rows \[1\]\)"):
        model.capacity(net, d)


# ---------------------------------------------------------------------------------------------- solver
def braess() -> Network:
    """The Braess network of the TNTP collection: demand 6 from node 1 to node 2; analytic equilibrium."""
    tail = np.array([0, 0, 2, 2, 3])
    head = np.array([2, 3, 1, 3, 1])
    q = np.array([[0.0, 6.0], [0.0, 0.0]])
    return Network(
        name="braess",
        num_nodes=4,
        num_zones=2,
        first_thru_node=0,
        tail=tail,
        head=head,
        free_flow_time=np.array([1e-8, 50, 50, 10, 1e-8]),
        capacity=np.ones(5),
        b=np.array([1e9, 0.02, 0.02, 0.1, 1e9]),
        power=np.ones(5),
        demand=q,
    )


def test_braess_equilibrium() -> None:
    # t = (10 v, 50 + v, 50 + v, 10 + v, 10 v): every route carries 2 at cost 92
    net = braess()
    res = solve_equilibrium(net, gap=1e-12)
    np.testing.assert_allclose(res.link_flow[0], [4, 2, 2, 2, 4], rtol=1e-6)
    assert res.gap[0] <= 1e-12 and res.converged.all()
    t = net.costs().time(res.link_flow)[0]
    costs = [t[0] + t[2], t[1] + t[4], t[0] + t[3] + t[4]]
    np.testing.assert_allclose(costs, 92.0, rtol=1e-6)


def two_link(capacity: np.ndarray, power: float, b: float = 0.5) -> tuple[Network, LinkCosts]:
    """Two parallel links 1->2 (same node pair), demand 100."""
    net = Network(
        name="two",
        num_nodes=2,
        num_zones=2,
        first_thru_node=0,
        tail=np.array([0, 0]),
        head=np.array([1, 1]),
        free_flow_time=np.array([3.0, 5.0]),
        capacity=np.array([40.0, 60.0]),
        b=np.full(2, b),
        power=np.full(2, power),
        demand=np.array([[0.0, 100.0], [0.0, 0.0]]),
    )
    return net, LinkCosts(net.free_flow_time, capacity, net.b, net.power)


def test_two_parallel_links_closed_form_linear() -> None:
    # t_i = a_i + s_i v_i (power 1): v_1 = (a_2 − a_1 + s_2 q) / (s_1 + s_2) when both are used
    cap = np.array([[40.0, 60.0], [20.0, 90.0], [55.0, 30.0]])
    net, costs = two_link(cap, power=1.0)
    res = solve_equilibrium(net, costs, gap=1e-12)
    a = net.free_flow_time
    s = a * net.b / cap  # (C, 2)
    v1 = (a[1] - a[0] + s[:, 1] * 100) / (s[:, 0] + s[:, 1])
    np.testing.assert_allclose(res.link_flow[:, 0], v1, rtol=1e-8)
    np.testing.assert_allclose(res.link_flow.sum(1), 100.0, rtol=1e-12)
    assert np.all(res.gap <= 1e-12)


def test_two_parallel_links_closed_form_quartic() -> None:
    # equal t₀: t₀(1 + B (v₁/c₁)⁴) = t₀(1 + B (v₂/c₂)⁴)  =>  v₁ = q c₁ / (c₁ + c₂)
    cap = np.array([[40.0, 60.0], [20.0, 90.0]])
    net, _ = two_link(cap, power=4.0)
    costs = LinkCosts(np.array([4.0, 4.0]), cap, net.b, net.power)
    res = solve_equilibrium(net, costs, gap=1e-13)
    np.testing.assert_allclose(res.link_flow[:, 0], 100 * cap[:, 0] / cap.sum(1), rtol=1e-6)


def test_gap_certificate_and_beckmann(tmp_path: Path) -> None:
    net = toy(tmp_path)
    model = ContextModel.random(net, seed=3)
    costs = model.costs(net, model.sample(4, seed=4))
    res = solve_equilibrium(net, costs, gap=1e-10)
    np.testing.assert_allclose(relative_gap(net, costs, res.link_flow), res.gap, rtol=1e-6, atol=1e-14)
    assert np.all(res.gap <= 1e-10)
    # the equilibrium minimises Beckmann's potential: feasible perturbations of the path flows increase it
    rng = np.random.default_rng(0)
    base = costs.beckmann(res.link_flow)
    delta = res.paths.matrix()
    for _ in range(5):
        h = res.path_flow * (1 + 0.05 * rng.standard_normal(res.path_flow.shape))
        # renormalise per OD pair so the demand is met
        od = np.asarray(res.paths.od)
        q = net.od_pairs[2]
        tot = np.zeros((h.shape[0], len(q)))
        np.add.at(tot.T, od, np.maximum(h, 0).T)
        h = np.maximum(h, 0) * (q[od] / tot[:, od])
        v = (delta.T @ h.T).T
        assert np.all(costs.beckmann(v) >= base - 1e-9 * np.abs(base))
        assert np.all(relative_gap(net, costs, v) > 0)


def test_newton_steps_reach_the_same_equilibrium_in_fewer_rounds(tmp_path: Path) -> None:
    net = toy(tmp_path)
    model = ContextModel.random(net, seed=3, cap_range=0.8)  # steep: capacities down to 0.2 c₀
    costs = model.costs(net, model.sample(5, seed=4))
    ref = solve_equilibrium(net, costs, gap=1e-12, max_iter=2000)
    fast = solve_equilibrium(net, costs, gap=1e-10, sweeps=1, newton=3)
    assert np.all(fast.gap <= 1e-10) and np.all(fast.converged)
    np.testing.assert_allclose(relative_gap(net, costs, fast.link_flow), fast.gap, rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(fast.link_flow, ref.link_flow, rtol=1e-4, atol=1e-6)
    plain = solve_equilibrium(net, costs, gap=1e-10, sweeps=1)
    assert fast.iterations.sum() <= plain.iterations.sum()


def test_newton_polish_descends_on_the_path_set_and_stays_feasible(tmp_path: Path) -> None:
    from fpnets.tasks.traffic.assignment import _newton_polish, free_flow_path_flow

    net = toy(tmp_path)
    model = ContextModel.random(net, seed=3, cap_range=0.8)
    costs = model.costs(net, model.sample(3, seed=4))
    # a complete path set (every path an equilibrium uses), and on it the midpoint of the free-flow
    # all-or-nothing flows and the equilibrium: flow on several paths per OD pair, not an equilibrium
    ref = solve_equilibrium(net, costs, gap=1e-12, max_iter=2000)
    paths = ref.paths
    start = 0.5 * ref.path_flow + 0.5 * free_flow_path_flow(net, paths)[None, :]
    delta, od, q = paths.matrix(), np.asarray(paths.od), net.od_pairs[2]

    def restricted_gap(h: np.ndarray, c: LinkCosts) -> float:
        v = delta.T @ h
        t = c.time(v[None])[0]
        pc = delta @ t
        best = np.full(len(q), np.inf)
        np.minimum.at(best, od, pc)
        return float(((pc - best[od]) * h).sum() / (t @ v))

    tested = 0
    for i in range(3):
        one = costs.subset([i])
        if restricted_gap(start[i], one) <= 1e-4:
            continue  # this context's equilibrium is the all-or-nothing assignment: nothing to move
        tested += 1
        h = start[i].copy()
        h0 = h.copy()
        phi = [float(one.beckmann((delta.T @ h)[None])[0])]
        gaps = [restricted_gap(h, one)]
        for _ in range(25):
            _newton_polish(one, paths, h, 1)
            phi.append(float(one.beckmann((delta.T @ h)[None])[0]))
            gaps.append(restricted_gap(h, one))
            assert np.all(h >= 0)
            np.testing.assert_allclose(np.bincount(od, weights=h, minlength=len(q)), q, rtol=1e-12, atol=1e-9)
        assert all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(phi))  # Armijo: never up
        assert np.all(h[h0 == 0] == 0)  # only used paths move: unused ones are the sweeps' job
        assert gaps[0] > 1e-4 and gaps[-1] < 1e-6 * gaps[0]  # the Newton steps converge on the set
    assert tested == 2


@pytest.mark.skipif(
    not (NETWORKS / "SiouxFalls").is_dir(), reason="needs /work/shared transportation networks"
)
def test_sioux_falls_reproduces_best_known_flows() -> None:
    net = Network.from_tntp(NETWORKS / "SiouxFalls")
    assert (net.num_nodes, net.num_links, len(net.od_pairs[2])) == (24, 76, 528)
    best = net.best_known_flow(NETWORKS / "SiouxFalls")
    res = solve_equilibrium(net, gap=1e-7)
    assert res.gap[0] <= 1e-7
    err = np.linalg.norm(res.link_flow[0] - best) / np.linalg.norm(best)
    assert err <= 1e-4, err


# ---------------------------------------------------------------------------------------------- data
def test_dataset_cache_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_network(tmp_path)
    cache = tmp_path / "cache"
    data = build_dataset(d, 6, 2, 3, data_dir=cache, seed=1, gap=1e-9)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 3)
    assert data.train.flow.shape == (6, len(LINKS)) and data.train.context.shape == (6, 10)
    all_gaps = torch.cat([data.train.gap, data.val.gap, data.test.gap])
    assert torch.all(all_gaps <= 1e-9)
    # every stored flow is an equilibrium under its context's costs
    ctx = data.test.context.double().numpy()
    gaps = relative_gap(data.network, data.model.costs(data.network, ctx), data.test.flow.double().numpy())
    assert np.all(gaps <= 1e-6)  # float32 storage rounds the flows
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("regenerated although the cache matches")

    monkeypatch.setattr(traffic_data, "generate", boom)
    again = build_dataset(d, 6, 2, 3, data_dir=cache, seed=1, gap=1e-9)
    torch.testing.assert_close(again.train.flow, data.train.flow)
    monkeypatch.undo()
    # other parameters: another file, generated afresh
    other = build_dataset(d, 6, 2, 3, data_dir=cache, seed=2, gap=1e-9)
    assert not torch.equal(other.train.context, data.train.context)
    assert len(list(cache.glob("*.npz"))) == 2
    # a cache whose recorded parameters do not match its name is rebuilt, with a warning
    stored = dict(np.load(files[0]))
    stored["params"] = np.array(str(stored["params"]).replace('"seed": 1', '"seed": 7'))
    with open(files[0], "wb") as fh:
        np.savez(fh, **stored)
    with pytest.warns(UserWarning, match="other generation parameters"):
        rebuilt = build_dataset(d, 6, 2, 3, data_dir=cache, seed=1, gap=1e-9)
    torch.testing.assert_close(rebuilt.train.flow, data.train.flow)


def test_dataset_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train must be an integer >= 0"):
        build_dataset(write_network(tmp_path), -1, 1, 1)


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_exact_values() -> None:
    target = torch.tensor([[100.0, 0.0, 50.0, 10.0]], dtype=torch.float64)
    pred = torch.tensor([[100.4, 0.0, 50.5, 10.0]], dtype=torch.float64)
    # |Δ| / (|x| + 1e-3): 0.004 (<5e-3), 0, 0.00999 (>5e-3), 0  ->  3 of 4
    assert trafix_score(pred, target).item() == pytest.approx(0.75)
    expected = np.sqrt(0.4**2 + 0.5**2) / np.sqrt(100**2 + 50**2 + 10**2)
    assert relative_error(pred, target).item() == pytest.approx(expected)
    assert relative_error_total(pred, target) == pytest.approx(expected)
    with pytest.raises(ValueError, match="must both be"):
        relative_error(pred, target[:, :3])


def test_wardrop_gap_of_predictions(tmp_path: Path) -> None:
    net = toy(tmp_path)
    model = ContextModel.random(net, seed=0)
    d = model.sample(3, seed=5)
    res = solve_equilibrium(net, model.costs(net, d), gap=1e-11)
    x = torch.as_tensor(res.link_flow)
    ctx = torch.as_tensor(d)
    assert torch.all(wardrop_gap(x, ctx, net, model) <= 1e-10)
    assert torch.all(conservation_error(x, net) <= 1e-12)
    # a feasible non-equilibrium (one round: the free-flow all-or-nothing assignment) has a positive gap
    with pytest.warns(RuntimeWarning, match="above the target gap"):
        first = solve_equilibrium(net, model.costs(net, d), gap=1e-30, max_iter=1, sweeps=1)
    aon = torch.as_tensor(first.link_flow)
    assert torch.all(wardrop_gap(aon, ctx, net, model) > 1e-4)
    assert torch.all(conservation_error(aon, net) <= 1e-12)


def test_benchmark_script_writes_json(tmp_path: Path) -> None:
    import json

    write_network(tmp_path)
    module = load_benchmark("traffic_assignment")
    out = tmp_path / "out.json"
    args = [
        "--data-dir",
        str(tmp_path),
        "--out",
        str(out),
        "--networks",
        "Toy",
        "--gaps",
        "1e-9",
        "--contexts",
        "3",
    ]
    assert module.main(args) == 0
    result = json.loads(out.read_text())["networks"][0]
    assert result["standard_costs"][0]["gap"] <= 1e-9
    assert result["contextual"]["max_gap"] <= 1e-8 and result["contextual"]["contexts"] == 3
    # the gap ladder: flows at each gap against the tightest; the error shrinks with the gap
    out2 = tmp_path / "ladder.json"
    ladder = ["--data-dir", str(tmp_path), "--out", str(out2), "--networks", "Toy", "--gaps", ""]
    assert module.main([*ladder, "--ladder", "1e-3,1e-6,1e-11", "--ladder-contexts", "2"]) == 0
    stages = json.loads(out2.read_text())["networks"][0]["ladder"]["stages"]
    assert [s["target_gap"] for s in stages] == [1e-3, 1e-6, 1e-11]
    assert all(s["converged"] == 2 and max(s["gap"]) <= s["target_gap"] for s in stages)
    assert stages[-1]["flow_error_vs_last"] == [0.0, 0.0]
    first, second = (max(s["flow_error_vs_last"]) for s in stages[:2])
    assert 0 < second < first
    with pytest.raises(SystemExit, match=r"--ladder: gaps must go from loosest to tightest"):
        module.main([*ladder, "--ladder", "1e-8,1e-6"])
    # the agreement of two solver settings: the same unique link flows, each solve certified
    out3 = tmp_path / "agree.json"
    agree = ["--sweeps", "2", "--newton", "4", "--agree", "3", "--agree-gap", "1e-11"]
    assert (
        module.main(
            ["--data-dir", str(tmp_path), "--out", str(out3), "--networks", "Toy", "--gaps", "", *agree]
        )
        == 0
    )
    got = json.loads(out3.read_text())["networks"][0]["agreement"]
    assert got["contexts"] == 3
    for side in ("sweeps_alone", "this_setting"):
        assert got[side]["converged"] == 3 and got[side]["max_gap"] <= 1e-11
    assert got["flow_difference_median"] <= got["flow_difference_max"] < 1e-5


def test_operator_benchmark_script_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    write_network(tmp_path)
    module = load_benchmark("traffic_operator")
    out = tmp_path / "out.json"
    args = ["--data-dir", str(tmp_path), "--networks", "Toy", "--batch", "4", "--rounds", "2"]
    assert module.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["batch"] == 4 and result["relative_difference"] < 1e-6  # fused = composed
    assert set(result["ms"]) == {"forward fused", "forward composed", "jfb fused", "jfb composed"}
    assert all(v > 0 for v in result["ms"].values())
    with pytest.raises(SystemExit):
        module.main(["--data-dir", str(tmp_path), "--networks", "Nowhere"])
    assert f"no network folder {tmp_path / 'Nowhere'}" in capsys.readouterr().err


def test_generation_in_several_processes_gives_the_same_certified_data(tmp_path: Path) -> None:
    d = write_network(tmp_path)
    one = build_dataset(d, 6, 2, 3, seed=1, gap=1e-10, dtype=torch.float64)
    two = build_dataset(d, 6, 2, 3, seed=1, gap=1e-10, dtype=torch.float64, workers=2)
    for a, b in ((one.train, two.train), (one.val, two.val), (one.test, two.test)):
        assert torch.equal(a.context, b.context)  # the same contexts, in the same order
        assert torch.all(b.gap <= 1e-10)
        torch.testing.assert_close(b.flow, a.flow, rtol=1e-4, atol=1e-4)  # equal to the certificate
    params = traffic_data.DataParams("x", "f", 2, 0, 0)
    with pytest.raises(ValueError, match=r"workers must be an integer >= 0 \(0: every core\), got -1"):
        traffic_data.generate(one.network, params, workers=-1)
