"""Block stacks of the ViT-style families run as scans and rematerialised (`scan_blocks`,
`remat`): the same parameters, losses and gradients as the plain Python loop. The stack's
backward stays linear in its depth (`layers.cotangent_boundary`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_families import VIT_FAMILIES, synthetic_batch, tiny_model

from eofm.models import family, layers

# Scans traced by one loss: every stack of two or more blocks (SMARTIES: encoder and decoder for
# each of its two views; CROMA: optical, radar and joint encoders, its decoder is one block).
SCANS = {"mae": 2, "smarties": 4, "croma": 3, "spectralgpt": 2}


def _loss_and_grads(model, batch):
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return nnx.merge(graph, params, rest).loss(batch, jax.random.key(5))[0]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def plain(pretrain_config):
    """name -> (tiny model, a batch of two, its loss and gradients with plain Python loops)."""
    cache = {}

    def get(name):
        if name not in cache:
            model, specs = tiny_model(pretrain_config, name)
            batch = synthetic_batch(specs, 2)
            cache[name] = model, batch, _loss_and_grads(model, batch)
        return cache[name]

    return get


def _assert_same_loss_and_grads(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", VIT_FAMILIES)
def test_scanned_blocks_give_the_same_loss_and_gradients(name, plain, pretrain_config, monkeypatch):
    model, batch, want = plain(name)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(want[1]))
    # The scanned model takes the plain one's state as it is: parameter names and shapes agree,
    # so checkpoints and imported weights keep loading.
    scanned, _ = tiny_model(pretrain_config, name, like=model, scan_blocks=True)
    scans = []
    real_scan = jax.lax.scan
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    got = _loss_and_grads(scanned, batch)
    assert len(scans) == SCANS[name]
    _assert_same_loss_and_grads(got, want)


@pytest.mark.parametrize("remat,scan", [("full", True), ("dots", False)])
def test_rematerialised_blocks_give_the_same_loss_and_gradients(
    remat, scan, plain, pretrain_config
):
    model, batch, want = plain("croma")
    rematerialised, _ = tiny_model(
        pretrain_config, "croma", like=model, remat=remat, scan_blocks=scan
    )
    _assert_same_loss_and_grads(_loss_and_grads(rematerialised, batch), want)


@pytest.mark.parametrize("name", VIT_FAMILIES)
def test_scan_and_remat_are_model_config_keys(name, pretrain_config):
    fields = family.config_fields(family.get(name), "tiny")
    assert fields.scan_blocks is False and fields.remat == "none"
    with pytest.raises(ValueError, match="remat 'some'"):
        tiny_model(pretrain_config, name, remat="some")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cotangent_boundary_passes_finite_gradients_bit_for_bit(dtype):
    x = jnp.zeros((7,), dtype)
    g = jnp.asarray([1.5, -0.0, 0.0, 3e-39, -1e38, 7.0e-3, -2.0], dtype)
    _, vjp = jax.vjp(layers.cotangent_boundary, x)
    (got,) = vjp(g)
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(g, np.float32))
    np.testing.assert_array_equal(np.signbit(np.asarray(got, np.float32)), np.signbit(g))
    (bad,) = vjp(jnp.asarray([jnp.inf, -jnp.inf, jnp.nan, 1, 1, 1, 1], dtype))
    assert not np.any(np.isfinite(np.asarray(bad[:3], np.float32)))


STACK_RUNNERS = {
    "run_stack": lambda blocks, x: layers.run_stack(blocks, x),
    "tapped_blocks": lambda blocks, x: layers.tapped_blocks(blocks, x, [len(blocks) - 1], None)[0],
}


def _largest_backward_fusion(runner: str, depth: int) -> int:
    """Instructions of the largest fusion XLA builds for a `depth`-block stack's gradient."""
    blocks = layers.block_stack(depth, 32, 2, rngs=nnx.Rngs(0))
    graph, params = nnx.split(blocks)
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))

    def loss(params):
        return jnp.sum(STACK_RUNNERS[runner](list(nnx.merge(graph, params)), x) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    bodies = re.findall(r"^%?fused_computation\S* .*?\{\n(.*?)\n\}", hlo, re.S | re.M)
    return max(body.count("\n") + 1 for body in bodies)


@pytest.mark.parametrize("runner", sorted(STACK_RUNNERS))
def test_backward_fusions_do_not_grow_with_depth(runner):
    # Without `cotangent_boundary` the residual stream's gradient is recomputed inside every
    # consumer's fusion, and the largest fusion grows with the number of blocks above it.
    assert _largest_backward_fusion(runner, 8) <= 1.25 * _largest_backward_fusion(runner, 2)
