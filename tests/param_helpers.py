"""Helpers shared by the tests of model parameters: checkpoint imports, sharding names."""

import numpy as np
from flax import nnx

from eofm.models import layers


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


def logical_partition_specs(model: nnx.Module) -> dict:
    """{path: logical axis names} of every Param of `model`, after checking that each Param names
    one axis per dimension, only `layers.LOGICAL_AXES`, none twice."""
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model, nnx.Param))))
    out = {}
    for path, param in params:
        spec = tuple(specs[path].get_value())
        assert len(spec) == param.get_value().ndim, (path, spec)
        named = [name for name in spec if name is not None]
        assert set(named) <= set(layers.LOGICAL_AXES), (path, spec)
        assert len(set(named)) == len(named), (path, spec)
        out[path] = spec
    return out
