"""Dense heads and tapped encoder blocks: shapes, hand-checked pooling, levels of any stride and
width, taps equal the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm import sensors
from eofm.data.spec import SensorSpec
from eofm.eval import heads
from eofm.models import croma, layers, spectralgpt, vit
from eofm.train import optim


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


def _param_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    state = nnx.state(module, nnx.Param)
    return {optim.param_path(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _conv_norm(name: str, c_in: int, c_out: int, kernel: int) -> dict:
    return {
        f"{name}/conv/kernel/value": (kernel, kernel, c_in, c_out),
        f"{name}/norm/scale/value": (c_out,),
        f"{name}/norm/bias/value": (c_out,),
    }


def test_upernet_on_four_vit_grids_keeps_its_parameter_tree():
    d, c, k = 8, 16, 3  # level width, head channels, classes
    expected = {
        f"pyramid/{name}/{p}/value": (2, 2, d, d) if p == "kernel" else (d,)
        for name in ("up4a", "up4b", "up2")
        for p in ("kernel", "bias")
    }
    expected |= {"pyramid/norm4/scale/value": (d,), "pyramid/norm4/bias/value": (d,)}
    for i in range(4):
        expected |= _conv_norm(f"ppm/{i}", d, c, 1)
    expected |= _conv_norm("bottleneck", d + 4 * c, c, 3)
    for i in range(3):
        expected |= _conv_norm(f"lateral/{i}", d, c, 1) | _conv_norm(f"fpn/{i}", c, c, 3)
    expected |= _conv_norm("fuse", 4 * c, c, 3)
    expected |= {"classifier/kernel/value": (1, 1, c, k), "classifier/bias/value": (k,)}
    head = nnx.eval_shape(lambda: heads.UPerNet([(16, d)] * 4, k, channels=c, rngs=nnx.Rngs(0)))
    assert _param_shapes(head) == expected
    assert heads.resampling_factors([16] * 4) == (4, 2, 1, 0.5)


@pytest.mark.parametrize("grid", [3, 6, 15])
def test_upernet_and_linear_heads_give_logits_at_the_output_size(grid):
    levels = [jnp.ones((2, grid, grid, 16)) * i for i in range(4)]
    shapes = [(8, 16)] * 4
    upernet = heads.UPerNet(shapes, 3, channels=16, rngs=nnx.Rngs(0))
    resampled = upernet.pyramid(levels)
    assert [x.shape[1] for x in resampled] == [4 * grid, 2 * grid, grid, -(-grid // 2)]
    out = upernet(levels, (8 * grid, 8 * grid))
    assert out.shape == (2, 8 * grid, 8 * grid, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    linear = heads.LinearSegHead(shapes, 3, rngs=nnx.Rngs(0))
    assert linear(levels, (8 * grid, 8 * grid)).shape == (2, 8 * grid, 8 * grid, 3)


def _levels(size: int, shapes) -> list[jax.Array]:
    keys = jax.random.split(jax.random.key(0), len(shapes))
    return [jax.random.normal(k, (2, size // s, size // s, w)) for k, (s, w) in zip(keys, shapes)]


def test_two_levels_of_strides_8_and_16_and_two_widths():
    shapes = [(8, 32), (16, 64)]
    head = heads.dense_head("upernet", shapes, 3, channels=16, rngs=nnx.Rngs(0))
    params = _param_shapes(head)
    # Strides 8, 16 already double: no resampling; PPM on the 64-wide level, one lateral.
    assert not [p for p in params if p.startswith("pyramid/")]
    assert params["ppm/0/conv/kernel/value"] == (1, 1, 64, 16)
    assert params["lateral/0/conv/kernel/value"] == (1, 1, 32, 16)
    assert "lateral/1/conv/kernel/value" not in params
    assert params["fuse/conv/kernel/value"] == (3, 3, 32, 16)
    out = head(_levels(64, shapes), (64, 64))
    assert out.shape == (2, 64, 64, 3) and np.isfinite(np.asarray(out)).all()
    linear = heads.dense_head("linear", shapes, 3, channels=16, rngs=nnx.Rngs(0))
    assert _param_shapes(linear)["linear/kernel/value"] == (96, 3)
    assert linear(_levels(64, shapes), (64, 64)).shape == (2, 64, 64, 3)


def test_hierarchical_levels_pass_through_the_pyramid():
    shapes = [(4, 8), (8, 16), (16, 32), (32, 64)]  # a Swin's
    head = heads.UPerNet(shapes, 2, channels=16, rngs=nnx.Rngs(0))
    assert head.pyramid.factors == (1, 1, 1, 1)
    levels = _levels(64, shapes)
    assert [x.shape for x in head.pyramid(levels)] == [x.shape for x in levels]
    assert _param_shapes(head)["lateral/2/conv/kernel/value"] == (1, 1, 32, 16)
    assert head(levels, (64, 64)).shape == (2, 64, 64, 2)
    # One level works too: PPM and the classifier.
    single = heads.UPerNet([(16, 8)], 2, channels=16, rngs=nnx.Rngs(0))
    assert single(_levels(64, [(16, 8)]), (64, 64)).shape == (2, 64, 64, 2)


def test_pyramid_errors_name_the_level():
    assert heads.resampling_factors([16] * 3) == (2, 1, 0.5)
    with pytest.raises(ValueError, match="level 0 \\(stride 16\\) would need resampling by 8"):
        heads.resampling_factors([16] * 5)
    with pytest.raises(ValueError, match="level 1 \\(stride 12\\)"):
        heads.UPerNet([(8, 8), (12, 8)], 2, channels=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="levels 0 and 1 both need x4"):
        heads.UPerNet([(16, 8), (32, 8), (16, 8), (32, 8)], 2, channels=8, rngs=nnx.Rngs(0))


def test_dense_head_choices_and_siamese_fusion():
    a = [jnp.full((1, 2, 2, 4), 1.0)] * 4
    b = [jnp.full((1, 2, 2, 4), 3.0)] * 4
    np.testing.assert_array_equal(heads.fuse_siamese(a, b, "diff")[0], 2.0)
    assert heads.fuse_siamese(a, b, "concat")[0].shape == (1, 2, 2, 8)
    with pytest.raises(ValueError, match="fusion"):
        heads.fuse_siamese(a, b, "sum")
    with pytest.raises(ValueError, match="at least one feature level"):
        heads.dense_head("upernet", [], 2, channels=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown dense head"):
        heads.dense_head("fcn", [(16, 4)] * 4, 2, channels=8, rngs=nnx.Rngs(0))


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


def test_croma_and_spectralgpt_feature_levels():
    optical_bands = tuple(b for b in sensors.get_sensor("sentinel2_l2a").band_names if b != "B10")
    optical = SensorSpec("sentinel2_l2a", optical_bands[:12])
    inputs = {"s2": optical, "s1": SensorSpec.full("sentinel1_grd")}
    c = croma.Croma(croma.CromaConfig(embed_dim=32, depth=2, num_heads=2), inputs, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (1, 40, 24, 12))
    levels = c.features(images, optical, taps=(0, 1))["levels"]
    assert [g.shape for g in levels] == [(1, 5, 3, 32)] * 2  # stride 8
    np.testing.assert_allclose(
        levels[1].reshape(1, 15, 32), c.encode(optical=images)["optical"][0], rtol=1e-5, atol=1e-5
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
    spec = SensorSpec("sentinel2_l2a", spectralgpt.BANDS)
    s = spectralgpt.SpectralGPT(cfg, {"s2": spec}, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(2), (1, 32, 32, 12))
    (grid,) = s.features(images, spec, taps=(1,))["levels"]
    tokens, _ = s.encode(images)
    # The grid is the mean over the 4 spectral groups of the tokens at each location.
    np.testing.assert_allclose(grid, tokens.reshape(1, 4, 4, 4, 32).mean(1), rtol=1e-5, atol=1e-5)


def test_tapped_blocks_passes_block_arguments():
    blocks = layers.block_stack(2, 16, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 4, 16))
    bias = jnp.full((1, 2, 4, 4), -1e9).at[..., 0].set(0.0)  # attend to token 0 only
    out = layers.tapped_blocks(blocks, x, (0,), lambda y: y, bias)[0]
    np.testing.assert_allclose(out, blocks[0](x, bias), rtol=1e-6)
