"""eofm.models.attention: each implementation against jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.models import attention, layers

# Blocks of at most 8 tokens: lengths 16, 20 and 13 run 2, 3 and 2 blocks (20 and 13 padded).
BLOCKS = {"block_q": 8, "block_k": 8}


def _inputs(b, lq, lk, h, d, bias_shape, mask_shape, seed=0):
    """((q, k, v, bias), mask, g): standard normal f32 arrays, a random mask (with one fully masked
    query row where the mask has query rows), and the cotangent g of the output."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    q, k, v, g = normal(b, lq, h, d), normal(b, lk, h, d), normal(b, lk, h, d), normal(b, lq, h, d)
    bias = None if bias_shape is None else normal(*bias_shape)
    mask = None
    if mask_shape is not None:
        mask = rng.random(mask_shape) < 0.7
        if mask_shape[2] > 1:  # a fully masked query row attends uniformly, as in jax.nn
            mask[..., 1, :] = False
        mask = jnp.asarray(mask)
    return (q, k, v, bias), mask, g


def _value_and_grads(fn, args, mask, g):
    """fn(q, k, v, bias, mask) and the gradients of sum(out * g) wrt q, k, v (and bias if given)."""
    q, k, v, bias = args

    def loss(*a):
        out = fn(*a, mask)
        return jnp.sum(out.astype(jnp.float32) * g), out

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(q, k, v, bias)
    return out, grads


def _reference(q, k, v, bias, mask):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)


def _ours(implementation):
    def fn(q, k, v, bias, mask):
        return attention.dot_product_attention(
            q, k, v, bias=bias, mask=mask, implementation=implementation, **BLOCKS
        )

    return fn


CASES = {  # B, Lq, Lk, H, Dh, bias shape, mask shape
    "self": (2, 16, 16, 2, 8, None, None),
    "cross_bias_shared": (2, 20, 13, 3, 8, (1, 3, 20, 13), None),
    "bias_batch_mask": (2, 20, 13, 3, 8, (2, 3, 20, 13), (2, 1, 20, 13)),
    "bias_batch_no_heads": (2, 13, 20, 3, 8, (2, 1, 13, 20), None),
    "key_padding": (2, 20, 13, 2, 8, (2, 1, 1, 13), (2, 1, 1, 13)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_jax_nn_values_and_gradients(case):
    b, lq, lk, h, d, bias_shape, mask_shape = CASES[case]
    args, mask, g = _inputs(b, lq, lk, h, d, bias_shape, mask_shape)
    want_out, want_grads = _value_and_grads(_reference, args, mask, g)
    for implementation in ("xla", "blockwise"):
        out, grads = _value_and_grads(_ours(implementation), args, mask, g)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=2e-6, err_msg=implementation)
        assert len(grads) == len(want_grads)
        for got, want in zip(grads, want_grads):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=implementation)


def test_bfloat16_inputs():
    args, mask, g = _inputs(2, 20, 13, 2, 8, (1, 2, 20, 13), (2, 1, 20, 13))
    q, k, v, bias = args
    q, k, v = (t.astype(jnp.bfloat16) for t in (q, k, v))
    f32 = lambda t: t.astype(jnp.float32)
    # The float32 result of the same (bf16-rounded) inputs, to bf16 precision.
    want_out, want_grads = _value_and_grads(_reference, (f32(q), f32(k), f32(v), bias), mask, g)
    for implementation in ("xla", "blockwise"):
        out, grads = _value_and_grads(_ours(implementation), (q, k, v, bias), mask, g)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(f32(out), want_out, atol=3e-2, err_msg=implementation)
        assert [x.dtype for x in grads] == [jnp.bfloat16] * 3 + [jnp.float32]
        for got, want in zip(grads, want_grads):
            np.testing.assert_allclose(f32(got), want, rtol=5e-2, atol=5e-2, err_msg=implementation)


def test_auto_choice():
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert attention.choose_implementation(1024, 1024, f32, "cpu") == "blockwise"
    assert attention.choose_implementation(196, 1024, f32, "cpu") == "blockwise"
    assert attention.choose_implementation(197, 197, f32, "cpu") == "xla"
    assert attention.choose_implementation(1024, 1024, f32, "tpu") == "blockwise"
    assert attention.choose_implementation(1024, 1024, bf16, "gpu") == "cudnn"
    assert attention.choose_implementation(1024, 1024, f32, "gpu") == "xla"
    # In this CPU process "auto" runs xla (no custom_vjp) on short and blockwise on long sequences.
    for length, blockwise in ((8, False), (384, True)):
        x = jnp.zeros((1, length, 2, 8))
        jaxpr = jax.make_jaxpr(lambda x: attention.dot_product_attention(x, x, x))(x)
        assert ("custom_vjp_call" in str(jaxpr)) == blockwise


def test_unknown_implementation_lists_the_choices():
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="'flash' is not one of .*'xla', 'blockwise', 'cudnn'"):
        attention.dot_product_attention(q, q, q, implementation="flash")
    with pytest.raises(ValueError, match="'flash'"):
        layers.Attention(16, 2, attention_impl="flash", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'flash'"):
        layers.CrossAttention(16, 2, attention_impl="flash", rngs=nnx.Rngs(0))


def test_layers_take_the_implementation_without_new_parameters():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 12, 16)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, 7, 16)), jnp.float32)
    outputs, states = {}, {}
    for implementation in ("xla", "blockwise"):
        self_attn = layers.Attention(16, 2, attention_impl=implementation, rngs=nnx.Rngs(0))
        cross = layers.CrossAttention(
            16, 2, fused_kv=True, attention_impl=implementation, rngs=nnx.Rngs(0)
        )
        call = nnx.jit(lambda modules, x, c: (modules[0](x), modules[1](x, c)))
        outputs[implementation] = call((self_attn, cross), x, context)
        states[implementation] = jax.tree.map(
            jnp.shape, nnx.state((self_attn, cross), nnx.Param).to_pure_dict()
        )
    assert states["xla"] == states["blockwise"]
    for got, want in zip(outputs["blockwise"], outputs["xla"]):
        np.testing.assert_allclose(got, want, atol=2e-6)
