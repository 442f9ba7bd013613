"""bfloat16 compute (`model.dtype=bfloat16`, float32 parameters) for the ViT-style families: the
pretraining loss stays float32 and close to the float32 model's, activations are bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_families import VIT_FAMILIES, synthetic_batch, tiny_model


@pytest.mark.parametrize("name", VIT_FAMILIES)
def test_bfloat16_loss_is_float32_and_close_to_the_float32_loss(name, pretrain_config):
    model, specs = tiny_model(pretrain_config, name)
    half, _ = tiny_model(pretrain_config, name, like=model, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(half, nnx.Param)))
    batch = synthetic_batch(specs, 4)
    loss = nnx.jit(lambda m: m.loss(batch, jax.random.key(3))[0])
    want, got = loss(model), loss(half)
    assert got.dtype == jnp.float32 and np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=0.02)
    key, spec = next(iter(specs.items()))
    features = nnx.eval_shape(lambda m: m.features(batch[key], spec), half)
    assert features["pooled"].dtype == jnp.bfloat16
    assert all(level.dtype == jnp.bfloat16 for level in features["levels"])
