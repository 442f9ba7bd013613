"""Helpers shared by the checkpoint-import tests."""

import numpy as np
from flax import nnx


def params(model: nnx.Module) -> dict:
    """{path: array} of every Param of `model`."""
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Adds noise to every Param (zero biases and unit scales included) so that a conversion that
    confuses two same-shaped tensors cannot go unnoticed."""
    rng = np.random.default_rng(seed + 100)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    noisy = [
        (p, v.replace(v[...] + 0.1 * rng.standard_normal(v.shape, np.float32))) for p, v in flat
    ]
    nnx.update(model, nnx.from_flat_state(noisy))
    return model
