"""CROMA: ALiBi / X-ALiBi values, channel-major patches, gathered contrastive loss on 8 devices,
encodings at larger sizes, and a short real pretraining run."""

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


def test_encodings_at_training_and_larger_sizes():
    model = croma.Croma(CFG, INPUTS, rngs=nnx.Rngs(0))
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


def test_features_read_the_optical_bands_by_name():
    model = croma.Croma(CFG, INPUTS, rngs=nnx.Rngs(0))
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
