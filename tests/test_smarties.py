"""SMARTIES: tokenizer invariances, token mixup, shared mask, loss, encoder on any sensor, and a
short real pretraining run."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from eofm.data import datasets
from eofm.data.spec import SensorSpec
from eofm.models import mae, smarties, tokenizers
from eofm.train import loop, pretrain

CFG = smarties.SmartiesConfig(
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    in_chans=0,
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
)
INPUTS = {"s2": SensorSpec.full("sentinel2_l2a"), "s1": SensorSpec.full("sentinel1_grd")}


@pytest.fixture(scope="module")
def model():
    return smarties.Smarties(CFG, INPUTS, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def pair():
    """A real BigEarthNet S2 + S1 pair, 32 x 32 crops, roughly normalised."""
    sample = datasets.BigEarthNetSource()[0]
    s2 = sample["s2"][:32, :32] / 3000.0
    s1 = (sample["s1"][:32, :32] + 15.0) / 5.0
    return jnp.asarray(s2[None].repeat(2, 0)), jnp.asarray(s1[None].repeat(2, 0))


def _view(sensor, bands=None):
    spec = SensorSpec(sensor, tuple(bands)) if bands else SensorSpec.full(sensor)
    return smarties.View.of(spec, CFG)


def test_band_patches_flatten_each_band_row_major():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    patches = tokenizers.band_patches(x, 2)  # [B, L, C, 4]
    assert patches.shape == (2, 4, 3, 4)
    # patch 1 = rows 0-1, cols 2-3; band 2; row-major: (0,2) (0,3) (1,2) (1,3)
    np.testing.assert_array_equal(
        patches[0, 1, 2], [x[0, 0, 2, 2], x[0, 0, 3, 2], x[0, 1, 2, 2], x[0, 1, 3, 2]]
    )


def test_views_slots_and_dropped_cirrus():
    s1 = _view("sentinel1_grd")
    np.testing.assert_array_equal(s1.slot_bands, [0, 1] * 6)
    np.testing.assert_array_equal(_view("rgb").slot_bands, [0, 1, 2] * 4)
    l1c = _view("sentinel2_l1c")
    assert 10 not in l1c.slot_bands and len(l1c.slot_bands) == 12  # B10 has no projection
    assert l1c.weights[10].sum() == 0


def test_token_is_cmax_times_band_mean_and_ignores_tiling(model, pair):
    s2, _ = pair
    rgb = s2[..., [3, 2, 1]]
    view = _view("rgb")
    tokens = model.encoder.patch_embed(rgb, weights=view.weights)
    tiled = model.encoder.patch_embed(
        jnp.tile(rgb, (1, 1, 1, 4)), weights=np.tile(view.weights, (4, 1))
    )
    np.testing.assert_allclose(tokens, tiled, rtol=1e-5, atol=1e-5)
    # By hand: 12 * mean over bands of (patch_b @ K_k(b) + c_k(b)).
    k, c = model.encoder.patch_embed.kernel[...], model.encoder.patch_embed.bias[...]
    patches = tokenizers.band_patches(rgb, 8)
    ranges = [5, 3, 2]
    manual = 12 * sum(patches[:, :, i] @ k[r] + c[r] for i, r in enumerate(ranges)) / 3
    np.testing.assert_allclose(tokens, manual, rtol=1e-5, atol=1e-5)


def test_any_band_subset_and_unseen_sensors_encode(model, pair):
    s2, s1 = pair
    for images, view in [
        (s2, _view("sentinel2_l2a")),
        (s1, _view("sentinel1_grd")),
        (s2[..., :4], _view("sentinel2_l2a", ["B01", "B02", "B03", "B04"])),
        (
            s2[..., [1, 2, 3, 7, 10, 11]],
            _view("landsat8_oli_tirs", ["B2", "B3", "B4", "B5", "B6", "B7"]),
        ),
        (s2[..., [3, 2, 1, 7]], _view("naip")),
    ]:
        tokens, pooled = model.encode(images, view)
        assert tokens.shape == (2, 16, 32) and pooled.shape == (2, 32)
        assert np.isfinite(np.asarray(tokens)).all()


def test_mixup_selection_takes_exactly_half():
    sel = smarties.mixup_selection(jax.random.key(0), 4, 36, 0.5)
    np.testing.assert_array_equal(sel.sum(1), [18] * 4)
    assert not np.array_equal(sel[0], sel[1])


def test_complementary_mixup_and_official_bug(model, pair, monkeypatch):
    """Record the tokens each view's encoder receives: with the complement, M1 and M2 hold the
    two sensors at opposite positions; with the official bug, M2 is the unmixed S1 view."""
    s2, s1 = pair
    views = [_view("sentinel2_l2a"), _view("sentinel1_grd")]
    t2 = model.encoder.embed_patches(s2, weights=views[0].weights)
    t1 = model.encoder.embed_patches(s1, weights=views[1].weights)
    seen = []
    original = smarties.Smarties._view_loss

    def spy(self, tokens, *args):
        seen.append(tokens)
        return original(self, tokens, *args)

    monkeypatch.setattr(smarties.Smarties, "_view_loss", spy)
    rng = jax.random.key(3)
    model(list(pair), views, rng=rng)
    first = smarties.mixup_selection(jax.random.split(rng)[0], 2, 16, 0.5)[..., None]
    np.testing.assert_allclose(seen[0], np.where(first, t2, t1), rtol=1e-6)
    np.testing.assert_allclose(seen[1], np.where(first, t1, t2), rtol=1e-6)
    bugged = nnx.clone(model)
    bugged.cfg = dataclasses.replace(CFG, official_mixup_bug=True)
    seen.clear()
    bugged(list(pair), views, rng=rng)
    np.testing.assert_allclose(seen[1], t1, rtol=1e-6)


def test_loss_uses_one_shared_mask_and_norm_pix(model, pair, monkeypatch):
    masks = []
    original = smarties.Smarties._view_loss

    def spy(self, tokens, targets, slots, ids_keep, ids_restore, mask, grid_hw):
        masks.append(np.asarray(mask))
        return original(self, tokens, targets, slots, ids_keep, ids_restore, mask, grid_hw)

    monkeypatch.setattr(smarties.Smarties, "_view_loss", spy)
    loss, aux = model(
        list(pair), [_view("sentinel2_l2a"), _view("sentinel1_grd")], rng=jax.random.key(0)
    )
    np.testing.assert_array_equal(masks[0], masks[1])
    assert masks[0].sum(1).tolist() == [16 - int(16 * 0.25)] * 2  # 75 % of 16 patches
    np.testing.assert_allclose(loss, (aux["loss_view1"] + aux["loss_view2"]) / 2, rtol=1e-6)
    # Targets are normalised per token over all 12 x 64 slot values, with ddof=1.
    targets = model._targets(pair[1], _view("sentinel1_grd"))
    assert targets.shape == (2, 16, 12 * 64)
    _, std = mae.norm_pix_stats(targets)
    np.testing.assert_allclose(std[..., 0] ** 2 - 1e-6, np.var(targets, -1, ddof=1), rtol=1e-4)


def test_encoder_on_eurosat_ms_rgb_and_s1(model, shared_data):
    ms = datasets.eurosat_ms(shared_data / "eurosat_ms")[0]["s2"][:32, :32] / 3000.0
    rgb_path = next((shared_data / "eurosat_rgb").glob("*/*.jpg"))
    rgb = np.asarray(Image.open(rgb_path), np.float32)[:32, :32] / 255.0
    s1 = datasets.BigEarthNetSource(keys=("s1",))[0]["s1"][:32, :32] / 10.0
    for image, view in [
        (ms, _view("sentinel2_l1c")),
        (rgb, _view("rgb")),
        (s1, _view("sentinel1_grd")),
    ]:
        tokens, pooled = model.encode(jnp.asarray(image[None]), view)
        assert tokens.shape == (1, 16, 32) and np.isfinite(np.asarray(pooled)).all()


def test_features_of_each_sensor_of_a_sample(model):
    source = datasets.BigEarthNetSource()
    sample = source[1]
    batch = {k: jnp.asarray(sample[k][None, :32, :32]) for k in ("s2", "s1")}

    @nnx.jit
    def run(m):
        return {
            k: (m.features(x, source.specs[k]), m.encode(x, smarties.View.of(source.specs[k], CFG)))
            for k, x in batch.items()
        }

    for key, (out, (tokens, cls)) in run(model).items():
        assert model.missing_bands(source.specs[key]) == ()
        assert out["pooled"].shape == (1, 32)
        assert [level.shape for level in out["levels"]] == [(1, 4, 4, 32)] * 4
        # Pooled features are the CLS of the released model's encoding of that sensor.
        np.testing.assert_allclose(out["pooled"], cls, rtol=1e-5, atol=1e-6, err_msg=key)
        assert out["levels"][-1].shape == (1, 4, 4, 32)


def test_dense_features_are_the_tokens_before_the_final_norm(model):
    """Levels are the official `all_tokens=True` output: every tap, the last block's included,
    is the residual stream before the final LayerNorm; pooled is the final-LN CLS."""
    spec = SensorSpec.full("sentinel2_l2a")
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 12))
    out = model.features(images, spec, taps=(0, 1))
    x = model.encoder.embed_patches(images, weights=smarties.View.of(spec, CFG).weights)
    x = jnp.concatenate([jnp.broadcast_to(model.encoder.cls_token[...], (1, 1, 32)), x], axis=1)
    streams = []
    for block in model.encoder.blocks:
        x = block(x)
        streams.append(x)
    for level, stream in zip(out["levels"], streams, strict=True):
        np.testing.assert_allclose(level, stream[:, 1:].reshape(1, 4, 4, 32), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out["pooled"], model.encoder.norm(streams[-1])[:, 0], rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(out["levels"][-1], model.encoder.norm(out["levels"][-1]), atol=1e-3)


def test_official_blend_embeds_landsat8_blue_as_the_official_range(model):
    """With blend="official", Landsat-8 B2 embeds as range 18 = 0.79 aerosol + 0.21 blue_1, and
    B6, centred on short_wave_infrared_3, takes that range alone."""
    official = dataclasses.replace(CFG, blend="official")
    view = smarties.View.of(SensorSpec.full("landsat8_oli_tirs"), official)
    bands = SensorSpec.full("landsat8_oli_tirs").bands
    np.testing.assert_allclose(view.weights[bands.index("B2"), :2], (0.79, 0.21), rtol=1e-6)
    assert view.weights[bands.index("B6")].tolist() == [float(r == 13) for r in range(17)]
    blue = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
    weights = smarties.View.of(SensorSpec("landsat8_oli_tirs", ("B2",)), official).weights
    tokens = model.encoder.patch_embed(blue, weights=weights)
    k, c = model.encoder.patch_embed.kernel[...], model.encoder.patch_embed.bias[...]
    patches = tokenizers.band_patches(blue, 8)[:, :, 0]
    expected = 12 * (0.79 * (patches @ k[0] + c[0]) + 0.21 * (patches @ k[1] + c[1]))
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no spectral projection"):
        model.missing_bands(SensorSpec("sentinel2_l1c", ("B10",)))


@pytest.mark.parametrize("sensors", [("s2", "s1"), ("s2",)], ids=["paired", "single"])
def test_short_pretraining_run_lowers_the_loss(sensors, tmp_path, pretrain_config):
    config = _tiny_config(pretrain_config("smarties", "tiny"), sensors, tmp_path)
    task = pretrain.workload(config, tmp_path)
    loop.train(config, tmp_path, task)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == config.total_steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


def _tiny_config(config, sensors, workdir: Path):
    config.model.update(
        dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    )
    config.data.sensors = sensors
    config.data.image_size = 48
    config.data.prepared_dir = str(workdir / "data")
    config.batch_size = 8
    config.total_steps = 40
    config.warmup_steps = 5
    config.lr = 2e-3
    config.log_every = 1
    config.peak_flops = 1e11
    return config
