"""Tests for the sensor registry and the Sentinel-2 offset helpers."""

import dataclasses
import math

import numpy as np
import pytest

from eofm import sensors

EXPECTED_BANDS = {
    "sentinel2_l1c": (
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B10",
        "B11",
        "B12",
    ),
    "sentinel2_l2a": (
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B11",
        "B12",
    ),
    "sentinel1_grd": ("VV", "VH"),
    "landsat5_tm": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
    "landsat7_etm": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"),
    "landsat5_tm_toa": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
    "landsat7_etm_toa": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"),
    "landsat8_oli_tirs": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
    "landsat9_oli_tirs": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
    "modis_toa": (
        "b01",
        "b02",
        "b03",
        "b06",
        "b07",
        "b21",
        "b26",
        "b27",
        "b28",
        "b29",
        "b30",
        "b31",
        "b32",
        "b33",
    ),
    "modis_land": ("b01", "b02", "b03", "b04", "b05", "b06", "b07"),
    "naip": ("red", "green", "blue", "nir"),
    "rgb": ("red", "green", "blue"),
}


def _band(name="x", **kwargs):
    fields = dict(
        modality="optical", gsd_m=10.0, unit="reflectance", center_nm=500.0, bandwidth_nm=50.0
    )
    fields.update(kwargs)
    return sensors.Band(name, **fields)


@pytest.fixture
def scratch_names():
    """Names to register during a test; removed from the registry afterwards."""
    names = []
    yield names
    for name in names:
        sensors._REGISTRY.pop(name, None)


# ------------------------------------------------------------------------------------------------
# Registry contents.
# ------------------------------------------------------------------------------------------------


def test_registry_has_expected_sensors():
    assert set(sensors.REGISTRY) == set(EXPECTED_BANDS)


@pytest.mark.parametrize("name,bands", sorted(EXPECTED_BANDS.items()))
def test_band_counts_and_order(name, bands):
    sensor = sensors.get_sensor(name)
    assert sensor.name == name
    assert sensor.band_names == bands
    assert len(sensor) == len(bands)
    for i, band in enumerate(bands):
        assert sensor.band_index(band) == i


def test_s2_l2a_is_l1c_without_b10():
    l1c, l2a = sensors.get_sensor("sentinel2_l1c"), sensors.get_sensor("sentinel2_l2a")
    assert "B10" in l1c.band_names and "B10" not in l2a.band_names
    with pytest.raises(sensors.UnknownBandError):
        l2a.band("cirrus")
    for name in l2a.band_names:
        assert l2a.band(name) == l1c.band(name)


def test_s2_band_specs():
    s2 = sensors.get_sensor("sentinel2_l1c")
    specs = {
        "B02": (492.4, 66, 10),
        "B08": (832.8, 106, 10),
        "B8A": (864.7, 21, 20),
        "B10": (1373.5, 31, 60),
        "B11": (1613.7, 91, 20),
        "B12": (2202.4, 175, 20),
        "B01": (442.7, 21, 60),
        "B05": (704.1, 15, 20),
    }
    for name, (center, width, gsd) in specs.items():
        band = s2.band(name)
        assert (band.center_nm, band.bandwidth_nm, band.gsd_m) == (center, width, gsd)
    for band in s2.bands:
        assert band.unit == "reflectance_1e4" and band.nodata == 0 and band.modality == "optical"


def test_sentinel1():
    s1 = sensors.get_sensor("sentinel1_grd")
    for band in s1.bands:
        assert band.modality == "sar" and band.unit == "dB" and band.gsd_m == 10
        assert band.frequency_ghz == 5.405 and band.polarization == band.name
        assert band.center_nm is None and band.bandwidth_nm is None
        low, high = band.wavelength_range_nm
        assert low == high == pytest.approx(55.46e6, rel=1e-3)  # ~5.5 cm.
    assert s1.band("vh").name == "VH"


def test_thermal_bands():
    cases = {
        "landsat5_tm": {"B6": 120},
        "landsat7_etm": {"B6": 60},
        "landsat8_oli_tirs": {"B10": 100, "B11": 100},
    }
    for sensor_name, thermal in cases.items():
        sensor = sensors.get_sensor(sensor_name)
        for band in sensor.bands:
            if band.name in thermal:
                assert band.modality == "thermal" and band.gsd_m == thermal[band.name]
                assert band.unit == "brightness_temperature_K"
            else:
                assert band.modality == "optical"
    assert sensors.get_sensor("landsat5_tm").band("B1").unit == "dn"
    assert sensors.get_sensor("landsat7_etm").band("pan").gsd_m == 15
    assert sensors.get_sensor("landsat8_oli_tirs").band("B4").unit == "reflectance"
    assert sensors.get_sensor("landsat8_oli_tirs").band("pan").gsd_m == 15


def test_landsat9_matches_landsat8():
    l8, l9 = sensors.get_sensor("landsat8_oli_tirs"), sensors.get_sensor("landsat9_oli_tirs")
    assert l8.bands == l9.bands and l8 is not l9


def test_modis_toa():
    modis = sensors.get_sensor("modis_toa")
    expected_um = [
        0.645,
        0.8585,
        0.469,
        1.64,
        2.13,
        3.959,
        1.375,
        6.715,
        7.325,
        8.55,
        9.73,
        11.03,
        12.02,
        13.335,
    ]
    assert [b.center_nm / 1000 for b in modis.bands] == pytest.approx(expected_um, abs=0.02)
    emissive = {"b21", "b27", "b28", "b29", "b30", "b31", "b32", "b33"}
    for band in modis.bands:
        assert band.gsd_m == 1000
        if band.name in emissive:
            assert (band.modality, band.unit) == ("thermal", "brightness_temperature_K")
        else:
            assert (band.modality, band.unit) == ("optical", "reflectance")
    assert modis.band("b31").wavelength_range_nm == pytest.approx((10780, 11280))


def test_modis_land():
    modis = sensors.get_sensor("modis_land")
    assert modis.band("b05").wavelength_range_nm == pytest.approx((1230, 1250))
    for band in modis.bands:
        assert band.gsd_m == 500 and band.unit == "reflectance_1e4" and band.nodata == -28672


def test_naip_and_rgb():
    naip = sensors.get_sensor("naip")
    assert naip.resolve(["R", "G", "B", "N"]) == ("red", "green", "blue", "nir")
    assert all(b.unit == "dn" and b.gsd_m == 0.6 and b.nodata is None for b in naip.bands)
    rgb = sensors.get_sensor("rgb")
    assert all(math.isnan(b.gsd_m) and b.unit == "dn" for b in rgb.bands)


@pytest.mark.parametrize("name", sorted(EXPECTED_BANDS))
def test_band_metadata_is_consistent(name):
    sensor = sensors.get_sensor(name)
    for band in sensor.bands:
        assert band.unit in sensors.UNITS
        assert band.modality in sensors.MODALITIES
        assert band.description
        if band.modality == "sar":
            continue
        low, high = band.wavelength_range_nm
        assert low < band.center_nm < high
        assert high - low == pytest.approx(band.bandwidth_nm)
        assert (low + high) / 2 == pytest.approx(band.center_nm)
        if band.modality == "optical":
            assert 400 < band.center_nm < 2500
        else:
            assert 3000 < band.center_nm < 15000


def test_wavelength_range_of_s2_band():
    assert sensors.get_sensor("sentinel2_l2a").band("B02").wavelength_range_nm == (
        pytest.approx(459.4),
        pytest.approx(525.4),
    )


# ------------------------------------------------------------------------------------------------
# Lookups.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias,canonical",
    [
        ("b8a", "B8A"),
        ("nir08", "B8A"),
        ("B2", "B02"),
        ("b02", "B02"),
        ("blue", "B02"),
        ("NIR", "B08"),
        ("water_vapor", "B09"),
        ("cirrus", "B10"),
        ("swir22", "B12"),
        ("rededge1", "B05"),
        ("coastal", "B01"),
    ],
)
def test_s2_aliases(alias, canonical):
    s2 = sensors.get_sensor("sentinel2_l1c")
    assert s2.band(alias).name == canonical
    assert s2.band_index(alias) == s2.band_names.index(canonical)


def test_subset_preserves_requested_order():
    s2 = sensors.get_sensor("sentinel2_l2a")
    sub = s2.subset(["red", "B2", "b03", "nir08"])
    assert sub.name == "sentinel2_l2a"
    assert sub.band_names == ("B04", "B02", "B03", "B8A")
    assert sub.band("B8A") is s2.band("B8A")
    assert s2.resolve(("nir", "B1")) == ("B08", "B01")
    assert len(s2) == 12  # The original is untouched.


def test_subset_rejects_duplicates():
    with pytest.raises(ValueError, match="B02"):
        sensors.get_sensor("sentinel2_l2a").subset(["B02", "blue"])


def test_resolve_rejects_plain_string():
    with pytest.raises(TypeError):
        sensors.get_sensor("sentinel2_l2a").resolve("B02")


def test_unknown_band_error():
    s2 = sensors.get_sensor("sentinel2_l2a")
    with pytest.raises(sensors.UnknownBandError) as info:
        s2.band("B10")
    message = str(info.value)
    assert "sentinel2_l2a" in message and "'B10'" in message
    assert all(name in message for name in s2.band_names)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(sensors.UnknownBandError, match="B13"):
        s2.subset(["B02", "B13"])


def test_unknown_sensor_error():
    with pytest.raises(sensors.UnknownSensorError) as info:
        sensors.get_sensor("sentinel2_l2")
    message = str(info.value)
    assert "Did you mean 'sentinel2_l2a'?" in message
    assert all(name in message for name in EXPECTED_BANDS)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_get_sensor_is_case_insensitive():
    assert sensors.get_sensor("Sentinel2_L2A") is sensors.get_sensor("sentinel2_l2a")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        sensors.REGISTRY["mine"] = sensors.get_sensor("rgb")
    with pytest.raises(TypeError):
        del sensors.REGISTRY["rgb"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sensors.get_sensor("rgb").name = "other"


# ------------------------------------------------------------------------------------------------
# Registration.
# ------------------------------------------------------------------------------------------------


def test_register_sensor(scratch_names):
    scratch_names.append("test_cam")
    sensor = sensors.Sensor(
        "test_cam",
        (
            _band("pan", aliases=("P",)),
            _band(
                "sar",
                modality="sar",
                unit="dB",
                center_nm=None,
                bandwidth_nm=None,
                frequency_ghz=1.27,
            ),
        ),
    )
    sensors.register_sensor(sensor)
    assert sensors.get_sensor("test_cam") is sensor
    assert sensors.REGISTRY["test_cam"].band("p").name == "pan"
    with pytest.raises(ValueError, match="already registered"):
        sensors.register_sensor(sensor)


@pytest.mark.parametrize(
    "bands,match",
    [
        ((), "no bands"),
        ((_band(unit="watts"),), "unit"),
        ((_band(modality="lidar"),), "modality"),
        ((_band(gsd_m=0.0),), "gsd_m"),
        ((_band(center_nm=None),), "center_nm"),
        (
            (_band(modality="thermal", unit="brightness_temperature_K", bandwidth_nm=None),),
            "bandwidth_nm",
        ),
        ((_band(modality="sar", unit="dB", center_nm=None, bandwidth_nm=None),), "frequency_ghz"),
        ((_band("a"), _band("A")), "'a'"),
        ((_band("a", aliases=("blue",)), _band("b", aliases=("Blue",))), "blue"),
        ((_band("a"), _band("b", aliases=("a",))), "'a'"),
    ],
)
def test_register_sensor_validation(scratch_names, bands, match):
    scratch_names.append("bad_cam")
    with pytest.raises(ValueError, match=match):
        sensors.register_sensor(sensors.Sensor("bad_cam", bands))
    assert "bad_cam" not in sensors.REGISTRY


def test_register_accepts_unknown_gsd_and_own_name_alias(scratch_names):
    scratch_names.append("ok_cam")
    sensors.register_sensor(
        sensors.Sensor("ok_cam", (_band("VV", gsd_m=math.nan, aliases=("vv",)),))
    )
    assert sensors.get_sensor("ok_cam").band("vV").name == "VV"


# ------------------------------------------------------------------------------------------------
# Sentinel-2 processing baseline.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("04.00", 4.0),
        ("4.00", 4.0),
        ("05.10", 5.1),
        ("02.09", 2.09),
        ("N0400", 4.0),
        ("N0510", 5.1),
        (" N0209 ", 2.09),
        ("S2B_MSIL1C_20200604T054639_N0209_R048_T43RCP_20200604T083537", 2.09),
        ("S2A_MSIL2A_20230115T101401_N0509_R022_T32TQM_20230115T135012.SAFE", 5.09),
        ("N9999", None),
        ("99.99", None),
        ("S2A_MSIL1C_20170105T013442_N9999_R031_T53NMJ_20170105T013443", None),
    ],
)
def test_parse_s2_processing_baseline(value, expected):
    assert sensors.parse_s2_processing_baseline(value) == expected


@pytest.mark.parametrize("value", ["", "baseline", "N04", "4.0.0"])
def test_parse_s2_processing_baseline_rejects_garbage(value):
    with pytest.raises(ValueError):
        sensors.parse_s2_processing_baseline(value)


@pytest.mark.parametrize(
    "baseline,offset",
    [
        (None, 0),
        (2.09, 0),
        (3.99, 0),
        (4.0, 1000),
        (5.1, 1000),
        ("03.01", 0),
        ("N0400", 1000),
        ("N9999", 0),
    ],
)
def test_s2_offset_dn(baseline, offset):
    assert sensors.s2_offset_dn(baseline) == offset
    assert sensors.S2_BASELINE_OFFSET_DN == 1000


def test_harmonize_s2_dn():
    dn = np.array([[0, 500, 1000, 11000]], np.uint16)
    new = sensors.harmonize_s2_dn(dn, "N0400")
    old = sensors.harmonize_s2_dn(dn, "N0209")
    assert new.dtype == old.dtype == np.float32
    np.testing.assert_array_equal(new, [[-1000, -500, 0, 10000]])  # No clipping.
    np.testing.assert_array_equal(old, dn.astype(np.float32))
    np.testing.assert_array_equal(sensors.harmonize_s2_dn(dn, None), old)
    assert dn[0, 1] == 500  # Input untouched.
