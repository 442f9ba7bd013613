"""Linear probe: L2-regularised logistic regression on frozen features, regularisation chosen on a
validation split.

Features are standardised with the train statistics. For each weight decay on a log grid the probe
is fitted by full-batch L-BFGS (optax) on the train part and scored on the validation part; the best
decay is refitted on train + validation. Multi-class uses softmax cross-entropy; multi-label
(`multilabel=True`, targets [N, K] in {0, 1}) uses per-class sigmoid cross-entropy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: standardisation, weights [D, K], bias [K] and the chosen decay."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    weight_decay: float
    validation_scores: dict[float, float]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std) @ self.weights + self.bias


def _loss(params, x, y, weight_decay, multilabel):
    logits = x @ params["w"] + params["b"]
    if multilabel:
        data = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
    else:
        data = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return data + 0.5 * weight_decay * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_outputs", "multilabel", "steps"))
def _fit(x, y, weight_decay, *, num_outputs, multilabel, steps):
    params = {"w": jnp.zeros((x.shape[1], num_outputs)), "b": jnp.zeros((num_outputs,))}
    loss = functools.partial(_loss, x=x, y=y, weight_decay=weight_decay, multilabel=multilabel)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=steps)
    return params


def _score(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Validation score: accuracy (multi-class) or micro F1 at 0.5 (multi-label)."""
    if not multilabel:
        return float(np.mean(logits.argmax(1) == targets))
    pred = logits > 0
    tp = np.sum(pred & (targets > 0))
    return float(2 * tp / max(pred.sum() + (targets > 0).sum(), 1))


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    num_outputs: int,
    multilabel: bool = False,
    weight_decays=tuple(np.logspace(-6, 1, 8)),
    steps: int = 200,
) -> LinearProbe:
    """Chooses the weight decay on (val_x, val_y), then refits on train + validation."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    norm = lambda x: jnp.asarray((x - mean) / std, jnp.float32)
    cast = (
        (lambda y: jnp.asarray(y, jnp.float32))
        if multilabel
        else (lambda y: jnp.asarray(y, jnp.int32))
    )
    scores = {}
    for decay in weight_decays:
        p = _fit(
            norm(train_x),
            cast(train_y),
            float(decay),
            num_outputs=num_outputs,
            multilabel=multilabel,
            steps=steps,
        )
        logits = np.asarray(norm(val_x) @ p["w"] + p["b"])
        scores[float(decay)] = _score(logits, np.asarray(val_y), multilabel)
    best = max(scores, key=lambda d: (scores[d], d))  # ties: the stronger regularisation
    all_x, all_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    p = _fit(
        norm(all_x), cast(all_y), best, num_outputs=num_outputs, multilabel=multilabel, steps=steps
    )
    return LinearProbe(mean, std, np.asarray(p["w"]), np.asarray(p["b"]), best, scores)
