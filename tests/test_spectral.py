"""Tests for the SMARTIES spectral ranges and the band -> range assignment."""

import numpy as np
import pytest

from eofm import sensors
from eofm.models import spectral

EXPECTED_KEYS = (
    "aerosol",
    "blue_1",
    "blue_3",
    "green_1",
    "green_2",
    "red_1",
    "red_2",
    "red_edge_1",
    "red_edge_2",
    "near_infrared_1",
    "near_infrared_2",
    "near_infrared_3",
    "short_wave_infrared_1",
    "short_wave_infrared_3",
    "short_wave_infrared_4",
    "microwave_1",
    "microwave_2",
)

S2_EXPECTED = {
    "B01": 0,
    "B02": 1,
    "B03": 4,
    "B04": 6,
    "B05": 7,
    "B06": 8,
    "B07": 10,
    "B08": 9,
    "B8A": 11,
    "B09": 12,
    "B11": 13,
    "B12": 14,
}


def _center(index):
    return spectral.SPECTRAL_RANGES[index].center_nm


def _single(assignment):
    """The one range of a single-range assignment."""
    assert assignment.weights == (1.0,), assignment
    (index,) = assignment.ranges
    return index


def _optical(name, center_nm, bandwidth_nm=20.0):
    return sensors.Band(
        name, "optical", 30.0, "reflectance", center_nm=center_nm, bandwidth_nm=bandwidth_nm
    )


def test_table():
    ranges = spectral.SPECTRAL_RANGES
    assert len(ranges) == spectral.NUM_RANGES == 17
    assert tuple(r.index for r in ranges) == tuple(range(17))
    assert tuple(r.key for r in ranges) == EXPECTED_KEYS
    assert all(r.lo_nm < r.hi_nm for r in ranges)
    assert (ranges[1].lo_nm, ranges[1].hi_nm) == (427, 558)
    assert (ranges[14].lo_nm, ranges[14].hi_nm) == (2002, 2376)
    assert [r.polarization for r in ranges[15:]] == ["VV", "VH"]
    assert all(r.polarization is None for r in ranges[:15])


def test_sentinel2_l1c_drops_b10():
    assignments = spectral.assign_sensor("sentinel2_l1c")
    assert tuple(a.band for a in assignments) == sensors.get_sensor("sentinel2_l1c").band_names
    by_band = {a.band: a for a in assignments}
    assert by_band["B10"].ranges == () and by_band["B10"].weights == ()
    assert by_band["B10"].dropped
    assert {b: _single(a) for b, a in by_band.items() if b != "B10"} == S2_EXPECTED


def test_sentinel2_l2a():
    assignments = spectral.assign_sensor("sentinel2_l2a")
    assert len(assignments) == 12
    assert {a.band: _single(a) for a in assignments} == S2_EXPECTED


def test_sentinel1():
    assert [_single(a) for a in spectral.assign_sensor("sentinel1_grd")] == [15, 16]
    assert [_single(a) for a in spectral.assign_sensor("sentinel1_grd", ["vh", "VV"])] == [16, 15]


def test_other_sar_polarizations():
    def sar(polarization):
        return sensors.Band(
            polarization, "sar", 10.0, "dB", frequency_ghz=1.27, polarization=polarization
        )

    assert _single(spectral.assign_band(sar("HH"))) == 15
    assert _single(spectral.assign_band(sar("HV"))) == 16
    with pytest.raises(ValueError, match="RH"):
        spectral.assign_band(sar("RH"))


def test_rgb():
    assert [_single(a) for a in spectral.assign_sensor("rgb")] == [5, 3, 2]
    blue_first = spectral.assign_sensor("rgb", ["B", "green", "red"])
    assert [a.band for a in blue_first] == ["blue", "green", "red"]
    assert [_single(a) for a in blue_first] == [2, 3, 5]


def test_landsat8_reflective_bands():
    by_band = {a.band: a for a in spectral.assign_sensor("landsat8_oli_tirs")}
    # B1 (440 nm) lies in 0, 1, 2: aerosol's centre (442.5) is nearest.
    assert _single(by_band["B1"]) == 0
    # B2 (480 nm) lies in 1 (centre 492.5), 2 (487.5) and 3 (543): RGB blue is nearest.
    assert _single(by_band["B2"]) == 2
    # B3 (560 nm) lies in 3 (543) and 4 (559.5): S2 green.
    assert _single(by_band["B3"]) == 4
    # B4 (655 nm) lies in 5 (650) and 6 (665): RGB red.
    assert _single(by_band["B4"]) == 5
    # B5 (865 nm) lies in 9 (833) and 11 (864.5): B8A-like.
    assert _single(by_band["B5"]) == 11
    assert _single(by_band["B6"]) == 13
    assert _single(by_band["B7"]) == 14


def test_landsat8_thermal_blend():
    (tir,) = spectral.assign_sensor("landsat8_oli_tirs", ["B10"])
    center = 10895.0
    assert sensors.get_sensor("landsat8_oli_tirs").band("B10").center_nm == center
    assert tir.ranges == (14, 15)
    d14, d15 = center - _center(14), _center(15) - center
    np.testing.assert_allclose(tir.weights, (d15 / (d14 + d15), d14 / (d14 + d15)), rtol=1e-12)
    assert tir.weights[0] > 0.9998

    (official,) = spectral.assign_sensor("landsat8_oli_tirs", ["B10"], blend="official")
    assert official.ranges == (14, 15)
    np.testing.assert_allclose(official.weights, tir.weights[::-1], rtol=1e-12)
    assert official.weights[1] == pytest.approx(0.9998, abs=1e-4)


def test_official_blend_reproduces_landsat_blue():
    # The official range 18 (Landsat B2, 452-512 nm) blends aerosol and blue_1 as 0.79 / 0.21.
    weights = spectral.blend_weights(482.0, (0, 1), "official")
    np.testing.assert_allclose(weights, (0.79, 0.21), rtol=1e-12)
    np.testing.assert_allclose(spectral.blend_weights(482.0, (0, 1)), (0.21, 0.79), rtol=1e-12)


def test_band_in_a_gap_blends_neighbours():
    # 1200 nm lies between B09 (12, centre 943.5) and B11 (13, centre 1610).
    band = _optical("nir12", 1200.0)
    d12, d13 = 1200.0 - _center(12), _center(13) - 1200.0
    nearer = spectral.assign_band(band)
    assert nearer.ranges == (12, 13)
    np.testing.assert_allclose(nearer.weights, (d13 / (d12 + d13), d12 / (d12 + d13)))
    assert nearer.weights[0] > nearer.weights[1]
    official = spectral.assign_band(band, blend="official")
    assert official.ranges == (12, 13)
    np.testing.assert_allclose(official.weights, (d12 / (d12 + d13), d13 / (d12 + d13)))


def test_band_beyond_the_table_takes_the_end_range():
    assert _single(spectral.assign_band(_optical("uv", 380.0))) == 0


def test_naip():
    by_band = {a.band: _single(a) for a in spectral.assign_sensor("naip")}
    # red/green/blue as RGB; nir (860 nm) lies in 9 (centre 833) and 11 (864.5).
    assert by_band == {"red": 5, "green": 3, "blue": 2, "nir": 11}


def test_projection_matrix():
    assignments = spectral.assign_sensor("sentinel2_l1c") + spectral.assign_sensor(
        "landsat8_oli_tirs", ["B10"]
    )
    matrix = spectral.projection_matrix(assignments)
    assert matrix.shape == (14, 17) and matrix.dtype == np.float32
    expected_sums = np.ones(14, np.float32)
    expected_sums[10] = 0.0  # B10 cirrus.
    np.testing.assert_allclose(matrix.sum(axis=1), expected_sums, rtol=1e-6)
    assert matrix[1, 1] == 1.0
    np.testing.assert_allclose(matrix[13, [14, 15]], assignments[13].weights, rtol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        spectral.projection_matrix(assignments, num_ranges=15)


def test_unknown_blend_mode():
    with pytest.raises(ValueError, match="blend"):
        spectral.assign_sensor("rgb", blend="linear")
    with pytest.raises(ValueError, match="blend"):
        spectral.assign_band(_optical("x", 500.0), blend="farther")


def test_bad_bands():
    no_wavelength = sensors.Band("mystery", "optical", 10.0, "dn")
    with pytest.raises(ValueError, match="mystery"):
        spectral.assign_band(no_wavelength)
    lidar = sensors.Band("height", "lidar", 1.0, "dn", center_nm=1064.0, bandwidth_nm=1.0)
    with pytest.raises(ValueError, match="modality"):
        spectral.assign_band(lidar)
    with pytest.raises(ValueError, match="sum to 1"):
        spectral.BandProjection("x", (1, 2), (0.5, 0.6))


# ---- the official assignment table (models.md section 1.2) ----------------------------------


def _mid(lo_nm, hi_nm):
    return (lo_nm + hi_nm) / 2


def _official_blend(center_nm, source_centers):
    """The official rule for a blended range: each source weighted by |centre - its centre|,
    normalised to 1 (so the farther source dominates).  {range: centre} -> {range: weight}."""
    distances = {k: abs(center_nm - c) for k, c in source_centers.items()}
    return {k: d / sum(distances.values()) for k, d in distances.items()}


AEROSOL, BLUE_1 = _mid(422, 463), _mid(427, 558)
SWIR_1, SWIR_3, SWIR_4 = _mid(923, 964), _mid(1516, 1704), _mid(2002, 2376)
MICROWAVE = _mid(5.5e7, 5.6e7)
_S2_OFFICIAL = {band: {index: 1.0} for band, index in S2_EXPECTED.items()}
_RGB_OFFICIAL = {"red": {5: 1.0}, "green": {3: 1.0}, "blue": {2: 1.0}}
# Band -> {range: weight} under blend="official", as the official configuration defines them:
# S2 B10 (short_wave_infrared_2, index -1) is dropped; range 18 blue_2 (Landsat-8 B2, 452-512 nm)
# blends aerosol and blue_1; range 17 thermal_infrared_1 (Landsat-8 B10, 10600-11190 nm) blends
# short_wave_infrared_4 and microwave_1.
OFFICIAL = {
    "sentinel2_l1c": {**_S2_OFFICIAL, "B10": {}},
    "sentinel2_l2a": _S2_OFFICIAL,
    "sentinel1_grd": {"VV": {15: 1.0}, "VH": {16: 1.0}},
    "rgb": _RGB_OFFICIAL,
    "naip": _RGB_OFFICIAL,
    "landsat8_oli_tirs": {
        "B2": _official_blend(_mid(452, 512), {0: AEROSOL, 1: BLUE_1}),
        "B10": _official_blend(_mid(10600, 11190), {14: SWIR_4, 15: MICROWAVE}),
    },
}
# Bands the official configuration does not name, placed by centre wavelength (rule 3) with the
# official weights; pinned so that they cannot drift.
BY_WAVELENGTH = {
    "naip": {"nir": {11: 1.0}},
    "landsat8_oli_tirs": {
        "B1": {0: 1.0},
        "B3": {4: 1.0},
        "B4": {5: 1.0},
        "B5": {11: 1.0},
        "B6": {13: 1.0},
        "B7": {14: 1.0},
        "B8": {4: 1.0},
        "B9": _official_blend(1370.0, {12: SWIR_1, 13: SWIR_3}),
        "B11": _official_blend(12005.0, {14: SWIR_4, 15: MICROWAVE}),
    },
}


@pytest.mark.parametrize("sensor", sorted(OFFICIAL))
def test_official_blend_follows_the_official_table(sensor):
    expected = OFFICIAL[sensor] | BY_WAVELENGTH.get(sensor, {})
    assert set(expected) == set(sensors.get_sensor(sensor).band_names)
    for assignment in spectral.assign_sensor(sensor, blend="official"):
        want = expected[assignment.band]
        assert assignment.ranges == tuple(want), assignment
        np.testing.assert_allclose(assignment.weights, list(want.values()), rtol=1e-12)


def test_official_landsat8_blends_match_the_published_weights():
    by_band = {a.band: a for a in spectral.assign_sensor("landsat8_oli_tirs", blend="official")}
    np.testing.assert_allclose(by_band["B2"].weights, (0.79, 0.21), rtol=1e-12)
    assert by_band["B10"].weights[1] == pytest.approx(0.9998, abs=1e-4)
    # Our default keeps placing B2 by wavelength: inside RGB blue's range, nearest its centre.
    (blue,) = spectral.assign_sensor("landsat8_oli_tirs", ["B2"])
    assert _single(blue) == 2


@pytest.mark.parametrize("blend", spectral.BLEND_MODES)
def test_band_on_a_range_centre_takes_that_range(blend):
    # Landsat-8 B6 (1570-1650 nm) is centred exactly on short_wave_infrared_3 (1516-1704 nm).
    (swir,) = spectral.assign_sensor("landsat8_oli_tirs", ["B6"], blend=blend)
    assert _single(swir) == 13
    assert spectral.blend_weights(_center(13), (13,), blend) == (1.0,)
    assert spectral.blend_weights(_center(13), (12, 13), blend) == (0.0, 1.0)
