"""benchmarks/traffic_identifiability.py: the capacity ranges under which given flows are a Wardrop
equilibrium hold the true capacities, and shrink to them where the flows pin them down."""

from __future__ import annotations

import numpy as np

from fpnets.tasks.traffic import ContextModel, solve_equilibrium
from test_traffic_models import small_network

from conftest import load_benchmark


def _script():
    return load_benchmark("traffic_identifiability")


def test_capacity_ranges_hold_the_truth_and_exclude_wrong_capacities() -> None:
    script = _script()
    net = small_network()
    cm = ContextModel.random(net, seed=0, cap_range=0.3)
    d = cm.sample(3, seed=1)
    res = solve_equilibrium(net, cm.costs(net, d), gap=1e-13, max_iter=400)
    truth = cm.capacity(net, d) / net.capacity - 1.0
    for i in range(len(d)):
        low, high = script.capacity_ranges(net, res.link_flow[i], 0.3, cm.b, cm.power, eps_rel=1e-9)
        used = res.link_flow[i] > 1e-9
        assert np.array_equal(~np.isnan(low), used)  # links without flow are skipped
        assert np.all(low[used] <= truth[i][used] + 1e-6) and np.all(truth[i][used] <= high[used] + 1e-6)
        assert np.all(high[used] - low[used] <= 0.6 + 1e-9)
        # the flows pin some capacities down: not every range is the whole box
        assert np.any(high[used] - low[used] < 0.6 - 1e-2)
    # flows of other capacities (every link at +r) are an equilibrium under those: their ranges hold
    # +r, and exclude the first context's capacity on some link (the flows tell the two apart)
    up = ContextModel(np.ones_like(cm.weight), cap_range=0.3)
    flows_up = solve_equilibrium(net, up.costs(net, np.ones((1, cm.dim))), gap=1e-13, max_iter=400).link_flow[
        0
    ]
    low, high = script.capacity_ranges(net, flows_up, 0.3, cm.b, cm.power, eps_rel=1e-9)
    ok = ~np.isnan(high)
    assert np.allclose(high[ok], 0.3)
    assert np.any((truth[0][ok] < low[ok] - 1e-2) | (truth[0][ok] > high[ok] + 1e-2))
