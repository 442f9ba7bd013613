"""Dense heads and tapped encoder blocks: shapes, hand-checked pooling, taps equal the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.eval import heads
from eofm.models import croma, layers, spectralgpt, vit


def test_adaptive_avg_pool_matches_hand_bins():
    x = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 1)
    out = np.asarray(heads.adaptive_avg_pool(x, 2))[0, ..., 0]
    # 5 rows into 2 bins: rows 0-2 and 2-4 (bins overlap on row 2), likewise columns.
    grid = np.arange(25.0).reshape(5, 5)
    expected = [
        [grid[r0:r1, c0:c1].mean() for c0, c1 in ((0, 3), (2, 5))] for r0, r1 in ((0, 3), (2, 5))
    ]
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(heads.adaptive_avg_pool(x, 1)[0, 0, 0, 0], grid.mean())


@pytest.mark.parametrize("grid", [3, 6, 15])
def test_upernet_and_linear_heads_give_logits_at_the_output_size(grid):
    levels = [jnp.ones((2, grid, grid, 16)) * i for i in range(4)]
    upernet = heads.UPerNet(16, 3, channels=16, rngs=nnx.Rngs(0))
    out = upernet(levels, (8 * grid, 8 * grid))
    assert out.shape == (2, 8 * grid, 8 * grid, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    linear = heads.LinearSegHead(16, 4, 3, rngs=nnx.Rngs(0))
    assert linear(levels, (8 * grid, 8 * grid)).shape == (2, 8 * grid, 8 * grid, 3)


def test_dense_head_choices_and_siamese_fusion():
    a = [jnp.full((1, 2, 2, 4), 1.0)] * 4
    b = [jnp.full((1, 2, 2, 4), 3.0)] * 4
    np.testing.assert_array_equal(heads.fuse_siamese(a, b, "diff")[0], 2.0)
    assert heads.fuse_siamese(a, b, "concat")[0].shape == (1, 2, 2, 8)
    with pytest.raises(ValueError, match="fusion"):
        heads.fuse_siamese(a, b, "sum")
    with pytest.raises(ValueError, match="4 encoder levels"):
        heads.dense_head("upernet", 4, 3, 2, channels=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown dense head"):
        heads.dense_head("fcn", 4, 4, 2, channels=8, rngs=nnx.Rngs(0))


def test_vit_taps_end_at_the_encoder_output():
    cfg = vit.ViTConfig(patch_size=8, embed_dim=32, depth=3, num_heads=2, in_chans=2)
    encoder = vit.ViTEncoder(cfg, rngs=nnx.Rngs(0))
    x = encoder.embed_patches(jax.random.normal(jax.random.key(0), (2, 16, 16, 2)))
    taps = encoder.tapped_tokens(x, (0, 2, 0))
    np.testing.assert_allclose(taps[1], encoder.encode_tokens(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(taps[0], taps[2])
    # Block 0's output is the raw residual stream, not normalised.
    assert not np.allclose(taps[0], encoder.norm(taps[0]), atol=1e-3)
    with pytest.raises(ValueError, match="outside the 3 blocks"):
        encoder.tapped_tokens(x, (3,))


def test_croma_and_spectralgpt_grids():
    c = croma.Croma(croma.CromaConfig(embed_dim=32, depth=2, num_heads=2), rngs=nnx.Rngs(0))
    optical = jax.random.normal(jax.random.key(1), (1, 40, 24, 12))
    grids = c.optical.tapped_grids(optical, (0, 1))
    assert [g.shape for g in grids] == [(1, 5, 3, 32)] * 2
    np.testing.assert_allclose(
        grids[1].reshape(1, 15, 32), c.encode(optical=optical)["optical"][0], rtol=1e-5, atol=1e-5
    )
    cfg = spectralgpt.SpectralGPTConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        image_size=32,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
    )
    s = spectralgpt.SpectralGPT(cfg, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(2), (1, 32, 32, 12))
    (grid,) = s.tapped_grids(images, (1,))
    tokens, _ = s.encode(images)
    # The grid is the mean over the 4 spectral groups of the tokens at each location.
    np.testing.assert_allclose(grid, tokens.reshape(1, 4, 4, 4, 32).mean(1), rtol=1e-5, atol=1e-5)


def test_tapped_blocks_passes_block_arguments():
    blocks = layers.block_stack(2, 16, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 4, 16))
    bias = jnp.full((1, 2, 4, 4), -1e9).at[..., 0].set(0.0)  # attend to token 0 only
    out = layers.tapped_blocks(blocks, x, (0,), lambda y: y, bias)[0]
    np.testing.assert_allclose(out, blocks[0](x, bias), rtol=1e-6)
