"""Tests of eofm.data.stats: streaming band statistics and the stats file format."""

import json
import os

import numpy as np
import pytest

from eofm.data import stats as stats_lib

BANDS = ("B02", "B03", "B04", "B08")
PERCENTILES = (0.0, 0.5, 1.0, 25.0, 50.0, 99.0, 99.9, 100.0)


def _walk(rng, shape, lo, hi):
    """Spatially correlated data: a per-band random walk rescaled to [lo, hi]."""
    walk = np.cumsum(rng.normal(size=shape), axis=0)
    walk -= walk.min(axis=0, keepdims=True)
    walk /= walk.max(axis=0, keepdims=True)
    return lo + walk * (hi - lo)


def _uint16_image(seed=0, shape=(300, 200, len(BANDS))):
    rng = np.random.default_rng(seed)
    return np.round(_walk(rng, shape, 0, 10000)).astype(np.uint16)


def _chunks(x, bounds):
    """Splits along the first axis at `bounds`."""
    return np.split(x, bounds, axis=0)


def _numpy_stats(values, percentiles=PERCENTILES):
    values = np.asarray(values, np.float64)
    out = {
        "count": values.size,
        "mean": values.mean(),
        "std": values.std(),
        "min": values.min(),
        "max": values.max(),
    }
    for q in percentiles:
        out[stats_lib.percentile_key(q)] = np.percentile(values, q)
    return out


def _check_moments(got, want, rtol=1e-9):
    assert got["count"] == want["count"]
    assert got["min"] == want["min"] and got["max"] == want["max"]
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=rtol)
    np.testing.assert_allclose(got["std"], want["std"], rtol=rtol)


def test_uint16_matches_numpy_exactly():
    x = _uint16_image()
    acc = stats_lib.BandStatsAccumulator(BANDS, percentiles=PERCENTILES)
    for chunk in _chunks(x, [7, 60, 61, 190]):
        acc.update(chunk)
    result = acc.result()
    assert list(result) == list(BANDS)
    for i, band in enumerate(BANDS):
        want = _numpy_stats(x[..., i])
        _check_moments(result[band], want)
        assert acc.bin_width(band) <= 1.0
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert result[band][key] == want[key], (band, key)


def test_result_keys_and_types():
    acc = stats_lib.BandStatsAccumulator(["a"], percentiles=(0.5, 1, 99))
    acc.update(np.arange(10, dtype=np.uint8)[:, None])
    result = acc.result()["a"]
    assert list(result) == ["count", "mean", "std", "min", "max", "p0.5", "p1", "p99"]
    assert type(result["count"]) is int
    assert all(type(v) is float for k, v in result.items() if k != "count")


def test_default_percentiles_are_p1_p99():
    x = _uint16_image(seed=3)
    result = stats_lib.compute_band_stats([x[:100], x[100:]], BANDS)
    for i, band in enumerate(BANDS):
        assert result[band]["p1"] == np.percentile(x[..., i], 1)
        assert result[band]["p99"] == np.percentile(x[..., i], 99)


@pytest.mark.parametrize("seed", range(5))
def test_integer_data_exact_under_shifts_and_growth(seed):
    # A tiny histogram forces many regrids; integer data spanning fewer values than bins stays exact.
    rng = np.random.default_rng(seed)
    acc = stats_lib.BandStatsAccumulator(["a"], percentiles=PERCENTILES, num_bins=64)
    seen = []
    for _ in range(12):
        centre = rng.integers(-20, 20)
        chunk = rng.integers(centre - 3, centre + 4, size=(rng.integers(1, 50), 1))
        acc.update(chunk)
        seen.append(chunk)
    all_values = np.concatenate(seen)[:, 0]
    result = acc.result()["a"]
    for q in PERCENTILES:
        assert result[stats_lib.percentile_key(q)] == np.percentile(all_values, q)


def test_float_db_growing_range_within_one_bin():
    rng = np.random.default_rng(1)
    x = _walk(rng, (400, 150, 2), -30.0, 5.0).astype(np.float32)
    # First chunk narrow, later ones progressively wider.
    order = np.argsort(np.abs(x[..., 0] - np.median(x[..., 0])).ravel(), kind="stable")
    flat = x.reshape(-1, 2)[order]
    acc = stats_lib.BandStatsAccumulator(["VV", "VH"], percentiles=PERCENTILES)
    for chunk in _chunks(flat, [500, 5000, 23000, 40000]):
        acc.update(chunk)
    result = acc.result()
    for i, band in enumerate(["VV", "VH"]):
        want = _numpy_stats(flat[:, i])
        _check_moments(result[band], want)
        width = acc.bin_width(band)
        assert width <= 35.0 / acc.num_bins * 4
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert abs(result[band][key] - want[key]) <= width, (band, key)


def test_first_chunk_integral_then_float():
    # A first chunk of zeros must not commit the histogram to integer-wide bins.
    rng = np.random.default_rng(2)
    values = rng.uniform(0.0, 0.3, size=(20000, 1))
    acc = stats_lib.BandStatsAccumulator(["refl"], percentiles=PERCENTILES)
    acc.update(np.zeros((10, 1)))
    acc.update(values)
    all_values = np.concatenate([np.zeros(10), values[:, 0]])
    result = acc.result()["refl"]
    width = acc.bin_width("refl")
    assert width < 1e-4
    for q in PERCENTILES:
        assert abs(result[stats_lib.percentile_key(q)] - np.percentile(all_values, q)) <= width


def test_constant_band():
    acc = stats_lib.BandStatsAccumulator(["c"])
    acc.update(np.full((5, 5, 1), 0.37, np.float64))
    result = acc.result()["c"]
    assert result["count"] == 25
    assert result["mean"] == pytest.approx(0.37) and result["std"] == pytest.approx(0.0, abs=1e-15)
    assert result["p1"] == result["p99"] == 0.37


@pytest.mark.parametrize("mask_kind", ["full", "per_pixel", "trailing_one"])
def test_valid_mask_excludes_nodata(mask_kind):
    rng = np.random.default_rng(4)
    x = _uint16_image(seed=4, shape=(120, 90, len(BANDS)))
    if mask_kind == "full":
        valid = rng.random(x.shape) > 0.3
    elif mask_kind == "per_pixel":
        valid = rng.random(x.shape[:-1]) > 0.3
    else:
        valid = rng.random(x.shape[:-1] + (1,)) > 0.3
    full_valid = np.broadcast_to(valid[..., None] if mask_kind == "per_pixel" else valid, x.shape)
    # Nodata pixels hold a value far outside the data that would ruin every statistic.
    x = np.where(full_valid, x, 65535)
    acc = stats_lib.BandStatsAccumulator(BANDS, percentiles=PERCENTILES)
    for lo, hi in [(0, 33), (33, 34), (34, 120)]:
        acc.update(x[lo:hi], valid[lo:hi])
    result = acc.result()
    for i, band in enumerate(BANDS):
        want = _numpy_stats(x[..., i][full_valid[..., i]])
        _check_moments(result[band], want)
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert result[band][key] == want[key], (band, key)


def test_nan_and_inf_excluded():
    rng = np.random.default_rng(5)
    x = _walk(rng, (200, 50, 2), -30.0, 5.0).astype(np.float32)
    bad = rng.random(x.shape) < 0.2
    x[bad] = np.nan
    x[0, 0, 0] = np.inf
    x[1, 0, 1] = -np.inf
    acc = stats_lib.BandStatsAccumulator(["VV", "VH"], percentiles=PERCENTILES)
    acc.update(x[:80])
    acc.update(x[80:])
    result = acc.result()
    for i, band in enumerate(["VV", "VH"]):
        values = x[..., i][np.isfinite(x[..., i])]
        want = _numpy_stats(values)
        _check_moments(result[band], want)
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert abs(result[band][key] - want[key]) <= acc.bin_width(band)


def _merge_case(x, split, bounds_a, bounds_b, **kwargs):
    single = stats_lib.BandStatsAccumulator(BANDS[: x.shape[-1]], **kwargs)
    a = stats_lib.BandStatsAccumulator(BANDS[: x.shape[-1]], **kwargs)
    b = stats_lib.BandStatsAccumulator(BANDS[: x.shape[-1]], **kwargs)
    for chunk in _chunks(x, bounds_a + [split] + [s + split for s in bounds_b]):
        single.update(chunk)
    for chunk in _chunks(x[:split], bounds_a):
        a.update(chunk)
    for chunk in _chunks(x[split:], bounds_b):
        b.update(chunk)
    b_before = b.result()
    a.merge(b)
    assert b.result() == b_before  # The merged-in accumulator is left alone.
    return single, a


def test_merge_integer_equals_single_pass():
    x = _uint16_image(seed=6)
    # Sort so that the two halves cover different value ranges.
    x = np.sort(x, axis=0)
    single, merged = _merge_case(x, 150, [20, 90], [3, 100], percentiles=PERCENTILES)
    want, got = single.result(), merged.result()
    for band in BANDS:
        _check_moments(got[band], want[band], rtol=1e-12)
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert got[band][key] == want[band][key]


def test_merge_float_different_ranges():
    rng = np.random.default_rng(7)
    x = np.sort(_walk(rng, (300, 100, 2), -30.0, 5.0), axis=0)
    x[:150] = x[:150] * 0.01 - 10.0  # First half very narrow, second half wide.
    single, merged = _merge_case(x, 150, [40], [10, 60], percentiles=PERCENTILES)
    want, got = single.result(), merged.result()
    for band in BANDS[:2]:
        _check_moments(got[band], want[band], rtol=1e-12)
        width = max(single.bin_width(band), merged.bin_width(band))
        values = x[..., BANDS.index(band)]
        for q in PERCENTILES:
            key = stats_lib.percentile_key(q)
            assert abs(got[band][key] - want[band][key]) <= 2 * width
            assert abs(got[band][key] - np.percentile(values, q)) <= width


def test_merge_with_empty():
    x = _uint16_image(seed=8, shape=(50, 40, len(BANDS)))
    acc = stats_lib.BandStatsAccumulator(BANDS)
    acc.update(x)
    empty = stats_lib.BandStatsAccumulator(BANDS)
    empty.merge(acc)
    acc.merge(stats_lib.BandStatsAccumulator(BANDS))
    assert empty.result() == acc.result()


def test_merge_rejects_mismatch():
    acc = stats_lib.BandStatsAccumulator(["a", "b"])
    with pytest.raises(ValueError, match="different bands"):
        acc.merge(stats_lib.BandStatsAccumulator(["a", "c"]))
    with pytest.raises(ValueError, match="num_bins"):
        acc.merge(stats_lib.BandStatsAccumulator(["a", "b"], num_bins=16))


def test_zero_valid_band_raises_with_name():
    x = _uint16_image(seed=9, shape=(10, 10, len(BANDS)))
    valid = np.ones(x.shape, bool)
    valid[..., 2] = False
    acc = stats_lib.BandStatsAccumulator(BANDS)
    acc.update(x, valid)
    with pytest.raises(ValueError, match="B04"):
        acc.result()


def test_wrong_channel_count_raises():
    acc = stats_lib.BandStatsAccumulator(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected 3 channels.*got shape \(4, 4, 2\)"):
        acc.update(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        acc.update(np.zeros((4, 4, 3)), np.ones((4, 3, 3), bool))


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError):
        stats_lib.BandStatsAccumulator(["a", "a"])
    with pytest.raises(ValueError):
        stats_lib.BandStatsAccumulator(["a"], percentiles=(101,))
    with pytest.raises(ValueError):
        stats_lib.BandStatsAccumulator(["a"], num_bins=1)


def test_compute_band_stats_accepts_masked_items():
    x = _uint16_image(seed=10, shape=(40, 30, len(BANDS)))
    valid = x > 2000
    result = stats_lib.compute_band_stats([(x[:10], valid[:10]), x[10:20]], BANDS)
    for i, band in enumerate(BANDS):
        values = np.concatenate([x[:10, ..., i][valid[:10, ..., i]], x[10:20, ..., i].ravel()])
        _check_moments(result[band], _numpy_stats(values, ()))
        assert result[band]["p99"] == np.percentile(values, 99)


def _example_stats():
    x = _uint16_image(seed=11, shape=(20, 20, len(BANDS)))
    s2 = stats_lib.compute_band_stats([x], BANDS)
    s1 = stats_lib.compute_band_stats([x[..., :2].astype(np.float32) / 100 - 30], ["VV", "VH"])
    return {"s2": s2, "s1": s1}


def test_json_round_trip(tmp_path):
    stats = _example_stats()
    path = tmp_path / "stats.json"
    stats_lib.write_stats_json(path, stats, sensors={"s2": "sentinel2_l2a", "s1": "sentinel1_grd"})
    assert os.listdir(tmp_path) == ["stats.json"]  # No leftover .tmp file.
    doc = json.loads(path.read_text())
    assert doc["format"] == "eofm.band_stats/1"
    back = stats_lib.read_stats_json(str(path))
    assert list(back) == ["s2", "s1"]
    assert back["s2"]["sensor"] == "sentinel2_l2a"
    assert back["s2"]["bands"] == list(BANDS)
    assert back["s1"]["bands"] == ["VV", "VH"]
    for key in stats:
        assert back[key]["stats"] == stats[key]
    # Overwriting an existing file is atomic too.
    stats_lib.write_stats_json(path, {"s2": stats["s2"]}, sensors={"s2": "sentinel2_l2a"})
    assert list(stats_lib.read_stats_json(path)) == ["s2"]
    assert os.listdir(tmp_path) == ["stats.json"]


def test_write_requires_sensor_names(tmp_path):
    with pytest.raises(ValueError, match="s1"):
        stats_lib.write_stats_json(
            tmp_path / "x.json", _example_stats(), sensors={"s2": "sentinel2_l2a"}
        )
    assert not os.listdir(tmp_path)


def test_failed_write_leaves_no_tmp(tmp_path):
    path = tmp_path / "stats.json"
    bad = {"s2": {"B02": {"mean": float("nan")}}}
    with pytest.raises(ValueError):
        stats_lib.write_stats_json(path, bad, sensors={"s2": "sentinel2_l2a"})
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"format": "other/1", "sensors": {}}),
        json.dumps({"format": "eofm.band_stats/1"}),
        json.dumps({"format": "eofm.band_stats/1", "sensors": {"s2": {"bands": [], "stats": {}}}}),
        json.dumps(
            {
                "format": "eofm.band_stats/1",
                "sensors": {"s2": {"sensor": "x", "bands": ["B02"], "stats": {}}},
            }
        ),
        json.dumps(
            {
                "format": "eofm.band_stats/1",
                "sensors": {
                    "s2": {"sensor": "x", "bands": ["B02"], "stats": {"B02": {"mean": "1"}}}
                },
            }
        ),
    ],
)
def test_read_rejects_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.json"):
        stats_lib.read_stats_json(path)
