"""Physics and constraint sets, independent of any network.

Public modules (each lists its names in ``__all__``):

- :mod:`fpnets.operators.radon`: the 2-D parallel-beam Radon transform A, its adjoint Aᵀ, filtered
  back-projection and the relaxed projection step onto measurement-consistent images (CT).
- :mod:`fpnets.operators.tv`: total-variation reconstruction (primal–dual) for CT baselines.
- :mod:`fpnets.operators.simplex`: Euclidean projection onto the probability simplex Δ and products of simplices.
- :mod:`fpnets.operators.affine`: projection onto affine sets {x : N x = b} (flow conservation).
"""
