"""CROMA: ALiBi / X-ALiBi values, channel-major patches, gathered contrastive loss on 8 devices,
encodings at larger sizes, and a short real pretraining run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm import parallel
from eofm.data.spec import SensorSpec
from eofm.models import croma, layers
from eofm.train import loop, pretrain

CFG = croma.CromaConfig(
    embed_dim=32, depth=2, num_heads=4, decoder_dim=16, decoder_heads=2, decoder_mlp_dim=32
)
# Optical (12 Sentinel-2 L2A bands), then radar (VV, VH).
INPUTS = {"s2": SensorSpec.full("sentinel2_l2a"), "s1": SensorSpec.full("sentinel1_grd")}


@pytest.fixture(scope="module")
def model():
    return croma.Croma(CFG, INPUTS, rngs=nnx.Rngs(0))


def _with_official_joint_bias(model):
    official = nnx.clone(model)
    official.cfg = dataclasses.replace(model.cfg, official_joint_bias=True)
    return official


def test_alibi_slopes():
    np.testing.assert_allclose(layers.alibi_slopes(16), 2.0 ** (-np.arange(1, 17) / 2), rtol=1e-6)
    np.testing.assert_allclose(layers.alibi_slopes(8), 2.0 ** (-np.arange(1, 9)), rtol=1e-6)
    # Not a power of two: the 4-head slopes, then every other 8-head slope.
    np.testing.assert_allclose(layers.alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


@pytest.mark.parametrize("heads", [4, 6])
def test_alibi_bias_matches_the_formula(heads):
    grid = (3, 4)
    bias = np.asarray(layers.alibi_2d_bias(grid, heads))[0]
    slopes = layers.alibi_slopes(heads)
    for i in range(12):
        for j in range(12):
            (ri, ci), (rj, cj) = divmod(i, 4), divmod(j, 4)
            expected = -slopes * np.sqrt((ri - rj) ** 2 + (ci - cj) ** 2)
            np.testing.assert_allclose(bias[:, i, j], expected, rtol=1e-6, atol=1e-7)
    # X-ALiBi under masking: rows of the kept queries, columns of the kept keys.
    q_ids = jnp.asarray([[0, 5, 11]])
    k_ids = jnp.asarray([[3, 4, 10]])
    gathered = np.asarray(layers.alibi_2d_bias(grid, heads, q_ids, k_ids))[0]
    np.testing.assert_allclose(gathered, bias[:, [0, 5, 11]][:, :, [3, 4, 10]], rtol=1e-6)


def test_patches_are_channel_major():
    x = jnp.arange(1 * 2 * 2 * 3, dtype=jnp.float32).reshape(1, 2, 2, 3)
    v = croma.patch_vectors(x, 2)  # one patch, (c, i, j)
    np.testing.assert_array_equal(v[0, 0], np.moveaxis(np.asarray(x[0]), -1, 0).ravel())


def _features(seed, n=16, d=8):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_gathered_contrastive_loss_equals_single_device():
    z_opt, z_rad = _features(0), _features(1)
    z_rad = (z_rad + 2 * z_opt) / np.linalg.norm(z_rad + 2 * z_opt, axis=1, keepdims=True)
    scale = jnp.asarray(np.log(1 / 0.07), jnp.float32)
    single = jax.jit(croma.contrastive_loss)(z_opt, z_rad, scale)
    mesh = parallel.make_mesh("dp")
    assert mesh.shape["data"] == 8
    sharding = parallel.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        sharded = jax.jit(croma.contrastive_loss)(
            jax.device_put(z_opt, sharding), jax.device_put(z_rad, sharding), scale
        )
        grads = jax.jit(jax.grad(lambda o, r: croma.contrastive_loss(o, r, scale)[0]))(
            jax.device_put(z_opt, sharding), jax.device_put(z_rad, sharding)
        )
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    np.testing.assert_allclose(sharded[1], single[1])
    assert float(single[1]) > 0.5  # correlated pairs are mostly matched
    # Gradient only through each device's own rows: other devices' negatives are constants, so
    # the gradient is the per-device one averaged (torch DDP with dist.all_gather), not the
    # full-batch gradient.
    full = jax.grad(lambda o: croma.contrastive_loss(o, z_rad, scale)[0])(z_opt)
    assert not np.allclose(grads, full, rtol=1e-3)
    per_device = []
    for i in range(8):
        rows = slice(2 * i, 2 * i + 2)

        def local(o):
            all_o = jnp.asarray(z_opt).at[rows].set(o)
            all_o = jax.lax.stop_gradient(all_o).at[rows].set(o)
            lo = jnp.exp(scale)
            l1 = jax.nn.log_softmax(lo * o @ jnp.asarray(z_rad).T)[
                jnp.arange(2), 2 * i + jnp.arange(2)
            ]
            l2 = jax.nn.log_softmax(lo * jnp.asarray(z_rad[rows]) @ all_o.T)[
                jnp.arange(2), 2 * i + jnp.arange(2)
            ]
            return -0.5 * (l1.mean() + l2.mean()) / 8

        per_device.append(jax.grad(local)(jnp.asarray(z_opt[rows])))
    np.testing.assert_allclose(grads, np.concatenate(per_device), rtol=1e-4, atol=1e-6)


def test_encodings_at_training_and_larger_sizes(model):
    for size in (120, 240):
        optical = jax.random.normal(jax.random.key(0), (1, size, size, 12))
        radar = jax.random.normal(jax.random.key(1), (1, size, size, 2))
        out = model.encode(optical, radar)
        n = (size // 8) ** 2
        for name in ("optical", "radar", "joint"):
            tokens, pooled = out[name]
            assert tokens.shape == (1, n, 32) and pooled.shape == (1, 32)
            assert np.isfinite(np.asarray(tokens)).all()
        assert set(model.encode(optical=optical)) == {"optical"}


def test_features_read_the_optical_bands_by_name(model):
    optical = jax.random.normal(jax.random.key(0), (1, 32, 48, 12))
    # Sentinel-2 L1C: the 12 optical bands and B10, which the optical encoder does not read.
    l1c = SensorSpec.full("sentinel2_l1c")
    assert len(l1c.bands) == 13
    order = [l1c.bands.index(b) for b in INPUTS["s2"].bands]
    images = jnp.zeros((1, 32, 48, 13)).at[..., jnp.asarray(order)].set(optical)
    images = images.at[..., l1c.bands.index("B10")].set(7.0)
    assert model.missing_bands(l1c) == ()

    @nnx.jit
    def run(m):
        return (
            m.features(images, l1c),
            m.encode(optical=optical)["optical"],
            m.features(images, l1c, taps=(0,)),
        )

    out, (tokens, pooled), tapped = run(model)
    np.testing.assert_allclose(out["pooled"], pooled, rtol=1e-5, atol=1e-6)
    assert [level.shape for level in out["levels"]] == [(1, 4, 6, 32)] * 4
    # The deepest default tap is the last block, final norm included: the encoder's tokens.
    np.testing.assert_allclose(out["levels"][-1], tokens.reshape(1, 4, 6, 32), rtol=1e-5, atol=1e-5)
    assert [level.shape for level in tapped["levels"]] == [(1, 4, 6, 32)]
    with pytest.raises(ValueError, match="B01"):
        model.missing_bands(SensorSpec("sentinel2_l2a", ("B02", "B03", "B04")))


def _spec_alibi(grid_w, heads, q_ids, k_ids):
    """models.md 2.2 in numpy: bias[b, h, i, j] = -m_h * ||pos(q_i) - pos(k_j)||, with
    m_h = 2^(-8h/H) and patches numbered row-major.  int [B, Nq], [B, Nk] -> [B, H, Nq, Nk]."""
    slopes = 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)
    (rq, cq), (rk, ck) = np.divmod(np.asarray(q_ids), grid_w), np.divmod(np.asarray(k_ids), grid_w)
    dist = np.hypot(rq[:, :, None] - rk[:, None, :], cq[:, :, None] - ck[:, None, :])
    return -slopes[None, :, None, None] * dist[:, None]


def _pretraining_step(model, monkeypatch, official_bias=None):
    """Loss, aux and what the joint encoder sees (kept ids, the biases of its first layer, its
    output) in one pretraining step on 32 px images (4 x 4 patches, 4 kept);
    `official_bias(radar_keep, optical_keep)` replaces both biases of every joint layer."""
    seen = {}
    joint_tokens, joint_layer = croma.Croma.joint_tokens, croma._JointLayer.__call__

    def spy_tokens(self, radar, optical, grid, radar_keep=None, optical_keep=None):
        seen["keep"] = (np.asarray(radar_keep), np.asarray(optical_keep))
        seen["joint"] = joint_tokens(self, radar, optical, grid, radar_keep, optical_keep)
        return seen["joint"]

    def spy_layer(self, radar, optical, self_bias, cross_bias):
        seen.setdefault("bias", (np.asarray(self_bias), np.asarray(cross_bias)))
        if official_bias is not None:
            self_bias = cross_bias = jnp.asarray(official_bias(*seen["keep"]), jnp.float32)
        return joint_layer(self, radar, optical, self_bias, cross_bias)

    monkeypatch.setattr(croma.Croma, "joint_tokens", spy_tokens)
    monkeypatch.setattr(croma._JointLayer, "__call__", spy_layer)
    optical = jax.random.normal(jax.random.key(1), (2, 32, 32, 12))
    radar = jax.random.normal(jax.random.key(2), (2, 32, 32, 2))
    loss, aux = model(optical, radar, rng=jax.random.key(0))
    return loss, aux, seen


def test_official_joint_bias_reproduces_the_official_pretraining_loss(model, monkeypatch):
    """The official script gives the joint encoder's radar self-attention the cross-attention
    X-ALiBi bias (radar query x optical key positions); ours gives it radar x radar."""
    ours, official = model, _with_official_joint_bias(model)
    spec_bias = lambda q, k: _spec_alibi(4, CFG.num_heads, q, k)

    _, aux, seen = _pretraining_step(ours, monkeypatch)
    joint = np.asarray(seen["joint"])
    radar_keep, optical_keep = seen["keep"]
    assert radar_keep.shape == (2, 4) and set(radar_keep[0]) != set(optical_keep[0])
    self_bias, cross_bias = seen["bias"]
    np.testing.assert_allclose(self_bias, spec_bias(radar_keep, radar_keep), rtol=1e-6)
    np.testing.assert_allclose(cross_bias, spec_bias(radar_keep, optical_keep), rtol=1e-6)

    official_loss, official_aux, seen = _pretraining_step(official, monkeypatch)
    assert all(np.array_equal(a, b) for a, b in zip(seen["keep"], (radar_keep, optical_keep)))
    self_bias, cross_bias = seen["bias"]
    np.testing.assert_allclose(self_bias, spec_bias(radar_keep, optical_keep), rtol=1e-6)
    np.testing.assert_array_equal(self_bias, cross_bias)
    assert np.std(np.asarray(seen["joint"]) - joint) > 0.01 * np.std(joint)
    # The official loss: our model with the spec's bias in both attentions of every joint layer.
    reference, reference_aux, _ = _pretraining_step(ours, monkeypatch, spec_bias)
    np.testing.assert_allclose(official_loss, reference, rtol=1e-6)
    for key in ("mae_optical", "mae_radar"):
        np.testing.assert_allclose(official_aux[key], reference_aux[key], rtol=1e-6)
        assert float(official_aux[key]) != float(aux[key]), key
    np.testing.assert_array_equal(official_aux["contrastive"], aux["contrastive"])


def test_joint_bias_settings_agree_when_both_sensors_keep_the_same_patches(model):
    ours, official = model, _with_official_joint_bias(model)
    radar = jax.random.normal(jax.random.key(0), (2, 4, 32))
    optical = jax.random.normal(jax.random.key(1), (2, 4, 32))
    keep = jnp.asarray([[0, 5, 10, 15], [3, 2, 9, 12]])
    other = jnp.asarray([[1, 5, 11, 14], [3, 7, 8, 12]])
    np.testing.assert_array_equal(
        ours.joint_tokens(radar, optical, (4, 4), keep, keep),
        official.joint_tokens(radar, optical, (4, 4), keep, keep),
    )
    assert not np.allclose(
        ours.joint_tokens(radar, optical, (4, 4), keep, other),
        official.joint_tokens(radar, optical, (4, 4), keep, other),
        atol=1e-4,
    )
    # Unmasked (every patch of both sensors, in order, as `encode` runs it): the same too.
    radar, optical = jnp.tile(radar, (1, 4, 1)), jnp.tile(optical, (1, 4, 1))
    np.testing.assert_array_equal(
        ours.joint_tokens(radar, optical, (4, 4)), official.joint_tokens(radar, optical, (4, 4))
    )


def test_short_pretraining_run_learns_to_match_pairs(tmp_path, pretrain_config):
    config = pretrain_config("croma", "tiny")
    config.model.update(
        dict(
            embed_dim=64, depth=2, num_heads=4, decoder_dim=32, decoder_heads=2, decoder_mlp_dim=64
        )
    )
    config.data.image_size = 48
    config.data.prepared_dir = str(tmp_path / "data")
    config.batch_size = 8
    config.total_steps = 100
    config.warmup_steps = 5
    config.lr = 2e-3
    config.log_every = 1
    config.peak_flops = 1e11
    # Tensor parallelism over the 8 test devices keeps the batch whole: with 8 data-parallel
    # devices each would hold one pair and see gradient from its own row only.
    config.mesh.update(dict(preset="fsdp_tp", fsdp=1, tensor=8))
    loop.train(config, tmp_path, pretrain.workload(config, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    accuracy = [r["contrastive_accuracy"] for r in records]
    chance = 1 / config.batch_size
    assert np.mean(accuracy[-20:]) > 1.5 * chance, accuracy
    assert np.mean(accuracy[-20:]) > np.mean(accuracy[:20]), accuracy
    contrastive = [r["contrastive"] for r in records]
    assert np.mean(contrastive[-20:]) < np.mean(contrastive[:20])
