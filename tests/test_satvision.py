"""SatVision-TOA: SimMIM masking, decoder layout, loss on absent and invalid bands, band slots,
the encoder interface, scan / remat equivalence and stochastic depth."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eofm.data.spec import SensorSpec
from eofm.models import family, layers, satvision, swin
from eofm.train import optim

MOD09GA_NAME = "MOD09GA.A2008296.h14v17_sr_b01-b07_crop.tif"
MOD09 = SensorSpec("modis_land", ("b01", "b02", "b03", "b04", "b05", "b06", "b07"))
# Four stages at 64 px (grids 16, 8, 4, 2); stage 2 has two units of two blocks for the scan.
SMALL = dict(
    embed_dim=8,
    depths=(2, 2, 4, 2),
    num_heads=(1, 2, 2, 4),
    extra_norm_period=2,
    cpb_hidden=16,
    in_chans=14,
)


def small_model(seed=0, spec=MOD09, **overrides):
    cfg = satvision.Config(**{**SMALL, **overrides})
    return satvision.Model(cfg, {"modis": spec}, rngs=nnx.Rngs(seed))


def test_154_of_256_mask_units_at_128_px():
    cfg = satvision.Config(**SMALL)
    assert cfg.num_masked(16 * 16) == 154
    assert cfg.num_masked(10) == 6  # exactly 0.6 * 10, not ceil(6.000000000000001)
    mask = satvision.random_unit_mask(jax.random.key(0), 3, (16, 16), 154)
    assert mask.shape == (3, 16, 16)
    np.testing.assert_array_equal(mask.sum(axis=(1, 2)), [154, 154, 154])
    assert not np.array_equal(mask[0], mask[1])  # drawn per image


def test_pixel_shuffle_reads_channel_c_r2_plus_i_r_plus_j():
    r, k = 3, 2
    cells = np.arange(2 * 2 * k * r * r, dtype=np.float32).reshape(1, 2, 2, k * r * r)
    out = np.asarray(satvision.pixel_shuffle(jnp.asarray(cells), r))
    assert out.shape == (1, 6, 6, k)
    for cell_row, cell_col, i, j, c in np.ndindex(2, 2, r, r, k):
        got = out[0, cell_row * r + i, cell_col * r + j, c]
        assert got == cells[0, cell_row, cell_col, c * r * r + i * r + j]


def test_masked_l1_is_the_official_loss_when_all_valid():
    rng = np.random.default_rng(0)
    x, pred = rng.normal(size=(2, 2, 16, 16, 14)).astype(np.float32)
    pixel_mask = (rng.random((2, 16, 16)) < 0.6).astype(np.float32)
    official = np.sum(np.abs(x - pred) * pixel_mask[..., None]) / (pixel_mask.sum() + 1e-5) / 14
    got = satvision.masked_l1(x, pred, pixel_mask, np.ones_like(x))
    np.testing.assert_allclose(got, official, rtol=1e-6)


def test_masked_l1_counts_only_valid_values():
    rng = np.random.default_rng(1)
    x, pred = rng.normal(size=(2, 1, 8, 8, 14)).astype(np.float32)
    pixel_mask = np.ones((1, 8, 8), np.float32)
    valid = np.zeros_like(x)
    valid[..., :5] = 1.0  # five present slots
    valid[:, :4] = 0.0  # top half invalid (fill)
    want = np.abs(x - pred)[:, 4:, :, :5].mean()
    np.testing.assert_allclose(satvision.masked_l1(x, pred, pixel_mask, valid), want, rtol=1e-5)
    # What an absent or invalid value holds never reaches the loss.
    garbage = np.where(valid > 0, x, 1e6).astype(np.float32)
    np.testing.assert_allclose(
        satvision.masked_l1(garbage, pred, pixel_mask, valid), want, rtol=1e-5
    )


def test_masked_tokens_hide_their_pixels():
    """The mask token replaces the embedded tokens, so pixels under masked units cannot change
    the prediction; pixels of visible units do."""
    model = small_model()
    images = jax.random.normal(jax.random.key(0), (1, 64, 64, 14))
    unit_mask = jnp.zeros((1, 8, 8)).at[0, 2:5, 1:6].set(1.0)
    pixel_mask = satvision.upsample_mask(unit_mask, 8)[..., None]
    predict = nnx.jit(lambda model, images: model.predict(images, unit_mask))
    pred = predict(model, images)
    changed_masked = images + 5.0 * pixel_mask
    np.testing.assert_allclose(predict(model, changed_masked), pred, atol=1e-6)
    changed_visible = images + 5.0 * (1 - pixel_mask)
    assert not np.allclose(predict(model, changed_visible), pred, atol=1e-3)


def test_loss_ignores_absent_and_invalid_bands_and_is_deterministic():
    model = small_model()
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 7))
    valid = np.ones(images.shape, bool)
    valid[:, :32] = False  # fill pixels
    batch = {"modis": images, "modis_valid": jnp.asarray(valid)}
    loss_fn = nnx.jit(lambda model, batch: model.loss(batch, jax.random.key(2)))
    loss, metrics = loss_fn(model, batch)
    again, _ = loss_fn(model, batch)
    assert np.isfinite(loss) and loss == again
    # 5 of the 14 slots are filled (b04, b05 have no MODIS TOA slot), half the pixels valid.
    np.testing.assert_allclose(metrics["masked_valid_fraction"], 5 / 14 / 2, atol=0.05)
    images_x, valid_x = model.slots(images, MOD09, jnp.asarray(valid))
    assert valid_x.shape == (2, 64, 64, 14)
    np.testing.assert_array_equal(valid_x[0, 40, 40], [1, 1, 1, 1, 1] + [0] * 9)
    np.testing.assert_array_equal(valid_x[0, 10, 10], [0] * 14)
    np.testing.assert_array_equal(images_x[..., 3], images[..., 5])  # b06 in slot 3


def test_other_sensors_fill_modis_slots_by_wavelength():
    def filled(sensor):
        spec = SensorSpec.full(sensor)
        index = family.wavelength_indices(spec, satvision.SLOTS)
        return {s: spec.bands[i] for s, i in zip(satvision.SLOTS.bands, index) if i is not None}

    assert filled("landsat8_oli_tirs") == {
        "b01": "B4",
        "b02": "B5",
        "b03": "B2",
        "b06": "B6",
        "b07": "B7",
        "b26": "B9",
        "b31": "B10",
        "b32": "B11",
    }
    # B8A is nearer MODIS band 2 than B08; cirrus B10 fills band 26.
    assert filled("sentinel2_l1c") == {
        "b01": "B04",
        "b02": "B8A",
        "b03": "B02",
        "b06": "B11",
        "b07": "B12",
        "b26": "B10",
    }
    # A broad thermal band fills only its nearest slot.
    assert filled("landsat5_tm")["b31"] == "B6" and "b32" not in filled("landsat5_tm")
    assert filled("modis_toa") == {b: b for b in satvision.SLOTS.bands}
    with pytest.raises(ValueError, match="none is covered"):
        satvision.from_data({"s1": SensorSpec.full("sentinel1_grd")}, 64)


def test_features_are_the_four_stages():
    model = small_model()
    spec = SensorSpec.full("sentinel2_l1c")
    images = jax.random.normal(jax.random.key(3), (2, 64, 64, len(spec.bands)))
    out = model.features(images, spec)
    assert [level.shape for level in out["levels"]] == [
        (2, 16, 16, 8),
        (2, 8, 8, 16),
        (2, 4, 4, 32),
        (2, 2, 2, 64),
    ]
    np.testing.assert_allclose(out["pooled"], out["levels"][-1].mean(axis=(1, 2)), rtol=1e-6)
    assert len(model.missing_bands(spec)) == 14 - 6
    with pytest.raises(ValueError, match="taps"):
        model.features(images, spec, taps=(1, 2))
    with pytest.raises(ValueError, match="multiples of 32 px"):
        model.features(images[:, :48, :48], spec)


def test_layer_ids_for_layerwise_lr_decay():
    model = small_model()
    assert model.num_layers == 11
    layer_of = model.layer_of
    assert layer_of("encoder/patch_embed/proj/kernel") == 0
    assert layer_of("mask_token") == 0
    assert layer_of("encoder/stages/0/blocks/0/attn/qkv/kernel") == 1
    assert layer_of("encoder/stages/2/blocks/3/mlp/fc1/kernel") == 8
    assert layer_of("encoder/stages/2/downsample/reduction/kernel") == 8
    assert layer_of("encoder/stages/3/blocks/1/norm1/scale") == 10
    assert layer_of("encoder/norm/scale") == 11
    assert layer_of("decoder/kernel") == 11


def test_no_weight_decay_on_position_bias_mlp_logit_scale_and_mask_token():
    params = nnx.state(small_model(), nnx.Param)
    decayed = {
        path: flag
        for path, flag in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))
        for path in [optim.param_path(path)]
    }
    assert not decayed["encoder/stages/0/blocks/0/attn/cpb_fc1/kernel/value"]
    assert not decayed["encoder/stages/0/blocks/0/attn/cpb_fc2/kernel/value"]
    assert not decayed["encoder/stages/0/blocks/0/attn/logit_scale/value"]
    assert not decayed["mask_token/value"]
    assert decayed["encoder/stages/0/blocks/0/attn/qkv/kernel/value"]
    assert decayed["decoder/kernel/value"]


def _loss_and_grads(model, batch):
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return nnx.merge(graph, params, rest).loss(batch, jax.random.key(5))[0]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def half_fill_reference():
    """(batch, loss, grads) of the plain model; the top half of the images is fill (zeros), whose
    patches embed to all-zero tokens that cosine attention must not turn into NaN gradients."""
    images = jax.random.normal(jax.random.key(4), (2, 64, 64, 7)).at[:, :32].set(0.0)
    batch = {"modis": images}
    return batch, *_loss_and_grads(small_model(drop_path_rate=0.2), batch)


def test_fill_tokens_give_finite_gradients(half_fill_reference):
    _, loss, grads = half_fill_reference
    assert np.isfinite(loss)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("remat,scan", [("none", True), ("dots", False), ("full", True)])
def test_scan_and_remat_give_the_same_loss_and_gradients(remat, scan, half_fill_reference):
    batch, want_loss, want_grads = half_fill_reference
    model = small_model(drop_path_rate=0.2, remat=remat, scan_blocks=scan)
    loss, grads = _loss_and_grads(model, batch)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_scan_runs_only_stages_with_two_units(monkeypatch):
    scans = []
    real_scan = jax.lax.scan
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    model = small_model(scan_blocks=True)
    assert model.cfg.scan_unit == 2
    model.features(jnp.zeros((1, 64, 64, 7)), MOD09)
    assert len(scans) == 1  # stage 2 (4 blocks); the 2-block stages run unrolled


def test_drop_path_zeroes_whole_examples_and_keeps_the_mean():
    x = jnp.ones((4000, 3, 2))
    out = np.asarray(layers.drop_path(x, 0.25, jax.random.key(0)))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    np.testing.assert_allclose(out.mean(), 1.0, atol=0.03)
    np.testing.assert_array_equal(layers.drop_path(x, 0.25, None), x)


def test_stochastic_depth_rates_rise_linearly_over_all_blocks():
    cfg = satvision.Config(**{**SMALL, "drop_path_rate": 0.1})
    rates = cfg.drop_path_rates()
    assert len(rates) == 10
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 10))
    stage = swin.SwinStage(cfg.encoder, 2, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(stage.drop_rates, rates[4:8])


def test_released_giant_size():
    shapes = {}
    for variant in ("giant",):
        fields = dict(satvision.VARIANTS[variant])
        cfg = satvision.Config(**fields, in_chans=14)
        model = nnx.eval_shape(
            lambda cfg=cfg: satvision.Model(cfg, {"modis": satvision.SLOTS}, rngs=nnx.Rngs(0))
        )
        params = nnx.state(model, nnx.Param)
        count = lambda prefix, params=params: sum(
            x.size
            for p, x in jax.tree_util.tree_leaves_with_path(params)
            if optim.param_path(p).startswith(prefix)
        )
        shapes[variant] = (count("encoder/"), count("decoder/"))
    assert 2.55e9 < shapes["giant"][0] < 2.65e9
    assert shapes["giant"][1] == 4096 * 32 * 32 * 14 + 32 * 32 * 14  # the 59 M SimMIM head


def test_config_round_trip_through_the_family():
    module = family.get("satvision")
    fields = family.config_fields(module, "tiny")
    assert "in_chans" not in fields
    cfg = family.make_config(module, fields, {"modis": MOD09}, 64)
    assert cfg.in_chans == 14 and cfg == dataclasses.replace(cfg)


def test_short_pretraining_on_the_mod09ga_strip_learns(tmp_path, pretrain_config, shared_data):
    """Half of the strip is fill and only 5 of the 14 slots are filled, so the validity masks must
    reach the loss."""
    from eofm.train import loop, pretrain

    config = pretrain_config("satvision", "tiny")
    config.model.update(dict(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 2)))
    config.data.source_args.files = str(shared_data / "modis_samples" / MOD09GA_NAME)
    config.data.prepared_dir = str(tmp_path / "data")
    config.total_steps = 16
    config.warmup_steps = 2
    config.log_every = 1
    config.peak_flops = 1e11
    loop.train(config, tmp_path, pretrain.workload(config, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses
    # Fill pixels and the 9 absent slots are never targets.
    assert all(r["masked_valid_fraction"] < 5 / 14 for r in records)
