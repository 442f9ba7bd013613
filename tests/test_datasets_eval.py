"""Evaluation sources on the real samples: Sen1Floods11, Landsat change pairs, EuroSAT RGB."""

import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from raster_checks import check_images, read_hwc

from eofm import sensors
from eofm.data import datasets, raster
from eofm.data.spec import SensorSpec

GRID = {"crs": "EPSG:32630", "transform": Affine(10, 0, 500000, 0, -10, 4500000)}


def _write(path, array, dtype, nodata=None):
    """Writes [H, W, C] `array` as a GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = array.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=c, dtype=dtype, nodata=nodata, **GRID
    ) as f:
        f.write(np.moveaxis(array, -1, 0).astype(dtype))


# ---------------------------------------------------------------------------------------------
# Sen1Floods11


def test_sen1floods11_sample(shared_data):
    source = datasets.make_source("sen1floods11", root=shared_data / "sen1floods11_sample")
    assert len(source) == 1 and source.ignore_index == -1
    assert source.specs["s1"] == SensorSpec("sentinel1_grd", ("VV", "VH"))
    assert source.specs["s2"].bands == sensors.get_sensor("sentinel2_l1c").band_names
    assert source.label_names == {"mask": ["no_water", "water"]}
    assert "Bonafilia" in datasets.CITATIONS["sen1floods11"]
    sample = source[0]
    assert sample["id"] == "Spain_7370579"
    assert set(sample) == {"id", "s1", "s1_valid", "s2", "s2_valid", "mask"}
    check_images(sample, source.specs, (512, 512))
    mask = sample["mask"]
    assert mask.dtype == np.int32 and mask.shape == (512, 512)
    values, counts = np.unique(mask, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {-1: 99, 0: 192010, 1: 70035}
    # 1 = water: water is dark in NIR (B08) and in SAR backscatter (VV).
    b08 = sample["s2"][..., source.specs["s2"].bands.index("B08")]
    vv = sample["s1"][..., 0]
    assert b08[mask == 1].mean() < 0.5 * b08[mask == 0].mean()
    assert vv[mask == 1].mean() < vv[mask == 0].mean() - 5  # dB
    assert vv.mean() > sample["s1"][..., 1].mean()  # VV above VH


def test_sen1floods11_s2_band_order_is_established_from_pixels(shared_data):
    """Pins the S2Hand channel order: ESA order, B8A (channel 8) right after B08, B10 at 10."""
    root = shared_data / "sen1floods11_sample"
    raw = read_hwc(root / "S2" / "Spain_7370579_S2Hand.tif").reshape(-1, 13).T
    corr, median = np.corrcoef(raw), np.median(raw, axis=1)
    # Cirrus (B10, 1375 nm): near-zero DN, far below every other band.
    assert np.argmin(median) == 10 and median[10] < 50
    # B8A (865 nm) tracks B07 and B08; B12 (channel 12) tracks B11, not NIR.
    assert corr[8, 6] > 0.97 and corr[8, 7] > 0.97
    assert corr[12, 11] > 0.95 and corr[12, 7] < 0.8
    assert datasets.SEN1FLOODS11_S2_FILE_BANDS[8] == "B8A"
    assert datasets.SEN1FLOODS11_S2_FILE_BANDS[10] == "B10"
    # A band subset comes out in the requested order.
    source = datasets.sen1floods11(root, bands=["nir08", "red"], s2_key="opt")
    assert source.specs["opt"].bands == ("B8A", "B04")
    sample = source[0]
    file = raw.T.reshape(512, 512, 13)
    np.testing.assert_array_equal(sample["opt"], file[..., [8, 3]])


@pytest.fixture
def tiny_chip(shared_data, tmp_path):
    """A 16x16 crop of the real chip in tmp_path, with one NaN S1 pixel and one nodata S2 pixel."""
    src = shared_data / "sen1floods11_sample"
    s1 = read_hwc(src / "S1" / "Spain_7370579_S1Hand.tif")[:16, :16]
    s2 = read_hwc(src / "S2" / "Spain_7370579_S2Hand.tif")[:16, :16]
    label = read_hwc(src / "Labels" / "Spain_7370579_LabelHand.tif")[:16, :16]
    s1[2, 3, :] = np.nan
    s2[4, 5, :] = 0
    label[2, 3] = label[4, 5] = 1
    _write(tmp_path / "S1" / "c1_S1Hand.tif", s1, "float32", nodata=float("nan"))
    _write(tmp_path / "S2" / "c1_S2Hand.tif", s2, "int16", nodata=0)
    _write(tmp_path / "Labels" / "c1_LabelHand.tif", label, "int16")
    _write(tmp_path / "S1" / "orphan_S1Hand.tif", s1, "float32")  # No S2 or label: not an example.
    return tmp_path, s2


def test_sen1floods11_nodata_is_invalid_but_labels_are_kept(tiny_chip):
    root, _ = tiny_chip
    source = datasets.sen1floods11(root)
    assert source.ids == ["c1"]
    sample = source[0]
    check_images(sample, source.specs, (16, 16))
    assert not sample["s1_valid"][2, 3].any() and sample["s1_valid"].sum() == 2 * 256 - 2
    assert not sample["s2_valid"][4, 5].any() and sample["s2_valid"].sum() == 13 * 256 - 13
    # The reference is kept as given; users combine it with the validity masks.
    assert sample["mask"][2, 3] == 1 and sample["mask"][4, 5] == 1
    # The source pickles into grain workers and reads the same afterwards.
    again = pickle.loads(pickle.dumps(source))[0]
    np.testing.assert_array_equal(again["mask"], sample["mask"])


def test_sen1floods11_bad_files_name_the_file(tiny_chip):
    root, s2 = tiny_chip
    bad = root / "S2" / "c1_S2Hand.tif"
    _write(bad, s2[..., :12], "int16")
    with pytest.raises(raster.RasterReadError, match=r"c1_S2Hand\.tif: has 12 bands, expected 13"):
        datasets.sen1floods11(root)[0]
    _write(bad, s2, "int16")
    _write(root / "Labels" / "c1_LabelHand.tif", np.full((16, 16, 1), 7), "int16")
    with pytest.raises(ValueError, match=r"c1_LabelHand\.tif \(chip c1\): label values \[7\]"):
        datasets.sen1floods11(root)[0]
    with pytest.raises(FileNotFoundError, match="no chip has all"):
        datasets.sen1floods11(root / "S1")


# ---------------------------------------------------------------------------------------------
# Landsat change pairs (Taizhou, Nanjing)


def test_landsat_change_pairs(shared_data):
    source = datasets.make_source("landsat_change", root=shared_data / "landsat_cd_taizhou_nanjing")
    assert len(source) == 2 and source.ids == ["Taizhou", "Nanjing"]
    assert source.label_names == {"mask": ["unchanged", "changed"]} and source.ignore_index == -1
    bands = ("B1", "B2", "B3", "B4", "B5", "B7")
    etm = SensorSpec("landsat7_etm", bands)
    tm = SensorSpec("landsat5_tm", bands)
    assert source.specs == source.spec_of(0) == {"t1": etm, "t2": etm}
    assert source.spec_of(1) == {"t1": tm, "t2": tm}
    assert "Slow feature analysis" in datasets.CITATIONS["landsat_change"]
    # README: "4,227/17,163 px Taizhou, 2,363/12,393 Nanjing" is changed/unchanged.
    expected = {"Taizhou": (400, 4227, 17163), "Nanjing": (800, 2363, 12393)}
    for i in range(2):
        sample = source[i]
        size, n_changed, n_unchanged = expected[sample["id"]]
        assert set(sample) == {"id", "t1", "t1_valid", "t2", "t2_valid", "mask"}
        check_images(sample, source.spec_of(i), (size, size))
        mask = sample["mask"]
        assert mask.dtype == np.int32
        assert (mask == 1).sum() == n_changed and (mask == 0).sum() == n_unchanged
        assert (mask == -1).sum() == size * size - n_changed - n_unchanged
        folder = shared_data / "landsat_cd_taizhou_nanjing" / sample["id"]
        np.testing.assert_array_equal(sample["t1"], read_hwc(folder / "t1_2000.tif"))
        # 1 = changed: the standardized change vector is far longer there than on unchanged pixels.
        z = [(x - x.mean((0, 1))) / x.std((0, 1)) for x in (sample["t1"], sample["t2"])]
        magnitude = np.linalg.norm(z[1] - z[0], axis=-1)
        assert np.median(magnitude[mask == 1]) > 3 * np.median(magnitude[mask == 0])


def test_landsat_change_keys_and_sites(shared_data):
    root = shared_data / "landsat_cd_taizhou_nanjing"
    source = datasets.landsat_change(root, sites=("Nanjing",), key1="before", key2="after")
    assert source.specs["before"].sensor == "landsat5_tm"
    assert set(source[0]) == {"id", "before", "before_valid", "after", "after_valid", "mask"}
    with pytest.raises(ValueError, match="unknown Landsat change sites"):
        datasets.landsat_change(root, sites=("Wuhan",))


def test_landsat_change_overlapping_reference_raises(shared_data, tmp_path):
    site = tmp_path / "Taizhou"
    shutil.copytree(shared_data / "landsat_cd_taizhou_nanjing" / "Taizhou", site)
    changed = np.asarray(Image.open(site / "change.png"))
    unchanged = np.asarray(Image.open(site / "unchanged.png")).copy()
    rows, cols = np.nonzero(changed == 255)
    unchanged[rows[:3], cols[:3]] = 255
    Image.fromarray(unchanged).save(site / "unchanged.png")
    source = datasets.landsat_change(tmp_path, sites=("Taizhou",))
    with pytest.raises(ValueError, match="Taizhou: 3 pixels are labelled both changed"):
        source[0]


# ---------------------------------------------------------------------------------------------
# EuroSAT RGB


def test_eurosat_rgb(shared_data):
    root = shared_data / "eurosat_rgb"
    source = datasets.make_source("eurosat_rgb", root=root)
    assert len(source) == 1000
    assert source.specs == {"rgb": SensorSpec("rgb", ("R", "G", "B"))}
    assert source.specs["rgb"].bands == ("red", "green", "blue")
    assert source.label_names == {"label": list(datasets.EUROSAT_CLASSES)}
    assert np.bincount(source.labels).tolist() == [100] * 10
    # The class index order of labels.csv is EuroSAT-MS's.
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert datasets.EUROSAT_CLASSES[int(row["class_index"])] == row["class_name"]
    for i in (0, 499, 999):
        sample = source[i]
        check_images(sample, source.specs, (64, 64))
        assert sample["rgb_valid"].all()
        assert 0 <= sample["rgb"].min() and sample["rgb"].max() <= 255
        assert datasets.EUROSAT_CLASSES[int(sample["label"])] in sample["id"]
    with pytest.raises(ValueError, match="has no split column"):
        datasets.eurosat_rgb(root, split="train")


def test_eurosat_rgb_matches_eurosat_ms(shared_data):
    """The EuroSAT-MS folder lists each patch's JPEG: same labels, and JPEG RGB tracks B04/B03/B02."""
    root = shared_data / "eurosat_ms"
    rgb = datasets.eurosat_rgb(root, split="train")
    ms = datasets.eurosat_ms(root, split="train")
    assert len(rgb) == len(ms) == 216
    assert rgb.labels == ms.labels
    assert [Path(f).stem for f in rgb.files] == [Path(f).stem for f in ms.files]
    # Per band, the median over patches of corr(JPEG channel, MS band); JPEG red is B04, not B02.
    bands = ms.specs["s2"].bands
    pairs = [(0, "B04"), (1, "B03"), (2, "B02"), (0, "B02")]
    r = np.median(
        [
            [
                np.corrcoef(a[..., c].ravel(), b[..., bands.index(band)].ravel())[0, 1]
                for c, band in pairs
            ]
            for a, b in ((rgb[i]["rgb"], ms[i]["s2"]) for i in range(len(ms)))
        ],
        axis=0,
    )
    assert (r[:3] > 0.97).all() and r[0] > r[3], r
