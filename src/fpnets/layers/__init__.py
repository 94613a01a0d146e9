"""Contractive building blocks: bounded layers, γ-contractive operators, Lipschitz tools."""

from ._contractive import (
    Contraction,
    ContractiveConvOperator,
    lipschitz_estimate,
    reference_rescale_,
    rescale_to_gamma_,
)
from ._potential import POTENTIAL_ACTIVATIONS, ConvexPotentialConv2d
from ._spectral import SpectralConv2d, SpectralLinear, conv_operator_norm

__all__ = [
    "POTENTIAL_ACTIVATIONS",
    "Contraction",
    "ContractiveConvOperator",
    "ConvexPotentialConv2d",
    "SpectralConv2d",
    "SpectralLinear",
    "conv_operator_norm",
    "lipschitz_estimate",
    "reference_rescale_",
    "rescale_to_gamma_",
]
