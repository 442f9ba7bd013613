"""k-nearest-neighbour probe on frozen features.

Cosine (features L2-normalised, votes weighted by exp(similarity / temperature), as SMARTIES and
DINO evaluate) or Euclidean (plain majority vote, as Corley et al. do). Ties in the vote go to the
lower class index. Distances run in JAX over chunks of the query set, so memory stays
O(chunk x N_train).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "euclidean")


@functools.partial(jax.jit, static_argnames=("k", "metric", "num_classes", "temperature"))
def _vote(queries, bank, bank_labels, *, k, metric, num_classes, temperature):
    if metric == "cosine":
        norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        score = norm(queries) @ norm(bank).T  # similarity: higher is nearer
    else:
        score = -(
            jnp.sum(queries**2, -1, keepdims=True)
            - 2 * queries @ bank.T
            + jnp.sum(bank**2, -1)[None]
        )
    top, idx = jax.lax.top_k(score, k)
    weights = jnp.exp(top / temperature) if temperature else jnp.ones_like(top)
    if bank_labels.ndim == 2:  # multi-hot: the weighted fraction of neighbours with each label
        votes = jnp.sum(bank_labels[idx] * weights[..., None], axis=1)
        return votes / jnp.sum(weights, axis=1, keepdims=True)
    onehot = jax.nn.one_hot(bank_labels[idx], num_classes)
    return jnp.sum(onehot * weights[..., None], axis=1)


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    features: np.ndarray,
    *,
    num_classes: int,
    k: int = 20,
    metric: str = "cosine",
    temperature: float | None = 0.07,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicts classes of `features` [M, D] from a labelled bank [N, D], [N].

    Multi-label: with multi-hot `train_labels` [N, K] the scores are, per class, the (weighted)
    fraction of the k neighbours carrying it, in [0, 1]; threshold them (e.g. at 0.5) to predict.

    Args:
      temperature: cosine votes weighted by exp(s / T); None = majority vote. Ignored (majority)
        for the Euclidean metric.
    Returns:
      (predicted labels int [M], vote scores [M, num_classes]).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; expected one of {METRICS}")
    if not 0 < k <= len(train_features):
        raise ValueError(f"k={k} must lie in [1, {len(train_features)}] (the bank size)")
    bank = jnp.asarray(train_features, jnp.float32)
    multilabel = np.ndim(train_labels) == 2
    labels = jnp.asarray(train_labels, jnp.float32 if multilabel else jnp.int32)
    temp = temperature if metric == "cosine" else None
    votes = [
        np.asarray(
            _vote(
                jnp.asarray(features[i : i + chunk], jnp.float32),
                bank,
                labels,
                k=k,
                metric=metric,
                num_classes=num_classes,
                temperature=temp,
            )
        )
        for i in range(0, len(features), chunk)
    ]
    scores = np.concatenate(votes) if votes else np.zeros((0, num_classes), np.float32)
    return scores.argmax(axis=1), scores
