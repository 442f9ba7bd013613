"""Tests of the shared layers, the ViT encoder and the MAE (tiny shapes, CPU)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.models import layers
from eofm.models.mae import (
    MAE,
    MAEConfig,
    mae_flops_per_example,
    masked_mse,
    norm_pix_stats,
    random_masking,
)
from eofm.models.vit import VIT_VARIANTS, ViTConfig, ViTEncoder, vit_config, vit_forward_flops

IMAGE = (2, 32, 32, 3)


def tiny_vit(**overrides) -> ViTConfig:
    return ViTConfig(**{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4} | overrides)


def tiny_mae(**overrides) -> MAEConfig:
    defaults = {"encoder": tiny_vit(), "decoder_dim": 16, "decoder_depth": 2, "decoder_heads": 2}
    return MAEConfig(**defaults | overrides)


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


def test_vit_config_variants():
    assert vit_config("base") == ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    huge = vit_config("huge", patch_size=14, in_chans=12)
    assert (huge.embed_dim, huge.depth, huge.num_heads, huge.patch_size) == (1280, 32, 16, 14)
    assert set(VIT_VARIANTS) == {"tiny", "small", "base", "large", "huge"}
    with pytest.raises(ValueError):
        vit_config("giant")


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
    macs = vit_forward_flops(vit_config("base"), 197) / 2
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
    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    loss, aux = forward(model, images((4, 32, 32, 3)), jax.random.key(1))
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)
    assert aux["pred"].shape == aux["target"].shape == (4, 16, 8 * 8 * 3)
    np.testing.assert_array_equal(aux["mask"].sum(1), 16 - int(16 * 0.25))
    assert len({np.asarray(row).tobytes() for row in aux["mask"]}) > 1


def test_norm_pix_uses_unbiased_variance():
    mean, std = norm_pix_stats(jnp.array([[[1.0, 2.0, 3.0, 4.0]]]))
    np.testing.assert_allclose(mean, 2.5)
    np.testing.assert_allclose(std, math.sqrt(5.0 / 3.0 + 1e-6), rtol=1e-6)  # ddof=1, not 1.25

    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    x = images()
    loss, aux = forward(model, x, jax.random.key(1))
    t = np.asarray(layers.patchify(x, 8), np.float64)
    expected = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(aux["target"], expected, atol=1e-5)
    per_patch = ((np.asarray(aux["pred"]) - expected) ** 2).mean(-1)
    mask = np.asarray(aux["mask"])
    np.testing.assert_allclose(loss, (per_patch * mask).sum() / mask.sum(), rtol=1e-5)

    raw_model = MAE(tiny_mae(norm_pix_loss=False), rngs=nnx.Rngs(0))
    _, raw = forward(raw_model, x, jax.random.key(1))
    np.testing.assert_allclose(raw["target"], t, atol=1e-6)


def test_masked_mse_ignores_kept_patches():
    pred = jnp.zeros((1, 2, 3))
    target = jnp.stack([jnp.full((3,), 2.0), jnp.full((3,), 100.0)])[None]
    assert float(masked_mse(pred, target, jnp.array([[1.0, 0.0]]))) == 4.0


def test_deterministic_given_rng():
    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    x = images()
    loss_a, aux_a = forward(model, x, jax.random.key(3))
    loss_b, aux_b = forward(model, x, jax.random.key(3))
    loss_c, _ = forward(model, x, jax.random.key(4))
    assert float(loss_a) == float(loss_b)
    np.testing.assert_array_equal(aux_a["mask"], aux_b["mask"])
    assert float(loss_a) != float(loss_c)


def test_gradients_reach_every_param():
    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    x, key = images(), jax.random.key(1)
    grads = nnx.jit(nnx.grad(lambda m: m(x, rng=key)[0]))(model)
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, g in flat:
        g = np.asarray(g.get_value())
        assert np.all(np.isfinite(g)) and np.any(g != 0), path


def test_bfloat16_compute():
    enc = tiny_vit(dtype=jnp.bfloat16)
    model = MAE(tiny_mae(encoder=enc), rngs=nnx.Rngs(0))
    x = images()
    loss, aux = forward(model, x, jax.random.key(1))
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    assert aux["pred"].dtype == jnp.float32
    assert nnx.jit(lambda enc: enc(x))(model.encoder).dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)


def test_reconstruct_undoes_norm_pix():
    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    x, key = images(), jax.random.key(1)
    recon, pixel_mask = nnx.jit(lambda m: m.reconstruct(x, key))(model)
    assert recon.shape == x.shape and pixel_mask.shape == x.shape[:3]
    _, aux = forward(model, x, key)
    mean, std = norm_pix_stats(layers.patchify(x, 8))
    np.testing.assert_allclose(layers.patchify(recon, 8), aux["pred"] * std + mean, atol=1e-5)
    patch_mask = layers.patchify(pixel_mask[..., None], 8)
    np.testing.assert_array_equal(patch_mask, jnp.broadcast_to(aux["mask"][..., None], (2, 16, 64)))


def test_partition_specs_use_logical_names():
    model = MAE(tiny_mae(), rngs=nnx.Rngs(0))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model, nnx.Param))))
    for path, param in params:
        spec = tuple(specs[path].get_value())
        assert len(spec) == param.get_value().ndim, (path, spec)
        named = [name for name in spec if name is not None]
        assert set(named) <= set(layers.LOGICAL_AXES), (path, spec)
        assert len(set(named)) == len(named), (path, spec)
    assert tuple(specs[("decoder", "mask_token")].get_value()) == (None, None, "embed")
    assert tuple(specs[("encoder", "cls_token")].get_value()) == (None, None, "embed")


def test_mae_flops_formula():
    cfg = MAEConfig(encoder=vit_config("base"), decoder_dim=512, decoder_depth=8, decoder_heads=16)
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
