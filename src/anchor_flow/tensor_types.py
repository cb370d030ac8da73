"""Named tensor types (jaxtyping), with TransformerLens' dimension names.

Runtime shape checking is switched on under pytest (``--jaxtyping-packages``).
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "BatchEdgeMask",
    "BatchPositions",
    "BatchTokens",
    "EdgeGroupIndex",
    "HeadPattern",
    "LabelLogits",
    "SaliencyMap",
]

BatchTokens = Int[Tensor, "batch pos"]
BatchPositions = Int[Tensor, " batch"]
BatchEdgeMask = Bool[Tensor, "batch query_pos key_pos"]
EdgeGroupIndex = Int[Tensor, "batch query_pos key_pos"]
HeadPattern = Float[Tensor, "batch head_index query_pos key_pos"]
SaliencyMap = Float[Tensor, "batch query_pos key_pos"]
LabelLogits = Float[Tensor, "batch n_classes"]
