"""The module algebra: atoms, bonds and combinators with mass, sensitivity and modular norm."""
from .atoms import Conv2D, Embed, Linear
from .bonds import (GELU, Add, AvgPool, CausalSelfAttention, Flatten, GlobalAvgPool, Identity,
                    LayerNorm, MeanSubtract, Mul, Positions, ReLU, RMSDivide, ScaledGELU,
                    ScaledReLU)
from .module import Atom, Bond, Module, Residual, Sequence, Tuple
from .spectral import exact_spectral_norm, power_step

__all__ = [
    "Module", "Atom", "Bond", "Sequence", "Tuple", "Residual",
    "Linear", "Embed", "Conv2D",
    "Identity", "ReLU", "ScaledReLU", "GELU", "ScaledGELU", "MeanSubtract", "RMSDivide",
    "LayerNorm", "Flatten", "AvgPool", "GlobalAvgPool", "Add", "Mul", "Positions",
    "CausalSelfAttention", "exact_spectral_norm", "power_step",
]
