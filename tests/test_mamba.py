"""Mamba-1 mixer: the selective scan against a sequential reference, the causal convolution,
initialisation, causality of the block, and parameter counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.models import mamba


def sequential_scan(x, dt, a, b_in, c_out):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = h_t . C_t, one token at a time (float64)."""
    x, dt, a, b_in, c_out = (np.asarray(t, np.float64) for t in (x, dt, a, b_in, c_out))
    batch, length, inner = x.shape
    h = np.zeros((batch, inner, a.shape[-1]))
    y = np.zeros((batch, length, inner))
    for t in range(length):
        h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * x[:, t])[..., None] * b_in[:, t, None]
        y[:, t] = np.einsum("ben,bn->be", h, c_out[:, t])
    return y


def scan_inputs(length, inner=6, state=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, length, inner)).astype(np.float32)
    dt = np.log1p(np.exp(rng.normal(size=(2, length, inner)))).astype(np.float32)  # softplus
    a = -np.exp(rng.normal(size=(inner, state))).astype(np.float32)
    b_in, c_out = rng.normal(size=(2, 2, length, state)).astype(np.float32)
    return x, dt, a, b_in, c_out


@pytest.mark.parametrize("chunk_size", [0, 8, 37, 64])
def test_selective_scan_equals_the_sequential_recurrence(chunk_size):
    inputs = scan_inputs(37)  # 37 tokens: chunks of 8 leave a padded tail
    want = sequential_scan(*inputs)
    got = mamba.selective_scan(*map(jnp.asarray, inputs), chunk_size=chunk_size)
    assert got.dtype == jnp.float32 and got.shape == (2, 37, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_chunked_scan_has_the_same_gradients_and_bounded_memory():
    """Chunks are rematerialised in the backward pass: the gradients are those of the single
    associative scan, and the compiled temporaries no longer hold [L, E, N] residuals."""
    inputs = [jnp.asarray(t) for t in scan_inputs(2048, inner=32, state=16)]

    def grad_fn(chunk):
        loss = lambda *t: jnp.sum(mamba.selective_scan(*t, chunk_size=chunk) ** 2)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))

    whole, chunked = grad_fn(0), grad_fn(64)
    for g_whole, g_chunked in zip(whole(*inputs), chunked(*inputs)):
        np.testing.assert_allclose(g_chunked, g_whole, rtol=2e-4, atol=1e-4)
    temp = lambda f: f.lower(*inputs).compile().memory_analysis().temp_size_in_bytes
    residual_bytes = 2 * 2048 * 32 * 16 * 4  # one f32 [B, L, E, N] array
    assert temp(chunked) < residual_bytes < temp(whole)


def test_selective_scan_runs_in_float32_for_bfloat16_inputs():
    inputs = scan_inputs(16)
    low = [jnp.asarray(t, jnp.bfloat16) for t in inputs]
    got = mamba.selective_scan(*low, chunk_size=4)
    want = sequential_scan(*[np.asarray(t, np.float32) for t in low])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_causal_depthwise_conv_hand_computed():
    x = jnp.arange(1.0, 6.0).reshape(1, 5, 1) * jnp.array([1.0, 10.0])  # two channels
    kernel = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # [K=4, E=2]
    out = np.asarray(mamba.causal_depthwise_conv(x, kernel, jnp.array([0.5, 0.0])))
    # Channel 0: 0.5 + x_{t-3} + 2 x_t; channel 1: x_{t-1} (zeros before the first token).
    np.testing.assert_allclose(out[0, :, 0], [2.5, 4.5, 6.5, 9.5, 12.5])
    np.testing.assert_allclose(out[0, :, 1], [0.0, 10.0, 20.0, 30.0, 40.0])


def test_mixer_initialisation():
    mixer = mamba.MambaMixer(64, rngs=nnx.Rngs(0))
    assert mixer.dt_rank == 4
    np.testing.assert_allclose(-jnp.exp(mixer.a_log[...]), -np.tile(np.arange(1, 17), (64, 1)))
    np.testing.assert_array_equal(mixer.d_skip[...], np.ones(64))
    dt = jax.nn.softplus(mixer.dt_proj.bias[...])
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert mixer.a_log[...].dtype == mixer.d_skip[...].dtype == jnp.float32
    bound = 4**-0.5
    assert float(jnp.abs(mixer.dt_proj.kernel[...]).max()) <= bound
    assert mixer.x_proj.kernel.shape == (64, 4 + 32)


def test_block_is_causal_and_chunking_does_not_change_it():
    block = mamba.MambaBlock(32, rngs=nnx.Rngs(1))
    chunked = mamba.MambaBlock(32, scan_chunk=5, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 20, 32))
    y = block(x)
    np.testing.assert_allclose(chunked(x), y, rtol=1e-5, atol=1e-5)
    t = 11
    perturbed = block(x.at[:, t].add(3.0))
    np.testing.assert_array_equal(perturbed[:, :t], y[:, :t])  # nothing before t moves
    assert not np.allclose(perturbed[:, t:], y[:, t:])


def test_bfloat16_block_stays_close_to_float32():
    x = jax.random.normal(jax.random.key(3), (1, 12, 32))
    f32 = mamba.MambaBlock(32, rngs=nnx.Rngs(4))(x)
    bf16 = mamba.MambaBlock(32, dtype=jnp.bfloat16, rngs=nnx.Rngs(4))(x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf16.astype(jnp.float32), f32, atol=0.1)


@pytest.mark.parametrize("dim", [32, 768])
def test_block_parameter_count(dim):
    block = nnx.eval_shape(lambda: mamba.MambaBlock(dim, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(block, nnx.Param)))
    assert count == mamba.mamba_block_params(dim)
    if dim == 768:
        assert block.ffn.w1.kernel.shape == (768, 2048)
        # RoMA-B: 12 blocks, about 80 M parameters.
        assert 12 * count == pytest.approx(80e6, rel=0.02)
        assert math.ceil(768 / 16) == block.mixer.dt_rank
