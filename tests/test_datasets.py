"""Every source on the real samples: shapes, finiteness, band order, labels, resampling."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from raster_checks import check_images, read_hwc

from eofm import sensors
from eofm.data import datasets, raster
from eofm.data.sources import GeoTiffSource
from eofm.data.spec import SensorSpec

GRID = {"crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000)}


def test_eurosat_ms_band_order_is_established_from_pixels(shared_data):
    """Pins the stored channel order of EuroSAT-MS: B10 is channel 9 and B8A is the LAST channel."""
    root = shared_data / "eurosat_ms"
    source = datasets.eurosat_ms(root)
    raw = np.stack([read_hwc(f) for f in source.files[::4]])  # [N, 64, 64, 13] in file order
    flat = raw.reshape(-1, 13).T
    corr = np.corrcoef(flat)
    median = np.median(flat, axis=1)
    # Cirrus (B10, 1375 nm) is absorbed by water vapour: near-zero DN, far below any other band.
    assert np.argmin(median) == 9 and median[9] < 50
    # B8A (865 nm) is narrow NIR: it tracks B07 (783 nm) and B08 (833 nm) on every land cover.
    assert corr[12, 6] > 0.97 and corr[12, 7] > 0.97
    # B09 (945 nm, water vapour) tracks NIR far less than B8A does.
    assert corr[8, 7] < 0.9
    assert datasets.EUROSAT_MS_FILE_BANDS[9] == "B10"
    assert datasets.EUROSAT_MS_FILE_BANDS[12] == "B8A"
    # The source yields ESA order: B8A after B08.
    sample = source[0]
    s2 = source.specs["s2"]
    assert s2.bands == sensors.get_sensor("sentinel2_l1c").band_names
    file0 = read_hwc(source.files[0])
    np.testing.assert_array_equal(sample["s2"][..., s2.bands.index("B8A")], file0[..., 12])
    np.testing.assert_array_equal(sample["s2"][..., s2.bands.index("B09")], file0[..., 8])
    np.testing.assert_array_equal(sample["s2"][..., s2.bands.index("B12")], file0[..., 11])


def test_eurosat_ms_samples_and_labels(shared_data):
    source = datasets.eurosat_ms(shared_data / "eurosat_ms")
    assert len(source) == 216
    assert source.label_names["label"] == list(datasets.EUROSAT_CLASSES)
    for i in (0, 100, 215):
        sample = source[i]
        check_images(sample, source.specs, (64, 64))
        assert datasets.EUROSAT_CLASSES[int(sample["label"])] in sample["id"]


def test_eurosat_band_subset_in_requested_order(shared_data):
    full = datasets.eurosat_ms(shared_data / "eurosat_ms")
    rgb = datasets.eurosat_ms(shared_data / "eurosat_ms", bands=["red", "green", "blue"])
    assert rgb.specs["s2"].bands == ("B04", "B03", "B02")
    np.testing.assert_array_equal(rgb[3]["s2"], full[3]["s2"][..., [3, 2, 1]])


def test_bigearthnet_pairs(shared_data):
    root = shared_data / "bigearthnet_v2_s1s2"
    source = datasets.BigEarthNetSource(root)
    meta = json.loads((root / "metadata.json").read_text())
    assert len(source) == 24
    for i in (0, 11, 23):
        sample = source[i]
        check_images(sample, source.specs, (120, 120))
        patch = meta["patches"][i]
        names = [datasets.BIGEARTHNET_19_CLASSES[j] for j in np.flatnonzero(sample["label"])]
        assert sorted(names) == sorted(patch["labels"])
        # 10 m bands are untouched and in ESA order.
        raw10 = np.load(root / "patches" / patch["patch_id"] / "s2_10m.npy")
        bands = source.specs["s2"].bands
        for c, b in enumerate(("B02", "B03", "B04", "B08")):
            np.testing.assert_array_equal(sample["s2"][..., bands.index(b)], raw10[c])
        # 20 m bands are upsampled: the block means are preserved to within a few percent.
        raw20 = np.load(root / "patches" / patch["patch_id"] / "s2_20m.npy").astype(np.float64)
        up = sample["s2"][..., bands.index("B11")].reshape(60, 2, 60, 2).mean(axis=(1, 3))
        assert abs(up.mean() - raw20[4].mean()) / raw20[4].mean() < 0.02
        # S1 is in dB: VV above VH on average, both negative.
        vv, vh = sample["s1"][..., 0], sample["s1"][..., 1]
        assert vv.mean() > vh.mean() and vv.max() < 40 and vh.mean() < 0
    assert len(datasets.BigEarthNetSource(root, split="train")) == 8


def test_vendored_demo_equals_shared_sample(shared_data):
    demo = datasets.BigEarthNetSource()
    shared = datasets.BigEarthNetSource(shared_data / "bigearthnet_v2_s1s2")
    for i in (0, 23):
        a, b = demo[i], shared[i]
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_ssl4eo_band_files(shared_data):
    root = shared_data / "ssl4eo_s12"
    source = datasets.ssl4eo_s12(root, modalities=("s1", "s2c", "s2a"))
    assert len(source) == 2
    sample = source[1]
    check_images(sample, source.specs, (264, 264))
    assert source.specs["s2c"].bands[10] == "B10" and len(source.specs["s2a"].bands) == 12
    files = source.items[1].files["s2c"]
    assert files["B8A"].endswith("B8A.tif") and files["B01"].endswith("B1.tif")
    np.testing.assert_array_equal(sample["s2c"][..., 7], read_hwc(files["B08"])[..., 0])
    # The 20 m grid of this product is offset by half a 10 m pixel: the last 10 m column
    # and row lie outside the B8A footprint: they are marked invalid, not filled with made-up data.
    b8a_valid = sample["s2c_valid"][..., 8]
    assert not b8a_valid[:, -1].any() and not b8a_valid[-1].any() and b8a_valid[:-1, :-1].all()
    b08, b8a = sample["s2c"][:-1, :-1, 7].ravel(), sample["s2c"][:-1, :-1, 8].ravel()
    assert np.corrcoef(b08, b8a)[0, 1] > 0.9
    # Baseline 02.09 (2020): no offset removed.
    assert source.items[1].dn_offset["s2c"] == 0


def test_bigearthnet_original_folders_resample_with_named_method(shared_data):
    root = shared_data / "bigearthnet_v2_s1s2" / "raw_folder_format_v2_unpaired"
    bilinear = datasets.bigearthnet_folders(root)
    nearest = datasets.bigearthnet_folders(root, resampling="nearest")
    a, b = bilinear[0], nearest[0]
    check_images(a, bilinear.specs, (120, 120))
    bands = bilinear.specs["s2"].bands
    files = bilinear.items[0].files["s2"]
    # On-grid 10 m bands are identical whatever the method.
    np.testing.assert_array_equal(a["s2"][..., bands.index("B04")], read_hwc(files["B04"])[..., 0])
    # A 60 m band upsampled with nearest repeats each pixel 6x6; bilinear does not.
    b01 = read_hwc(files["B01"])[..., 0]
    np.testing.assert_array_equal(b["s2"][..., 0], np.kron(b01, np.ones((6, 6))))
    assert not np.array_equal(a["s2"][..., 0], b["s2"][..., 0])
    with pytest.raises(ValueError, match="unknown resampling 'bilinaer'"):
        datasets.bigearthnet_folders(root, resampling="bilinaer")


def test_nodata_and_nan_pixels_give_a_validity_mask(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) / 8 - 20  # sigma0 in dB.
    data[0, 1, 2] = -9999
    data[1, 3, 4] = np.nan
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=2, dtype="float32", nodata=-9999, **GRID
    ) as f:
        f.write(data)
    source = datasets.geotiff_folder(tmp_path, sensor="sentinel1_grd", key="s1")
    sample = source[0]
    valid = sample["s1_valid"]
    assert not valid[1, 2, 0] and not valid[3, 4, 1] and valid.sum() == 2 * 64 - 2
    assert sample["s1"][1, 2, 0] == 0 and sample["s1"][3, 4, 1] == 0
    assert np.isfinite(sample["s1"]).all()


def test_sentinel2_processing_baseline_offset_is_removed(tmp_path):
    data = np.full((13, 4, 4), 1500, np.uint16)
    data[:, 0, 0] = 0  # nodata stays nodata, not -1000
    path = tmp_path / "new.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=4, count=13, dtype="uint16", **GRID
    ) as f:
        f.write(data)
    spec = SensorSpec.full("sentinel2_l1c")
    source = GeoTiffSource([path], spec, key="s2", dn_offset=sensors.s2_offset_dn("N0400"))
    sample = source[0]
    assert sample["s2"][1, 1, 0] == 500 and sample["s2"][0, 0, 0] == 0
    assert not sample["s2_valid"][0, 0].any()


def test_resample_array_matches_gdal_block_replication():
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    y = raster.resample_array(x, (4, 6), resampling="nearest")
    np.testing.assert_array_equal(y[..., 1], np.kron(x[..., 1], np.ones((2, 2))))
