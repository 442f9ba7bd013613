"""Tests of the shared layers, the ViT encoder and the MAE (tiny shapes, CPU)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from param_helpers import logical_partition_specs

from eofm.data.spec import SensorSpec
from eofm.models import family, layers
from eofm.models import mae as mae_lib
from eofm.models.mae import (
    MAE,
    MAEConfig,
    mae_flops_per_example,
    masked_mse,
    norm_pix_stats,
    random_masking,
)
from eofm.models.vit import ViTConfig, ViTEncoder, vit_forward_flops

IMAGE = (2, 32, 32, 3)
# The MAE's input: three channels, the sum of the input sensors' bands.
INPUTS = {"rgb": SensorSpec.full("rgb")}


def tiny_vit(**overrides) -> ViTConfig:
    return ViTConfig(**{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4} | overrides)


def tiny_mae(**overrides) -> MAEConfig:
    defaults = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "decoder_dim": 16}
    defaults |= {"decoder_depth": 2, "decoder_heads": 2}
    return MAEConfig(**defaults | overrides)


def tiny_model(**overrides) -> MAE:
    return MAE(tiny_mae(**overrides), INPUTS, rngs=nnx.Rngs(0))


def images(shape=IMAGE, seed=0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@nnx.jit
def forward(model: MAE, x: jax.Array, key: jax.Array):
    return model(x, rng=key)


def erf_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# --- layers -------------------------------------------------------------------------------------


def test_posemb_sincos_matches_spec_formula():
    gh, gw, d = 3, 5, 16
    table = layers.posemb_sincos_2d(gh, gw, d)
    assert table.shape == (gh * gw, d) and table.dtype == np.float32
    q = d // 4
    expected = np.zeros((gh * gw, d))
    for r in range(gh):
        for c in range(gw):
            for k in range(q):
                w = 10000.0 ** (-k / q)
                row = expected[r * gw + c]
                row[k], row[q + k] = math.sin(c * w), math.cos(c * w)  # column half first
                row[2 * q + k], row[3 * q + k] = math.sin(r * w), math.cos(r * w)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    assert not table.flags.writeable
    with pytest.raises(ValueError):
        layers.posemb_sincos_2d(2, 2, 10)


def test_patchify_order_and_inverse():
    b, h, w, c, p = 2, 4, 6, 3, 2
    x = np.arange(b * h * w * c, dtype=np.float32).reshape(b, h, w, c)
    patches = np.asarray(layers.patchify(jnp.asarray(x), p))
    gw = w // p
    assert patches.shape == (b, (h // p) * gw, p * p * c)
    for n in range(b):
        for gi in range(h // p):
            for gj in range(gw):
                for i in range(p):
                    for j in range(p):
                        for ch in range(c):
                            value = patches[n, gi * gw + gj, (i * p + j) * c + ch]
                            assert value == x[n, gi * p + i, gj * p + j, ch]
    back = layers.unpatchify(jnp.asarray(patches), p, (h // p, gw))
    np.testing.assert_array_equal(np.asarray(back), x)


def test_patch_embed_equals_strided_conv():
    p, c, d = 4, 3, 8
    embed = layers.PatchEmbed(p, c, d, rngs=nnx.Rngs(0))
    x = images((2, 8, 12, c))
    kernel = embed.proj.kernel[...].reshape(p, p, c, d)  # HWIO
    conv = jax.lax.conv_general_dilated(
        x, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    expected = conv.reshape(2, -1, d) + embed.proj.bias[...]
    np.testing.assert_allclose(embed(x), expected, atol=1e-5)


def test_mlp_uses_exact_gelu():
    mlp = layers.Mlp(4, 16, rngs=nnx.Rngs(0))
    x = 3.0 * np.asarray(images((5, 4)))
    w1, b1 = np.asarray(mlp.fc1.kernel[...]), np.asarray(mlp.fc1.bias[...])
    w2, b2 = np.asarray(mlp.fc2.kernel[...]), np.asarray(mlp.fc2.bias[...])
    hidden = x @ w1 + b1
    np.testing.assert_allclose(mlp(jnp.asarray(x)), erf_gelu(hidden) @ w2 + b2, atol=1e-5)
    tanh_gelu = np.asarray(jax.nn.gelu(hidden, approximate=True)) @ w2 + b2
    assert np.max(np.abs(tanh_gelu - np.asarray(mlp(jnp.asarray(x))))) > 1e-4


def test_attention_matches_reference_and_takes_bias():
    b, n, d, h = 2, 5, 8, 2
    attn = layers.Attention(d, h, rngs=nnx.Rngs(0))
    x = np.asarray(images((b, n, d)))
    qkv = np.einsum("bnd,dke->bnke", x, attn.qkv.kernel[...]) + np.asarray(attn.qkv.bias[...])
    q, k, v = (qkv[:, :, i].reshape(b, n, h, d // h) for i in range(3))
    logits = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(d // h)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhe->bqhe", weights, v).reshape(b, n, d)
    proj = lambda t: t @ np.asarray(attn.proj.kernel[...]) + np.asarray(attn.proj.bias[...])
    np.testing.assert_allclose(attn(jnp.asarray(x)), proj(heads), atol=1e-5)
    # A bias that blocks all off-diagonal keys leaves each token attending to itself only.
    diagonal_only = jnp.where(jnp.eye(n, dtype=bool), 0.0, -1e9)[None, None]
    own = proj(v.reshape(b, n, d))
    np.testing.assert_allclose(attn(jnp.asarray(x), diagonal_only), own, atol=1e-5)
    with pytest.raises(ValueError):
        layers.Attention(10, 3, rngs=nnx.Rngs(0))


def test_layer_norm_eps_default_1e6():
    encoder = ViTEncoder(tiny_vit(), rngs=nnx.Rngs(0))
    assert encoder.norm.epsilon == 1e-6
    assert all(blk.norm1.epsilon == blk.norm2.epsilon == 1e-6 for blk in encoder.blocks)
    delta = 1e-3  # variance 1e-6, comparable to eps
    x = jnp.where(jnp.arange(32) % 2 == 0, 1.0 + delta, 1.0 - delta)[None]
    expected = delta / math.sqrt(delta**2 + 1e-6)  # 0.7071; eps 1e-5 would give 0.30
    np.testing.assert_allclose(jnp.abs(encoder.norm(x)), expected, rtol=1e-3)
    assert ViTEncoder(tiny_vit(ln_eps=1e-5), rngs=nnx.Rngs(0)).norm.epsilon == 1e-5


# --- ViT ----------------------------------------------------------------------------------------


def test_vit_encoder_shapes_and_cls_position():
    cfg = tiny_vit()
    encoder = ViTEncoder(cfg, rngs=nnx.Rngs(0))
    x = images((2, 32, 48, 3))  # non-square: 4 x 6 patches
    tokens, embedded, patches, encoded = nnx.jit(
        lambda e: (e(x), e.embed_patches(x), e.patch_embed(x), e.encode_tokens(e.embed_patches(x)))
    )(encoder)
    assert tokens.shape == (2, 1 + 24, 32)
    np.testing.assert_allclose(embedded, patches + layers.posemb_sincos_2d(4, 6, 32), atol=1e-6)
    np.testing.assert_allclose(tokens, encoded, atol=1e-6)
    assert encoder.cls_token[...].shape == (1, 1, 32)


def test_vit_b16_forward_flops():
    # ViT-B/16 at 224 px: the well-known ~17.6 G multiply-adds (fvcore "GFLOPs") per image.
    base = ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    macs = vit_forward_flops(base, 197) / 2
    assert abs(macs - 17.58e9) / 17.58e9 < 0.03


# --- MAE ----------------------------------------------------------------------------------------


def test_random_masking_counts_and_consistency():
    b, n = 6, 16
    cfg = tiny_mae(mask_ratio=0.6)
    kept = cfg.num_kept(n)
    assert kept == int(16 * (1 - 0.6)) == 6
    ids_keep, mask, ids_restore = random_masking(jax.random.key(0), b, n, kept)
    mask = np.asarray(mask)
    assert ids_keep.shape == (b, kept)
    np.testing.assert_array_equal(mask.sum(1), n - kept)
    assert len({row.tobytes() for row in mask}) > 1  # masks differ across samples
    for row in range(b):
        assert set(np.asarray(ids_keep[row]).tolist()) == set(np.flatnonzero(mask[row] == 0))
        assert sorted(np.asarray(ids_restore[row]).tolist()) == list(range(n))


def test_model_mask_count_and_shapes():
    model = tiny_model()
    loss, aux = forward(model, images((4, 32, 32, 3)), jax.random.key(1))
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)
    assert aux["pred"].shape == aux["target"].shape == (4, 16, 8 * 8 * 3)
    np.testing.assert_array_equal(aux["mask"].sum(1), 16 - int(16 * 0.25))
    assert len({np.asarray(row).tobytes() for row in aux["mask"]}) > 1


def test_norm_pix_uses_unbiased_variance():
    mean, std = norm_pix_stats(jnp.array([[[1.0, 2.0, 3.0, 4.0]]]))
    np.testing.assert_allclose(mean, 2.5)
    np.testing.assert_allclose(std, math.sqrt(5.0 / 3.0 + 1e-6), rtol=1e-6)  # ddof=1, not 1.25

    model = tiny_model()
    x = images()
    loss, aux = forward(model, x, jax.random.key(1))
    t = np.asarray(layers.patchify(x, 8), np.float64)
    expected = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(aux["target"], expected, atol=1e-5)
    per_patch = ((np.asarray(aux["pred"]) - expected) ** 2).mean(-1)
    mask = np.asarray(aux["mask"])
    np.testing.assert_allclose(loss, (per_patch * mask).sum() / mask.sum(), rtol=1e-5)

    raw_model = tiny_model(norm_pix_loss=False)
    _, raw = forward(raw_model, x, jax.random.key(1))
    np.testing.assert_allclose(raw["target"], t, atol=1e-6)


def test_masked_mse_ignores_kept_patches():
    pred = jnp.zeros((1, 2, 3))
    target = jnp.stack([jnp.full((3,), 2.0), jnp.full((3,), 100.0)])[None]
    assert float(masked_mse(pred, target, jnp.array([[1.0, 0.0]]))) == 4.0


def test_deterministic_given_rng():
    model = tiny_model()
    x = images()
    loss_a, aux_a = forward(model, x, jax.random.key(3))
    loss_b, aux_b = forward(model, x, jax.random.key(3))
    loss_c, _ = forward(model, x, jax.random.key(4))
    assert float(loss_a) == float(loss_b)
    np.testing.assert_array_equal(aux_a["mask"], aux_b["mask"])
    assert float(loss_a) != float(loss_c)


def test_gradients_reach_every_param():
    model = tiny_model()
    x, key = images(), jax.random.key(1)
    grads = nnx.jit(nnx.grad(lambda m: m(x, rng=key)[0]))(model)
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, g in flat:
        g = np.asarray(g.get_value())
        assert np.all(np.isfinite(g)) and np.any(g != 0), path


def test_bfloat16_compute():
    model = tiny_model(dtype=jnp.bfloat16)
    x = images()
    loss, aux = forward(model, x, jax.random.key(1))
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    assert aux["pred"].dtype == jnp.float32
    assert nnx.jit(lambda enc: enc(x))(model.encoder).dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)


def test_reconstruct_undoes_norm_pix():
    model = tiny_model()
    x, key = images(), jax.random.key(1)
    recon, pixel_mask = nnx.jit(lambda m: m.reconstruct(x, key))(model)
    assert recon.shape == x.shape and pixel_mask.shape == x.shape[:3]
    _, aux = forward(model, x, key)
    mean, std = norm_pix_stats(layers.patchify(x, 8))
    np.testing.assert_allclose(layers.patchify(recon, 8), aux["pred"] * std + mean, atol=1e-5)
    patch_mask = layers.patchify(pixel_mask[..., None], 8)
    np.testing.assert_array_equal(patch_mask, jnp.broadcast_to(aux["mask"][..., None], (2, 16, 64)))


def test_partition_specs_use_logical_names():
    specs = logical_partition_specs(tiny_model())
    assert specs[("decoder", "mask_token")] == (None, None, "embed")
    assert specs[("encoder", "cls_token")] == (None, None, "embed")


def test_mae_flops_formula():
    cfg = MAEConfig(**mae_lib.VARIANTS["base"], in_chans=3)
    assert (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) == (512, 8, 16)
    n_all, n_kept, d, dd, patch = 196, 49, 768, 512, 768

    def block(n, width):
        return 2 * n * (4 * width**2 + 8 * width**2) + 4 * n * n * width

    forward = (
        2 * n_all * patch * d
        + 12 * block(1 + n_kept, d)
        + 2 * (1 + n_kept) * d * dd
        + 8 * block(1 + n_all, dd)
        + 2 * n_all * dd * patch
    )
    assert mae_flops_per_example(cfg, (224, 224)) == pytest.approx(3 * forward)


def test_variants_and_flat_config():
    assert set(mae_lib.VARIANTS) == {"tiny", "base", "large"}
    tiny = MAEConfig(**mae_lib.VARIANTS["tiny"])
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (192, 6, 3)
    assert (tiny.decoder_dim, tiny.decoder_depth, tiny.decoder_heads) == (128, 2, 4)
    base = MAEConfig(**mae_lib.VARIANTS["base"])
    assert base.encoder == ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    large = MAEConfig(**mae_lib.VARIANTS["large"])
    assert (large.patch_size, large.embed_dim, large.depth, large.num_heads) == (16, 1024, 24, 16)
    cfg = tiny_mae(in_chans=4, dtype=jnp.bfloat16)
    assert cfg.encoder == tiny_vit(in_chans=4, dtype=jnp.bfloat16)


def test_input_channels_come_from_the_input_bands():
    s2 = SensorSpec("sentinel2_l2a", ("B02", "B03", "B04", "B08"))
    s1 = SensorSpec.full("sentinel1_grd")
    assert mae_lib.from_data({"s2": s2, "s1": s1}, 32) == {"in_chans": 6}
    with pytest.raises(ValueError, match="at least one input"):
        mae_lib.from_data({}, 32)
    with pytest.raises(ValueError, match="have 4 bands, not 3"):
        MAE(tiny_mae(), {"s2": s2}, rngs=nnx.Rngs(0))
    # The pretraining loss stacks the sensors' images along channels, in `inputs` order.
    model = MAE(tiny_mae(in_chans=6), {"s2": s2, "s1": s1}, rngs=nnx.Rngs(0))
    x, key = images((2, 32, 32, 6)), jax.random.key(1)
    batch = {"s1": x[..., 4:], "s2": x[..., :4]}
    (loss, metrics), (want, _) = nnx.jit(lambda m: (m.loss(batch, key), m(x, rng=key)))(model)
    np.testing.assert_array_equal(loss, want)
    assert metrics == {}


def test_features_pool_cls_and_zero_fill_missing_bands():
    model = tiny_model()
    rgb, bg = INPUTS["rgb"], SensorSpec("rgb", ("blue", "green"))
    x = images((2, 32, 48, 3))

    @nnx.jit
    def run(m):
        return (
            m.features(x, rgb),
            m.encoder(x)[:, 0],
            m.features(x, rgb, taps=(0,))["levels"],
            m.features(x[..., [2, 1]], bg)["pooled"],  # bands matched by name
            m.encoder(x.at[..., 0].set(0.0))[:, 0],
        )

    out, cls, tapped, without_red, red_zeroed = run(model)
    np.testing.assert_allclose(out["pooled"], cls, rtol=1e-5, atol=1e-6)
    assert [level.shape for level in out["levels"]] == [(2, 4, 6, 32)] * 4  # default taps
    assert len(tapped) == 1 and tapped[0].shape == (2, 4, 6, 32)
    # A band the data lack is 0 (the normalised mean).
    assert model.missing_bands(bg) == ("red",)
    assert model.missing_bands(rgb) == ()
    np.testing.assert_allclose(without_red, red_zeroed, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="have none"):
        model.missing_bands(SensorSpec.full("sentinel1_grd"))


# --- the family protocol's layer ids ------------------------------------------------------------


def _tiny_abstract(name):
    from eofm.models import croma, smarties, spectralgpt

    inputs = {
        "mae": {"rgb": SensorSpec.full("rgb")},
        "smarties": {"s2": SensorSpec.full("sentinel2_l2a")},
        "croma": {
            "s2": SensorSpec.full("sentinel2_l2a"),
            "s1": SensorSpec.full("sentinel1_grd"),
        },
        "spectralgpt": {"s2": SensorSpec("sentinel2_l2a", spectralgpt.BANDS)},
    }[name]
    module = family.get(name)
    assert module in (mae_lib, smarties, croma, spectralgpt)
    cfg = module.Config(**module.VARIANTS["tiny"], **module.from_data(inputs, 32))
    return nnx.eval_shape(lambda: module.Model(cfg, inputs, rngs=nnx.Rngs(0)))


# Paths (of `optim.param_path`) -> layer id: embeddings 0, block i -> i + 1, then depth + 1.
LAYERS = {
    "mae": {  # tiny: 6 blocks
        "encoder/patch_embed/proj/kernel/value": 0,
        "encoder/cls_token/value": 0,
        "encoder/blocks/0/attn/qkv/kernel/value": 1,
        "encoder/blocks/5/mlp/fc2/bias/value": 6,
        "encoder/norm/scale/value": 7,
        "decoder/blocks/0/attn/qkv/kernel/value": 7,  # not an encoder block
    },
    "smarties": {
        "encoder/patch_embed/kernel/value": 0,
        "encoder/cls_token/value": 0,
        "encoder/blocks/2/norm1/scale/value": 3,
        "encoder/norm/bias/value": 7,
    },
    "croma": {  # tiny: 4 optical blocks
        "optical/embed/kernel/value": 0,
        "optical/blocks/0/attn/proj/kernel/value": 1,
        "optical/blocks/3/mlp/fc1/kernel/value": 4,
        "optical/norm/scale/value": 5,
        "optical_gap/mlp/fc2/kernel/value": 5,
        "radar/blocks/0/attn/proj/kernel/value": 5,  # not an optical block
    },
    "spectralgpt": {
        "patch_embed/kernel/value": 0,
        "pos/spatial/value": 0,
        "pos/spectral/value": 0,
        "blocks/1/attn/qkv/bias/value": 2,
        "norm/scale/value": 7,
        "decoder_blocks/0/mlp/fc1/kernel/value": 7,
    },
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_ids_and_encoding_params(name):
    from eofm.train import optim

    model = _tiny_abstract(name)
    paths = [
        optim.param_path(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    ]
    for path, layer in LAYERS[name].items():
        assert path in paths, path
        assert model.layer_of(path) == layer, path
    assert model.num_layers == max(LAYERS[name].values())
    encoding = [p for p in paths if p.startswith(model.ENCODING_PARAMS)]
    for prefix in model.ENCODING_PARAMS:
        assert any(p.startswith(prefix) for p in encoding), prefix
    assert not any("decoder" in p for p in encoding)
    assert {model.layer_of(p) for p in encoding} == set(range(model.num_layers + 1))


@pytest.mark.parametrize("name", [*family.available(), "families.toyvit", "families.toypyramid"])
def test_each_family_states_what_its_features_are(name):
    definition = family.get(name).Model.feature_definition
    assert isinstance(definition, str)
    assert "`pooled`" in definition and "`levels`" in definition


def test_bands_of_the_same_name_on_other_wavelengths_are_not_read():
    """Landsat-8 B10/B11 are thermal, Sentinel-2 B10/B11 cirrus and SWIR: the same names, other
    quantities. An S2 MAE reads none of them from Landsat-8 data (it used to match by name)."""
    s2 = SensorSpec("sentinel2_l1c", ("B10", "B11"))
    model = MAE(tiny_mae(in_chans=2), {"s2": s2}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="have none of them"):
        model.missing_bands(SensorSpec("landsat8_oli_tirs", ("B10", "B11")))
    l2a = SensorSpec("sentinel2_l2a", ("B11", "B12"))
    assert model.missing_bands(l2a) == ("B10",)
