"""Fixed Point Networks of the JFB paper, and a small one for the 8×8 digits.

Every network is N(d) = S(u*) with u* = T(u*; d) = R(u*, Q(d)): Q the encoder, R the latent
operator (solved by :class:`fpnets.FixedPointLayer`), S the readout. One file per family
(``digits.py``, ``mnist.py``, ``svhn.py``, ``cifar10.py``) holds its config dataclass and modules;
``base.py`` holds what they share.

>>> model = build_model("mnist", "fpn")  # 54,352 parameters, latent BatchNorm, JFB
>>> logits = model(images)  # (B, 1, 28, 28) -> (B, 10)
>>> model.solution.converged  # per-sample convergence of the last forward solve
>>> model.after_optimizer_step()  # the reference Lipschitz rule, when lipschitz="reference"
"""

from .base import (
    LIPSCHITZ_MODES,
    VARIANTS,
    ArchConfig,
    ConvReadout,
    FixedPointNetwork,
    InnerBlock,
    LatentBlock,
    LatentOperator,
    OuterBlock,
)
from .build import ARCH_TABLE, ARCHS, build_model, valid_options
from .cifar10 import CIFAR10Config
from .digits import DigitsConfig
from .mnist import MNISTConfig
from .reference import (
    KEY_RULES,
    load_reference_checkpoint,
    map_reference_state_dict,
    read_reference_checkpoint,
)
from .svhn import CIFAR10UnaugmentedConfig, SVHNConfig

__all__ = [
    "ARCHS",
    "ARCH_TABLE",
    "KEY_RULES",
    "LIPSCHITZ_MODES",
    "VARIANTS",
    "ArchConfig",
    "CIFAR10Config",
    "CIFAR10UnaugmentedConfig",
    "ConvReadout",
    "DigitsConfig",
    "FixedPointNetwork",
    "InnerBlock",
    "LatentBlock",
    "LatentOperator",
    "MNISTConfig",
    "OuterBlock",
    "SVHNConfig",
    "build_model",
    "load_reference_checkpoint",
    "map_reference_state_dict",
    "read_reference_checkpoint",
    "valid_options",
]
