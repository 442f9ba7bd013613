"""Cloud / cloud-shadow segmentation on the UKIS scenes: the source (sensors, units, classes, tile
split), SatVision-TOA's scaling of non-MODIS bands, and a short UPerNet run on SatVision tiny."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from eofm.data import datasets, normalize
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import dense

UKIS = "cloud_shadow_masks_ukis"
SCENES = ("landsat5", "landsat7", "sentinel2")


@pytest.fixture(scope="module")
def source(shared_data):
    return datasets.make_source("cloud_shadow", root=shared_data / UKIS, scenes=SCENES)


def _file_image(root: Path, scene: str) -> np.ndarray:
    with rasterio.open(root / f"{scene}_img.tif") as f:
        return np.moveaxis(f.read(), 0, -1)


def _file_mask(root: Path, scene: str) -> np.ndarray:
    return np.asarray(Image.open(root / f"{scene}_msk.png"))


def test_each_scene_carries_its_sensor_bands_in_registry_units(source, shared_data):
    assert source.ids == [f"{s}:{t}" for s in SCENES for t in ("train", "test")]
    specs = [source.spec_of(i)["image"] for i in range(len(source))]
    assert specs[0] == SensorSpec("landsat5_tm_toa", ("B1", "B2", "B3", "B4", "B5", "B7"))
    assert specs[2] == SensorSpec("landsat7_etm_toa", ("B1", "B2", "B3", "B4", "B5", "B7"))
    assert specs[4] == SensorSpec("sentinel2_l1c", ("B02", "B03", "B04", "B08", "B11", "B12"))
    units = {s.sensor: {b.unit for b in s.sensor_info.bands} for s in specs}
    assert units == {
        "landsat5_tm_toa": {"reflectance"},
        "landsat7_etm_toa": {"reflectance"},
        "sentinel2_l1c": {"reflectance_1e4"},
    }
    for i, scene in enumerate(SCENES):
        item = source[2 * i]
        stored = _file_image(shared_data / UKIS, scene)[:320]  # reflectance as a fraction
        scale = 1e4 if scene == "sentinel2" else 1.0
        assert item["image"].shape == (320, 512, 6) and item["image"].dtype == np.float32
        assert item[valid_key("image")].all()
        np.testing.assert_allclose(item["image"], stored * scale, rtol=1e-6)
    # Sentinel-2 L1C DN: the stored fractions are DN / 10_000.
    s2 = source[4]["image"]
    np.testing.assert_allclose(s2, np.rint(s2), atol=1e-2)


def test_train_and_test_tiles_are_disjoint_rows_with_a_gap(source, shared_data):
    train, test = source.rows("train", 512), source.rows("test", 512)
    assert (train.start, train.stop, test.start, test.stop) == (0, 320, 384, 512)
    assert test.start - train.stop == 64  # SatVision tiny's native window
    full = _file_image(shared_data / UKIS, "sentinel2") * 1e4
    np.testing.assert_allclose(source[5]["image"], full[384:], rtol=1e-6)
    assert source[5]["mask"].shape == (128, 512)
    narrow = datasets.CloudShadowSource(shared_data / UKIS, test_rows=192, gap=128)
    assert narrow[0]["mask"].shape == (192, 512) and narrow[1]["mask"].shape == (192, 512)
    with pytest.raises(ValueError, match="no training rows for test_rows 448 and gap 64"):
        datasets.CloudShadowSource(shared_data / UKIS, test_rows=448)[0]


def test_masks_are_reclassed_to_clear_cloud_shadow(source, shared_data):
    assert source.label_names == {"mask": ["clear", "cloud", "cloud_shadow"]}
    raw = _file_mask(shared_data / UKIS, "landsat7")
    mask = np.concatenate([source[2]["mask"], source[3]["mask"]])
    kept = np.concatenate([raw[:320], raw[384:]])
    assert mask.dtype == np.int32
    np.testing.assert_array_equal(mask == 0, np.isin(kept, (1, 2, 3)))
    np.testing.assert_array_equal(mask == 1, kept == 4)
    np.testing.assert_array_equal(mask == 2, kept == 0)
    assert set(np.unique(mask)) == {0, 1, 2}


def test_source_errors_name_the_culprit(shared_data, tmp_path):
    with pytest.raises(ValueError, match=r"scenes \['landsat8'\]; expected some of"):
        datasets.make_source("cloud_shadow", root=shared_data / UKIS, scenes=("landsat8",))
    (tmp_path / "sentinel2_img.tif").symlink_to(shared_data / UKIS / "sentinel2_img.tif")
    Image.fromarray(np.full((512, 512), 7, np.uint8)).save(tmp_path / "sentinel2_msk.png")
    with pytest.raises(ValueError, match=r"sentinel2_msk.png: reference values \[7\] are not"):
        datasets.CloudShadowSource(tmp_path)[0]


def _scaled(spec: SensorSpec, x) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(1, 1, -1)
    return normalize.Normalize({"x": spec}, "satvision_toa").map({"x": x})["x"].ravel()


def test_satvision_toa_scales_landsat_and_sentinel2_reflectance_to_a_fraction():
    s2 = SensorSpec("sentinel2_l1c", ("B02", "B8A", "B12"))
    np.testing.assert_allclose(_scaled(s2, [1256, 4368, 1519]), [0.1256, 0.4368, 0.1519])
    oli = SensorSpec("landsat8_oli_tirs", ("B4", "B5"))
    np.testing.assert_allclose(_scaled(oli, [0.25, 0.5]), [0.25, 0.5])
    tm = SensorSpec("landsat5_tm_toa", ("B1", "B7"))
    np.testing.assert_allclose(_scaled(tm, [0.1278, 0.0527]), [0.1278, 0.0527])


def test_satvision_toa_scales_thermal_bands_by_the_modis_slot_they_fill():
    # Landsat-8 B10 (10.6-11.19 um) fills MODIS band 31, B11 (11.5-12.51 um) band 32; Landsat-5
    # B6 (10.4-12.5 um) covers both and fills 31, the nearer centre.
    b31, b32 = normalize.SATVISION_TOA_BT_RANGE_K["b31"], normalize.SATVISION_TOA_BT_RANGE_K["b32"]
    tirs = SensorSpec("landsat8_oli_tirs", ("B10", "B11"))
    np.testing.assert_allclose(_scaled(tirs, [b31[0], b32[1]]), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(_scaled(tirs, [263.1218, 150.0]), [0.5, -0.4276758], rtol=1e-5)
    tm = SensorSpec("landsat5_tm", ("B6",))
    np.testing.assert_allclose(_scaled(tm, [263.1218]), [0.5], rtol=1e-5)


def test_satvision_toa_keeps_the_modis_constants():
    spec = SensorSpec.full("modis_toa")
    affine = normalize.Normalize({"m": spec}, "satvision_toa")._affine["m"]
    for band, offset, scale in zip(spec.bands, affine.offset, affine.scale):
        low, high = normalize.SATVISION_TOA_BT_RANGE_K.get(band, (0.0, 1.0))
        np.testing.assert_allclose([offset, scale], [low, 1 / (high - low)], rtol=1e-6)
    land = SensorSpec("modis_land", ("b01", "b07"))
    np.testing.assert_allclose(_scaled(land, [6504, 792]), [0.6504, 0.0792], rtol=1e-6)


@pytest.mark.parametrize(
    "spec, message",
    [
        (SensorSpec.full("sentinel1_grd"), r"'s' \(sentinel1_grd\), band VV: unit dB"),
        (SensorSpec("landsat5_tm", ("B3",)), r"\(landsat5_tm\), band B3: unit dn"),
    ],
)
def test_satvision_toa_refuses_sar_and_dn_naming_band_and_unit(spec, message):
    with pytest.raises(ValueError, match=message + " cannot be scaled; allowed units are"):
        normalize.Normalize({"s": spec}, "satvision_toa")


def test_config_picks_one_scene_per_split(finetune_config):
    config = finetune_config("cloud_shadow", "scene=sentinel2,test_scene=landsat7")
    assert config.data.source_args.scenes == ("sentinel2", "landsat7")
    assert (config.data.train_ids, config.data.test_ids) == (
        ("sentinel2:train",),
        ("landsat7:test",),
    )
    with pytest.raises(ValueError, match=r"scene / test_scene \['landsat8'\]; expected one of"):
        finetune_config("cloud_shadow", "scene=landsat8")


def test_satvision_upernet_end_to_end_on_sentinel2(finetune_config, tmp_path):
    config = finetune_config("cloud_shadow")
    assert config.encoder == "random:configs/pretrain/satvision.py:tiny"
    # The tiny encoder with one block per stage: the same four levels, a quarter of the compiling.
    one_block = tmp_path / "satvision_one_block.py"
    one_block.write_text(
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location("
        f"'satvision_config', {str(Path('configs/pretrain/satvision.py').resolve())!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n"
        "def get_config(arg='tiny'):\n"
        "    config = base.get_config(arg)\n"
        "    config.model.depths = (1, 1, 1, 1)\n"
        "    return config\n"
    )
    config.encoder = f"random:{one_block}"
    config.fit.update(total_steps=2, log_every=1, batch_size=8)
    config.head.channels = 16
    config.window_stride = 1.0  # 2 x 8 windows of the test tile, one inference batch
    config.num_overlays = 1
    result = dense.run(config, tmp_path)
    m = result["metrics"]
    assert 0 <= m["miou_macro"] <= 1 and len(m["per_class_iou"]) == 3
    assert result["data"]["classes"] == ["clear", "cloud", "cloud_shadow"]
    assert result["data"]["sensors"] == {
        "sentinel2:train": {"image": "sentinel2_l1c"},
        "sentinel2:test": {"image": "sentinel2_l1c"},
    }
    assert result["data"]["labelled_test_pixels"] == 128 * 512
    assert result["data"]["normalization"] == "satvision_toa" and result["data"]["window"] == 64
    # Swin levels of strides 4 .. 32 and widths C .. 8C feed the head as they are.
    assert result["head"]["levels"] == [[4, 32], [8, 64], [16, 128], [32, 256]]
    # S2 blue, red, B08, B11, B12 fill MODIS 3, 1, 2, 6, 7; green fills none.
    missing = ["b21", "b26", "b27", "b28", "b29", "b30", "b31", "b32", "b33"]
    assert result["encoder"]["missing_bands"] == {"image": missing}
    report = (tmp_path / "report.md").read_text()
    assert "miou_macro" in report and "Zero-filled bands" in report and "b33" in report
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["metrics"]["per_class_iou"] == m["per_class_iou"]
