"""Whole-scene embeddings (`eofm.infer.embed`, `scripts/infer_scene.py`) on real scenes: the
Sen1Floods11 Sentinel-2 chip (512 x 512, 13 bands, EPSG:4326), the Landsat-7 North Carolina scene
(0 = nodata, projected) and a Sentinel-2 L2A stack of SSL4EO-S12, with a random tiny SMARTIES
(96 px windows, 16 px tokens) and the small pretrained SMARTIES run of conftest."""

import json
from pathlib import Path

import affine
import jax
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from run_checks import load_script

from eofm.data import cube
from eofm.eval import encoders
from eofm.infer import embed

ROOT = Path(__file__).resolve().parents[1]
RANDOM_SMARTIES = f"random:{ROOT / 'configs/pretrain/smarties.py'}:tiny"
S2_CHIP = "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"
LANDSAT7 = "landsat7_nc_sparse_labels/lsat7_2000_b1-b5_b7.tif"
SSL4EO_L2A = "ssl4eo_s12/s2a/0000200/20200813T054639_20200813T054952_T43RCP"
TOKEN = 16  # px per token of the tiny SMARTIES


@pytest.fixture(scope="module")
def encoder():
    return encoders.load_encoder(RANDOM_SMARTIES)


@pytest.fixture(scope="module")
def chip(shared_data):
    return shared_data / S2_CHIP


def embed_chip(encoder, chip, output, **kwargs):
    settings = {"sensor": "sentinel2_l1c", "tile": 256, "show_progress": False, **kwargs}
    return embed.embed_scene(encoder, chip, output, **settings)


def store_arrays(path):
    """Every array of a store (data, masks and, once finalised, coordinates), as numpy."""
    ds = xr.open_zarr(path, consolidated=False)
    return {name: ds[name].values for name in (*ds.data_vars, *ds.coords)}


def test_token_embeddings_are_georeferenced_like_the_scene(encoder, chip, tmp_path):
    output = tmp_path / "chip.zarr"
    summary = embed_chip(encoder, chip, output)

    ds = xr.open_zarr(output)
    with rasterio.open(chip) as src:
        crs, transform, bounds = src.crs, src.transform, src.bounds
    assert ds.attrs["complete"] is True and ds.attrs["resolution"] == "tokens"
    assert ds.embedding.dims == ("y", "x", "feature")
    assert ds.embedding.shape == (512 // TOKEN, 512 // TOKEN, 192)
    assert ds.rio.crs == crs
    assert ds.rio.transform().almost_equals(transform @ affine.Affine.scale(TOKEN))
    np.testing.assert_allclose(ds.rio.bounds(), tuple(bounds), rtol=0, atol=1e-9)
    assert ds.embedding.rio.crs == crs and ds.embedding.rio.shape == (32, 32)

    raw = cube.open_cube(chip, sensor="sentinel2_l1c")
    _, valid = raw.read(slice(0, 512), slice(0, 512))
    has_data = valid.any(-1).reshape(32, TOKEN, 32, TOKEN).any(axis=(1, 3))
    values = ds.embedding.values
    assert has_data.all() and np.isfinite(values).all() and ds.valid.values.all()
    assert values.std(axis=(0, 1)).mean() > 0  # the cells differ
    assert summary["settings"]["stride"] == 48 and summary["settings"]["out_stride"] == TOKEN
    assert ds.attrs["normalisation"] == summary["settings"]["normalisation"]
    assert "statistics: scene sample (64 windows of 96 px, seed 0)" in ds.attrs["normalisation"]
    assert summary["px_per_s"] > 0 and "km2_per_s" not in summary  # EPSG:4326: no km^2


def test_window_resolution_gives_one_pooled_vector_per_window(encoder, chip, tmp_path):
    output = tmp_path / "windows.zarr"
    summary = embed_chip(encoder, chip, output, resolution="window")

    ds = xr.open_zarr(output)
    cells = -(-512 // 96)
    assert ds.embedding.shape == (cells, cells, 192)
    assert summary["windows_computed"] == cells * cells  # no window computed twice
    raw = cube.open_cube(chip, sensor="sentinel2_l1c")
    assert ds.rio.transform().almost_equals(raw.transform @ affine.Affine.scale(96))
    # Cell (i, j) is the pooled vector of the window at (96 i, 96 j), whatever its neighbours.
    image, valid = raw.read(slice(96, 192), slice(192, 288))
    norm = embed.normalization(encoder, raw, None, seed=0).transform(raw.spec)
    x = norm.map({"image": image, "image_valid": valid})["image"][None]
    pooled = encoder.pooled_fn(raw.spec)(x)[0]
    np.testing.assert_allclose(ds.embedding.values[1, 2], pooled, rtol=1e-4, atol=1e-5)


def test_a_killed_run_resumes_to_the_uninterrupted_result(encoder, chip, tmp_path):
    whole = tmp_path / "whole.zarr"
    embed_chip(encoder, chip, whole)

    resumed = tmp_path / "resumed.zarr"
    reports = []

    def killed_after_two_tiles(report):
        reports.append(report)
        if len(reports) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_chip(encoder, chip, resumed, progress=killed_after_two_tiles)
    with pytest.raises(ValueError, match="Consolidated metadata"):
        xr.open_zarr(resumed, consolidated=True)  # never mistaken for a finished store
    assert xr.open_zarr(resumed, consolidated=False).attrs["complete"] is False
    assert not embed.summary_path(resumed).exists()

    summary = embed_chip(encoder, chip, resumed)
    assert summary["tiles"] == 2 and summary["tiles_total"] == 4
    before, after = store_arrays(whole), store_arrays(resumed)
    assert before.keys() == after.keys()
    for name in before:
        assert np.array_equal(before[name], after[name], equal_nan=True), name

    with pytest.raises(ValueError, match="fingerprint=.*stride=48.* on disk, .*stride=32"):
        embed_chip(encoder, chip, resumed, stride_fraction=1 / 3)


def test_nodata_stays_nodata(encoder, shared_data, tmp_path):
    """The Landsat-7 scene's nodata (0) border: cells without a valid pixel are NaN and invalid,
    every other cell is finite and valid; the grid overhangs the scene by under one cell."""
    path = shared_data / LANDSAT7
    output = tmp_path / "landsat.zarr"
    summary = embed.embed_scene(
        encoder, path, output, sensor="landsat7_etm", tile=256, show_progress=False
    )

    ds = xr.open_zarr(output)
    scene = cube.open_cube(path, sensor="landsat7_etm")
    h, w = scene.height, scene.width
    rows, cols = -(-h // TOKEN), -(-w // TOKEN)
    _, valid = scene.read(slice(0, rows * TOKEN), slice(0, cols * TOKEN))
    has_data = valid.any(-1).reshape(rows, TOKEN, cols, TOKEN).any(axis=(1, 3))
    assert 0.05 < 1 - has_data.mean() < 0.95  # the scene has both
    np.testing.assert_array_equal(ds.valid.values, has_data)
    values = ds.embedding.values
    assert np.isnan(values[~has_data]).all() and np.isfinite(values[has_data]).all()

    west, south, east, north = ds.rio.bounds()
    a, e = scene.transform.a, scene.transform.e
    assert (west, north) == (scene.transform.c, scene.transform.f)
    np.testing.assert_allclose((east, south), (west + cols * TOKEN * a, north + rows * TOKEN * e))
    assert summary["km2_per_s"] > 0  # a projected CRS (metres)


def test_checkpoint_statistics_normalise_when_they_cover_the_scene(
    small_smarties_run, shared_data, tmp_path
):
    """The pretrained run has Sentinel-2 L2A statistics: an L2A stack uses them; asking for the
    scene's instead is another store; an L1C scene has none."""
    stack = tmp_path / "l2a.tif"
    bands = ("B2", "B3", "B4", "B8")
    with rasterio.open(shared_data / SSL4EO_L2A / "B2.tif") as first:
        profile = {**first.profile, "count": len(bands), "driver": "GTiff"}
    with rasterio.open(stack, "w", **profile) as dst:
        for i, band in enumerate(bands, 1):
            with rasterio.open(shared_data / SSL4EO_L2A / f"{band}.tif") as src:
                dst.write(src.read(1), i)
            dst.set_band_description(i, band)
    pretrained = encoders.load_encoder(str(small_smarties_run))

    output = tmp_path / "l2a.zarr"
    summary = embed.embed_scene(
        pretrained, stack, output, sensor="sentinel2_l2a", tile=96, show_progress=False
    )
    ds = xr.open_zarr(output)
    assert ds.attrs["normalisation"] == "percentile_clip, statistics: encoder checkpoint (step 10)"
    assert ds.attrs["step"] == 10 and summary["settings"]["window"] == 48
    assert np.isfinite(ds.embedding.values).all()

    with pytest.raises(ValueError, match="stats=encoder checkpoint .* on disk, .*stats=scene"):
        embed.embed_scene(pretrained, stack, output, sensor="sentinel2_l2a", tile=96, stats="scene")
    with pytest.raises(ValueError, match="has no statistics of sentinel2_l1c bands .*'B10'"):
        embed_chip(pretrained, shared_data / S2_CHIP, tmp_path / "l1c.zarr", stats="encoder")


def test_encoder_shapes_before_first_use_keep_the_weights_concrete():
    """`Encoder.shapes` builds the model outside its shape trace, so the model it caches runs."""
    fresh = encoders.load_encoder(RANDOM_SMARTIES)
    spec = fresh.trained_specs["s2"]
    assert fresh.shapes(spec)["levels"][-1] == (TOKEN, 192)
    pooled = fresh.pooled_fn(spec)(np.zeros((1, 96, 96, len(spec.bands)), np.float32))
    assert pooled.shape == (1, 192) and np.isfinite(np.asarray(pooled)).all()


def test_cli_writes_the_store_and_its_summary(chip, tmp_path, capsys):
    script = load_script(ROOT / "scripts/infer_scene.py")
    output = tmp_path / "cli.zarr"
    args = [f"--encoder={RANDOM_SMARTIES}", f"--input={chip}", f"--output={output}"]
    assert script.main([*args, "--sensor=sentinel2_l1c", "--tile=256", "--batch_size=8"]) == 0

    summary = json.loads((tmp_path / "cli.summary.json").read_text())
    assert summary["windows_per_s"] > 0 and summary["peak_rss_mib"] > 0
    assert summary["tiles"] == 4 and summary["settings"]["devices"] == jax.local_device_count()
    assert xr.open_zarr(output).attrs["complete"] is True
    assert "windows/s" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="cannot be given with --head"):
        script.main([*args, "--sensor=sentinel2_l1c", "--head=heads/flood"])
