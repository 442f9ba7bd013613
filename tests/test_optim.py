"""Optimizer: schedule, weight-decay mask, per-parameter lr scales (layer-wise lr decay)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.models import family, vit
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


def test_layerwise_lr_decay(params):
    layer_of = family.block_layer_of(3, r"patch_embed|cls_token")
    # BEiT-style LLRD: decay ** (num_layers - layer), num_layers = depth + 1 (the final norm).
    scales = optim.map_paths(lambda path, _: 0.5 ** (4 - layer_of(path)), params)
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


def test_lr_scales_multiply_the_whole_update(params):
    """Each parameter's update, weight decay included, is its scale times the unscaled update;
    a scale of 0 leaves the parameter in place."""
    scales = optim.map_paths(
        lambda path, _: 0.0 if "blocks/0/" in path else (0.25 if "blocks" in path else 1.0),
        params,
    )
    kw = {"lr": 1e-2, "total_steps": 10, "warmup_steps": 0, "weight_decay": 0.05}
    tx, _ = optim.make_optimizer(params, lr_scales=scales, **kw)
    plain, _ = optim.make_optimizer(params, **kw)
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)  # decay shows beside Adam
    state, plain_state = tx.init(params), plain.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        unscaled, plain_state = plain.update(grads, plain_state, params)
    leaves = zip(_paths(params), jax.tree.leaves(updates), jax.tree.leaves(unscaled))
    by_path = dict(zip(_paths(params), jax.tree.leaves(scales)))
    for path, u, v in leaves:
        np.testing.assert_allclose(u, by_path[path] * np.asarray(v), rtol=1e-6, err_msg=path)
        assert bool(jnp.any(u != 0)) == (by_path[path] != 0), path
