"""Optimizer: schedule, weight-decay mask, frozen groups, layer-wise lr decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.models import vit
from eofm.train import optim


@pytest.fixture(scope="module")
def params():
    cfg = vit.ViTConfig(patch_size=8, embed_dim=32, depth=3, num_heads=2, in_chans=2)
    return nnx.state(vit.ViTEncoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)


def _paths(tree):
    return [optim.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_warmup_then_cosine():
    schedule = optim.lr_schedule(1e-3, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0, 5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(schedule(55), 5e-4, rtol=1e-5)  # half-way through the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="warmup_steps 20"):
        optim.lr_schedule(1e-3, total_steps=10, warmup_steps=20)


def test_no_weight_decay_on_biases_and_norms(params):
    mask = optim.decay_mask(params)
    flags = dict(zip(_paths(params), jax.tree.leaves(mask)))
    assert any(p.endswith("qkv/kernel/value") or "qkv/kernel" in p for p in flags)
    for path, decayed in flags.items():
        assert decayed == ("kernel" in path), path  # not qkv/bias (3 x D), cls_token, LN scale


def test_frozen_parameters_do_not_move(params):
    tx, _ = optim.make_optimizer(
        params, lr=1e-2, total_steps=10, warmup_steps=0, frozen=[r"patch_embed", r"blocks/0/"]
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, u in zip(_paths(params), jax.tree.leaves(updates)):
        frozen = "patch_embed" in path or "blocks/0/" in path
        assert bool(jnp.all(u == 0)) == frozen, path
    with pytest.raises(ValueError, match="match no parameter"):
        optim.make_optimizer(params, lr=1e-2, total_steps=10, warmup_steps=0, frozen=["decoder"])


def test_layerwise_lr_decay(params):
    layer_of = optim.vit_layer_of(3)
    scales = optim.layer_scales(params, num_layers=4, decay=0.5, layer_of=layer_of)
    by_path = dict(zip(_paths(params), jax.tree.leaves(scales)))
    for path, scale in by_path.items():
        if "patch_embed" in path or "cls_token" in path:
            assert scale == 0.5**4, path
        elif "blocks/2/" in path:
            assert scale == 0.5**1, path
        elif "blocks" not in path:  # final norm: the head side
            assert scale == 1.0, path
    tx, _ = optim.make_optimizer(
        params, lr=1.0, total_steps=10, warmup_steps=0, weight_decay=0.0, lr_scales=scales
    )
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for path, u in zip(_paths(params), jax.tree.leaves(updates)):
        # Adam's first step moves every coordinate by lr (x scale) in the gradient's direction.
        np.testing.assert_allclose(np.abs(np.asarray(u)).max(), by_path[path], rtol=1e-3)


def test_layer_scales_with_frozen_groups(params):
    scales = optim.layer_scales(params, num_layers=4, decay=0.5, layer_of=optim.vit_layer_of(3))
    tx, _ = optim.make_optimizer(
        params,
        lr=1.0,
        total_steps=10,
        warmup_steps=0,
        weight_decay=0.0,
        frozen=[r"blocks/0/"],
        lr_scales=scales,
    )
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    by_path = dict(zip(_paths(params), jax.tree.leaves(scales)))
    for path, u in zip(_paths(params), jax.tree.leaves(updates)):
        expected = 0.0 if "blocks/0/" in path else by_path[path]
        np.testing.assert_allclose(np.abs(np.asarray(u)).max(), expected, rtol=1e-3)
