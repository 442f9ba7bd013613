"""SpectralGPT: exact cube tokenisation, the loss formula, position interpolation, and a real
two-stage (progressive) pretraining run."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.data.spec import SensorSpec
from eofm.models import spectralgpt
from eofm.train import loop, pretrain

INPUTS = {"s2": SensorSpec("sentinel2_l2a", spectralgpt.BANDS)}


def test_cubify_order_and_exact_inverse():
    x = jnp.arange(2 * 16 * 16 * 12, dtype=jnp.float32).reshape(2, 16, 16, 12)
    cubes = spectralgpt.cubify(x)
    assert cubes.shape == (2, 4 * 2 * 2, 3 * 8 * 8)
    # Token 5 = spectral group 1 (bands 3-5), spatial patch 1 (rows 0-7, cols 8-15);
    # values in (band-in-group, row, col) order.
    expected = np.moveaxis(np.asarray(x[0, 0:8, 8:16, 3:6]), -1, 0).ravel()
    np.testing.assert_array_equal(cubes[0, 4 + 1], expected)
    np.testing.assert_array_equal(spectralgpt.uncubify(cubes, (16, 16)), x)


def test_loss_on_a_hand_built_example():
    rng = np.random.default_rng(0)
    groups, locations, k = 4, 3, 6
    pred = rng.normal(size=(1, groups * locations, k)).astype(np.float32)
    target = rng.normal(size=pred.shape).astype(np.float32)
    mask = np.zeros((1, groups * locations), np.float32)
    mask[0, [0, 4, 11]] = 1
    loss, aux = spectralgpt.spectralgpt_loss(
        jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), groups
    )
    l1 = np.mean([np.mean((pred[0, i] - target[0, i]) ** 2) for i in (0, 4, 11)])
    sums = lambda a: a[0].reshape(groups, locations, k).sum(0)
    l2 = np.mean((sums(pred) - sums(target)) ** 2)
    np.testing.assert_allclose(aux["loss_cubes"], l1, rtol=1e-6)
    np.testing.assert_allclose(aux["loss_group_sums"], l2, rtol=1e-6)
    np.testing.assert_allclose(loss, l1 + l2, rtol=1e-6)


def test_position_interpolation_keeps_values_on_the_shared_grid():
    table = np.random.default_rng(1).normal(size=(4 * 4, 5)).astype(np.float32)
    wider = np.asarray(spectralgpt.resize_positions(table, 7)).reshape(7, 7, 5)
    np.testing.assert_allclose(wider[::2, ::2], table.reshape(4, 4, 5), rtol=1e-6, atol=1e-6)
    # 12 x 12 (96 px) -> 16 x 16 (128 px): corners kept, values in between interpolated.
    t12 = np.random.default_rng(2).normal(size=(144, 3)).astype(np.float32)
    t16 = np.asarray(spectralgpt.resize_positions(t12, 16)).reshape(16, 16, 3)
    for (r, c), (r2, c2) in [((0, 0), (0, 0)), ((0, 11), (0, 15)), ((11, 11), (15, 15))]:
        np.testing.assert_allclose(t16[r2, c2], t12.reshape(12, 12, 3)[r, c], rtol=1e-6)
    assert t16.min() >= t12.min() - 1e-6 and t16.max() <= t12.max() + 1e-6


def test_masks_ninety_percent_and_encodes():
    cfg = spectralgpt.SpectralGPTConfig(
        embed_dim=32,
        depth=1,
        num_heads=2,
        image_size=32,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
    )
    model = spectralgpt.SpectralGPT(cfg, INPUTS, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 12))
    l1c = SensorSpec.full("sentinel2_l1c")  # the 12 bands and B10
    with_b10 = jnp.insert(x, l1c.bands.index("B10"), 5.0, axis=-1)

    @nnx.jit
    def run(m):
        key = jax.random.key(1)
        return (
            m(x, rng=key),
            m.loss({"s2": x}, key)[0],
            m.encode(x),
            m.features(x, INPUTS["s2"]),
            m.features(with_b10, l1c)["pooled"],
        )

    (loss, aux), loss_of_batch, (tokens, pooled), out, pooled_l1c = run(model)
    assert np.isfinite(float(loss)) and set(aux) == {"loss_cubes", "loss_group_sums"}
    np.testing.assert_array_equal(loss_of_batch, loss)
    assert tokens.shape == (2, 4 * 16, 32) and pooled.shape == (2, 32)
    # Features: the mean of the final tokens, and tapped blocks averaged over the 4 spectral
    # groups on the 4 x 4 patch grid; the last block's tap is the encoder output.
    np.testing.assert_allclose(out["pooled"], pooled, rtol=1e-5, atol=1e-6)
    assert [level.shape for level in out["levels"]] == [(2, 4, 4, 32)] * 4
    grid_mean = tokens.reshape(2, 4, 4, 4, 32).mean(1)
    np.testing.assert_allclose(out["levels"][-1], grid_mean, rtol=1e-5, atol=1e-5)
    # Bands are picked by name; missing ones are an error naming them.
    assert model.missing_bands(l1c) == ()
    np.testing.assert_allclose(pooled_l1c, pooled, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="B11"):
        model.missing_bands(SensorSpec("sentinel2_l2a", spectralgpt.BANDS[:10]))


def _config(load, stage: str, workdir: Path):
    config = load("spectralgpt", "tiny" + stage)
    config.model.update(
        dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    )
    config.data.image_size = 32 if not stage else 48
    config.data.prepared_dir = str(workdir.parent / "data")
    config.batch_size = 8
    config.total_steps = 30
    config.warmup_steps = 3
    config.lr = 2e-3
    config.log_every = 1
    config.peak_flops = 1e11
    return config


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").open()]


def test_two_stage_progressive_run(tmp_path, pretrain_config):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    config1 = _config(pretrain_config, "", stage1)
    loop.train(config1, stage1, pretrain.workload(config1, stage1))
    config2 = _config(pretrain_config, ",stage2", stage2)
    config2.init_from = str(stage1)
    loop.train(config2, stage2, pretrain.workload(config2, stage2))
    first, second = _losses(stage1), _losses(stage2)
    assert np.mean(first[-5:]) < np.mean(first[:5])
    assert np.mean(second[-5:]) < np.mean(second[:5])
    # Stage 2 starts from stage 1's weights, not from scratch.
    assert second[0] < first[0]
    # Its spatial positions are stage 1's, interpolated from 4 x 4 to 6 x 6.
    task2 = pretrain.workload(config2, stage2)
    _, model2 = loop.restore_model(config2, stage2, task2)
    assert model2.pos.spatial.shape == (36, 64)
