"""SwinV2 backbone: hand-computed window geometry, position-bias tables, patch-merging order, the
window clamp, cosine attention against a direct computation, shapes and determinism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from param_helpers import logical_partition_specs

from eofm.models import swin

# Stage grids 8, 4, 2, 1 at 16 px: stage 0 has shifted windows, stages 1-3 are clamped.
TINY = swin.SwinConfig(
    embed_dim=8,
    depths=(2, 2, 1, 1),
    num_heads=(1, 2, 2, 4),
    window_size=4,
    patch_size=2,
    in_chans=3,
    cpb_hidden=16,
    extra_norm_period=2,
)


@pytest.fixture(scope="module")
def encoder():
    return swin.SwinEncoder(TINY, rngs=nnx.Rngs(0))


def _images(seed=0, size=16):
    return jax.random.normal(jax.random.key(seed), (2, size, size, TINY.in_chans))


def test_cpb_coords_table_window_3():
    # Offsets -2..2, / (3 - 1), * 8 -> -8, -4, 0, 4, 8; then sign * log2(|x| + 1) / log2(8).
    a, b = math.log2(9) / 3, math.log2(5) / 3  # 1.0566417, 0.7739760
    values = [-a, -b, 0.0, b, a]
    expected = [[[r, c] for c in values] for r in values]
    np.testing.assert_allclose(swin.cpb_coords_table(3), expected, rtol=1e-6)


def test_cpb_coords_table_window_2_and_1():
    a = math.log2(9) / 3
    expected = [[[-a, -a], [-a, 0], [-a, a]], [[0, -a], [0, 0], [0, a]], [[a, -a], [a, 0], [a, a]]]
    np.testing.assert_allclose(swin.cpb_coords_table(2), expected, rtol=1e-6)
    np.testing.assert_array_equal(swin.cpb_coords_table(1), [[[0.0, 0.0]]])


def test_relative_position_index_window_2():
    # Tokens (0,0), (0,1), (1,0), (1,1); pair (q, k) reads (dr + 1) * 3 + (dc + 1).
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    np.testing.assert_array_equal(swin.relative_position_index(2), expected)


def test_window_partition_order_and_round_trip():
    grid = jnp.arange(16.0).reshape(1, 4, 4, 1)
    windows = swin.window_partition(grid, 2)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    np.testing.assert_array_equal(windows[0, :, :, 0], expected)
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    windows = swin.window_partition(x, 2)
    assert windows.shape == (2, 6, 4, 3)
    np.testing.assert_array_equal(swin.window_reverse(windows, 2, (6, 4)), x)


def test_shift_attention_mask_4x4_window_2_shift_1():
    # Regions of the rolled grid: rows/cols [0, 2) -> 0, [2, 3) -> 1, [3, 4) -> 2; region 3r + c:
    #   0 0 1 2 / 0 0 1 2 / 3 3 4 5 / 6 6 7 8. Windows (row-major) hold regions
    #   [0,0,0,0], [1,2,1,2], [3,3,6,6], [4,5,7,8]; pairs of different regions get -100.
    m = -100.0
    expected = [
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, m, 0, m], [m, 0, m, 0], [0, m, 0, m], [m, 0, m, 0]],
        [[0, 0, m, m], [0, 0, m, m], [m, m, 0, 0], [m, m, 0, 0]],
        [[0, m, m, m], [m, 0, m, m], [m, m, 0, m], [m, m, m, 0]],
    ]
    np.testing.assert_array_equal(swin.shift_attention_mask((4, 4), 2, 1), expected)


def test_merge_subgrids_order():
    grid = jnp.arange(16.0).reshape(1, 4, 4, 1)
    merged = swin.merge_subgrids(grid)
    # Each cell: (even row, even col), (odd, even), (even, odd), (odd, odd) of its 2x2 block.
    expected = [[[0, 4, 1, 5], [2, 6, 3, 7]], [[8, 12, 9, 13], [10, 14, 11, 15]]]
    np.testing.assert_array_equal(merged[0], expected)
    with pytest.raises(ValueError, match="even token grid, got 3x4"):
        swin.merge_subgrids(jnp.zeros((1, 3, 4, 1)))


def test_stage_window_clamps_and_unshifts():
    assert swin.stage_window((32, 32), 8, 4) == (8, 4)
    assert swin.stage_window((8, 8), 8, 4) == (8, 0)  # SatVision stage 3: one global window
    assert swin.stage_window((4, 4), 8, 4) == (4, 0)  # stage 4: window clamped to 4
    assert swin.stage_window((4, 8), 8, 4) == (4, 0)
    with pytest.raises(ValueError, match=r"token grid \(12, 12\) does not tile into 8x8"):
        swin.stage_window((12, 12), 8, 4)


def _block(shifted, window_size=4):
    block = swin.SwinBlock(8, 2, window_size=window_size, shifted=shifted, rngs=nnx.Rngs(3))
    for norm in (block.norm1, block.norm2):  # zero-initialised: make the block non-trivial
        norm.scale.set_value(jnp.ones_like(norm.scale.get_value()))
    return block


def test_block_on_grid_no_larger_than_window_is_not_shifted():
    shifted, plain = _block(shifted=True), _block(shifted=False)
    assert shifted.shift_size == 2 and plain.shift_size == 0
    small = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    np.testing.assert_allclose(shifted(small), plain(small), atol=1e-6)
    large = jax.random.normal(jax.random.key(1), (1, 8, 8, 8))
    assert not np.allclose(shifted(large), plain(large), atol=1e-3)


def _attention_reference(attn, x, window):
    """Cosine attention of one window computed directly from the parameters.  x [N, C]."""
    kernel = np.asarray(attn.qkv.kernel.get_value())  # [C, 3, C]
    n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    q = x @ kernel[:, 0] + np.asarray(attn.q_bias.get_value())
    k = x @ kernel[:, 1]
    v = x @ kernel[:, 2] + np.asarray(attn.v_bias.get_value())
    q, k, v = (t.reshape(n, h, d).transpose(1, 0, 2) for t in (q, k, v))
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    scale = np.exp(np.minimum(np.asarray(attn.logit_scale.get_value()), np.log(100.0)))
    logits = (q @ k.transpose(0, 2, 1)) * scale[:, None, None]
    table = swin.cpb_coords_table(window)
    w1, b1 = np.asarray(attn.cpb_fc1.kernel.get_value()), np.asarray(attn.cpb_fc1.bias.get_value())
    w2 = np.asarray(attn.cpb_fc2.kernel.get_value())
    cpb = np.maximum(table @ w1 + b1, 0) @ w2  # [2M-1, 2M-1, h]
    rows, cols = np.divmod(np.arange(n), window)
    for i in range(n):
        for j in range(n):
            offset = cpb[rows[i] - rows[j] + window - 1, cols[i] - cols[j] + window - 1]
            logits[:, i, j] += 16 / (1 + np.exp(-offset))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(1, 0, 2).reshape(n, c)
    proj = attn.proj
    return out @ np.asarray(proj.kernel.get_value()) + np.asarray(proj.bias.get_value())


def test_window_attention_matches_direct_computation():
    attn = swin.WindowAttention(8, 2, cpb_hidden=16, rngs=nnx.Rngs(5))
    keys = jax.random.split(jax.random.key(2), 3)
    attn.q_bias.set_value(jax.random.normal(keys[0], (8,)))
    attn.v_bias.set_value(jax.random.normal(keys[1], (8,)))
    attn.logit_scale.set_value(jnp.array([1.0, 6.0]))  # the second head is clamped at ln 100
    x = jax.random.normal(keys[2], (1, 1, 9, 8))
    out = attn(x, 3)
    np.testing.assert_allclose(
        out[0, 0], _attention_reference(attn, np.asarray(x[0, 0]), 3), atol=2e-5
    )


def test_logit_scale_is_clamped_at_ln_100():
    attn = swin.WindowAttention(8, 2, cpb_hidden=16, rngs=nnx.Rngs(5))
    np.testing.assert_allclose(attn.logit_scale.get_value(), [math.log(10.0)] * 2, rtol=1e-6)
    x = jax.random.normal(jax.random.key(4), (1, 1, 4, 8))

    def output(tau):
        attn.logit_scale.set_value(jnp.full((2,), tau))
        return attn(x, 2)

    at_limit = output(math.log(100.0))
    np.testing.assert_array_equal(output(7.0), at_limit)
    assert not np.allclose(output(math.log(50.0)), at_limit, atol=1e-4)


def test_post_norm_init_and_extra_norm_period(encoder):
    stage = encoder.stages[0]
    for block in stage.blocks:
        for norm in (block.norm1, block.norm2):
            assert not np.any(norm.scale.get_value()) and not np.any(norm.bias.get_value())
    # Period 2: the LN3 follows the 2nd block of a stage (1-based) only, initialised as a plain LN.
    assert [b.norm3 is not None for s in encoder.stages for b in s.blocks] == [
        False, True, False, True, False, False
    ]  # fmt: skip
    np.testing.assert_array_equal(stage.blocks[1].norm3.scale.get_value(), np.ones(8))
    # Zero post-norms: a fresh block without LN3 leaves its input unchanged.
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
    np.testing.assert_array_equal(stage.blocks[0](x), x)


def test_encoder_stage_shapes_and_strides(encoder):
    images = _images()
    grids = nnx.jit(lambda m, x: m(x))(encoder, images)
    assert [g.shape for g in grids] == [(2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 32), (2, 1, 1, 64)]
    assert TINY.stage_strides == (2, 4, 8, 16) and TINY.stage_dims == (8, 16, 32, 64)
    tokens = encoder.embed(images)
    assert tokens.shape == (2, 8, 8, 8)
    for got, want in zip(encoder.encode(tokens), grids):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The final LN normalises the last stage: zero mean, unit variance per token at init.
    np.testing.assert_allclose(grids[-1].mean(-1), 0.0, atol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grids)


def test_encoder_is_deterministic_for_a_seed():
    images = _images(1)
    first = swin.SwinEncoder(TINY, rngs=nnx.Rngs(7))
    again = swin.SwinEncoder(TINY, rngs=nnx.Rngs(7))
    other = swin.SwinEncoder(TINY, rngs=nnx.Rngs(8))
    for a, b in zip(first(images), again(images)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first(images)[0], other(images)[0])


def test_partition_specs_use_logical_names(encoder):
    specs = logical_partition_specs(encoder)
    block = ("stages", 0, "blocks", 0, "attn")
    assert specs[(*block, "qkv", "kernel")] == ("embed", None, "heads")
    assert specs[(*block, "q_bias")] == ("heads",)


def test_flops_counts_windows_and_merging():
    cfg = swin.SwinConfig(
        embed_dim=4, depths=(1, 1), num_heads=(1, 1), window_size=2, patch_size=2, in_chans=1,
        cpb_hidden=3,
    )  # fmt: skip
    # 8 px: grids 4x4 (four 2x2 windows), then 2x2 (one window). Per window of n tokens, width d,
    # MLP 4d: 2n(4d^2 + 8d^2) + 4n^2 d; CPB 2 * 9 offsets * 3 * (2 + 1 head).
    window = lambda n, d: 2 * n * 12 * d * d + 4 * n * n * d
    cpb = 2 * 9 * 3 * 3
    expected = (
        2 * 16 * 4 * 1 * 4  # patch embedding
        + 4 * window(4, 4) + cpb  # stage 0
        + 2 * 4 * 16 * 8  # merging 4x4 -> 2x2, 16 -> 8
        + window(4, 8) + cpb  # stage 1
    )  # fmt: skip
    assert swin.swin_forward_flops(cfg, (8, 8)) == pytest.approx(expected)


def test_config_errors_name_the_stage():
    with pytest.raises(ValueError, match="stage 1 width 16 is not divisible by num_heads"):
        swin.SwinConfig(embed_dim=8, depths=(1, 1), num_heads=(2, 3))
    with pytest.raises(ValueError, match="one entry per stage"):
        swin.SwinConfig(embed_dim=8, depths=(1, 1), num_heads=(2,))
