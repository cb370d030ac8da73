"""Pure computations of the anchor-distance diagnosis (paper §3.3 Eq. 11, 13; App. K;
PAPER.md §6): PCA of the target's queries, anchor features, predicted and real confusion.

No model here; :mod:`anchor_flow.applications.diagnosis.distances` records the vectors and holds
the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.results.stats import roc_auc

__all__ = [
    "DiagnosisError",
    "QueryPCA",
    "anchor_features",
    "default_layer",
    "off_diagonal",
    "predicted_confusion",
    "query_pca",
    "real_confusion",
    "repeat_kv_heads",
]


class DiagnosisError(AnchorFlowError):
    """A diagnosis request that cannot be computed (layer, components, classes)."""


def default_layer(n_layers: int) -> int:
    """The layer at two thirds of the depth, 0-indexed (the official notebook: 32 of 48).

    Example:
        >>> default_layer(48), default_layer(12), default_layer(2)
        (32, 8, 1)
    """
    return min(n_layers - 1, (2 * n_layers) // 3)


@dataclass(frozen=True)
class QueryPCA:
    """Principal directions of the target's query vectors (Eq. 13).

    Attributes:
        mean: ``[d]`` mean query.
        components: ``[M, d]`` orthonormal directions, largest variance first.
        std: ``[M]`` standard deviation of the centred queries along each direction.
    """

    mean: Float[Tensor, " d"]
    components: Float[Tensor, "M d"]
    std: Float[Tensor, " M"]


def query_pca(queries: Tensor, n_components: int = 10) -> QueryPCA:
    """PCA of the query vectors (centred; what ``sklearn.decomposition.PCA`` fits).

    Example:
        >>> pca = query_pca(torch.randn(50, 8), n_components=3)
        >>> pca.components.shape, bool((pca.std[:-1] >= pca.std[1:]).all())
        (torch.Size([3, 8]), True)

    Raises:
        DiagnosisError: not 2-D, fewer than 2 queries, or more components than
            ``min(T, d)``.
    """
    if queries.ndim != 2 or queries.shape[0] < 2:
        raise DiagnosisError(
            f"query_pca expects queries [T, d] with T >= 2; got shape {tuple(queries.shape)}"
        )
    limit = min(queries.shape)
    if isinstance(n_components, bool) or not isinstance(n_components, int):
        raise DiagnosisError(f"n_components={n_components!r}; expected an integer")
    if not 1 <= n_components <= limit:
        raise DiagnosisError(
            f"n_components={n_components} but {queries.shape[0]} queries of dimension "
            f"{queries.shape[1]} give at most {limit}; expected 1 <= n_components <= {limit}"
        )
    data = queries.double()
    mean = data.mean(0)
    _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)
    std = singular[:n_components] / math.sqrt(data.shape[0] - 1)
    return QueryPCA(mean, vh[:n_components], std)


def anchor_features(
    keys: Float[Tensor, "n_classes d"], pca: QueryPCA
) -> Float[Tensor, "n_classes M"]:
    """``k_hat_i = sigma_i * v_i^T k`` for every class's anchor key (paper §3.3).

    Example:
        >>> pca = QueryPCA(torch.zeros(2), torch.eye(2), torch.tensor([2.0, 1.0]))
        >>> anchor_features(torch.tensor([[1.0, 1.0]]), pca).tolist()
        [[2.0, 1.0]]
    """
    return (keys.double() @ pca.components.double().T) * pca.std.double()


def predicted_confusion(
    features: Float[Tensor, "n_classes M"],
) -> Float[Tensor, "n_classes n_classes"]:
    """Eq. 11: pairwise distances over the largest one; the diagonal is 1 (for display).

    Example:
        >>> predicted_confusion(torch.tensor([[0.0], [1.0], [4.0]])).tolist()
        [[1.0, 0.25, 1.0], [0.25, 1.0, 0.75], [1.0, 0.75, 1.0]]
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise DiagnosisError(
            f"predicted_confusion expects features [n_classes >= 2, M]; got {tuple(features.shape)}"
        )
    distance = torch.cdist(features.double(), features.double())
    largest = distance.max()
    if not largest > 0:
        raise DiagnosisError("every anchor feature is identical; the confusion is undefined")
    out = distance / largest
    out.fill_diagonal_(1.0)
    return out


def real_confusion(label_probs: Tensor, gold: Tensor) -> Float[Tensor, "n_classes n_classes"]:
    """App. K: AUC of ``p_a / (p_a + p_b)`` for "gold is a" over prompts of gold a or b.

    Symmetric; the diagonal is 1 and a pair with a class absent is NaN.

    Example:
        >>> probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.6, 0.4]])
        >>> real_confusion(probs, torch.tensor([1, 1, 0])).tolist()
        [[1.0, 0.5], [0.5, 1.0]]
    """
    if label_probs.ndim != 2 or gold.shape != label_probs.shape[:1]:
        raise DiagnosisError(
            f"real_confusion expects label_probs [prompt, n_classes] and gold [prompt]; got "
            f"{tuple(label_probs.shape)} and {tuple(gold.shape)}"
        )
    n = label_probs.shape[1]
    out = torch.eye(n, dtype=torch.float64)
    probs = label_probs.double()
    for a in range(n):
        for b in range(a + 1, n):
            keep = (gold == a) | (gold == b)
            is_a = gold[keep] == a
            if not bool(is_a.any()) or bool(is_a.all()):
                out[a, b] = out[b, a] = math.nan
                continue
            pa, pb = probs[keep, a], probs[keep, b]
            score = torch.where(pa + pb > 0, pa / (pa + pb), 0.5)
            out[a, b] = out[b, a] = roc_auc(score, is_a)
    return out


def off_diagonal(matrix: Float[Tensor, "n n"]) -> Float[Tensor, " pair"]:
    """The strict upper triangle, row by row (the class pairs ``a < b``).

    Example:
        >>> off_diagonal(torch.arange(9.0).reshape(3, 3)).tolist()
        [1.0, 2.0, 5.0]
    """
    rows, cols = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1)
    return matrix[rows, cols]


def repeat_kv_heads(keys: Tensor, n_heads: int, d_head: int) -> Tensor:
    """``[batch, pos, kv_head, d_head]`` (or flattened) -> ``[batch, pos, n_heads * d_head]``."""
    if keys.ndim == 3:
        keys = keys.reshape(*keys.shape[:2], -1, d_head)
    groups = n_heads // keys.shape[2]
    if groups * keys.shape[2] != n_heads:
        raise DiagnosisError(f"{keys.shape[2]} key heads do not divide {n_heads} query heads")
    # Query head h reads key head h // groups (Hugging Face's repeat_kv, TL's GQA attention).
    return keys.repeat_interleave(groups, dim=2).flatten(2)
