"""MODIS band stacks (GeoTIFF, NetCDF, Zarr) and the SatVision-TOA input scaling, on the real
MOD09GA sample."""

import numpy as np
import pytest
import rasterio
import rasterio.transform
import xarray as xr

from eofm.data import datasets, normalize, validity
from eofm.data.sources import ModisSource
from eofm.data.spec import SensorSpec, valid_key

MOD09GA = "modis_samples/MOD09GA.A2008296.h14v17_sr_b01-b07_crop.tif"
MOD09_FILL = -28672
LAND_BANDS = ("b01", "b02", "b03", "b04", "b05", "b06", "b07")


@pytest.fixture
def mod09ga(shared_data):
    """(path, raw int16 [97, 299, 7] in file order b01..b07)."""
    path = shared_data / MOD09GA
    with rasterio.open(path) as f:
        return path, np.moveaxis(f.read(), 0, -1)


def _write_netcdf(raw: np.ndarray, path, names=LAND_BANDS, fill=MOD09_FILL) -> None:
    """One 2-D variable per band, named like the product's ("sur_refl_b01")."""
    ds = xr.Dataset({f"sur_refl_{b}": (("y", "x"), raw[..., i]) for i, b in enumerate(names)})
    encoding = {v: {"_FillValue": fill} for v in ds.data_vars} if fill is not None else None
    if str(path).endswith(".zarr"):
        ds.to_zarr(path, encoding=encoding)
    else:
        ds.to_netcdf(path, engine="scipy", encoding=encoding)


def test_reads_mod09ga_with_band_names_units_and_fill_masked(mod09ga):
    path, raw = mod09ga
    source = datasets.make_source("modis", files=path, sensor="modis_land")
    assert source.specs["modis"] == SensorSpec("modis_land", LAND_BANDS)
    assert len(source) == 1 and source.reads_from() == {"files": [str(path)], "patch_size": None}
    sample = source[0]
    image, valid = sample["modis"], sample[valid_key("modis")]
    assert image.shape == (97, 299, 7) and image.dtype == np.float32
    # The registry unit of MOD09 is reflectance x 10_000: the stored integers, unchanged.
    np.testing.assert_array_equal(valid, raw != MOD09_FILL)
    np.testing.assert_array_equal(image[valid], raw[valid])
    assert (image[~valid] == 0).all()
    assert 0.45 < 1 - valid.mean() < 0.55  # About half of the strip is fill.


def test_bands_are_selected_and_reordered_by_name(mod09ga):
    path, raw = mod09ga
    source = ModisSource([path], sensor="modis_land", bands=("swir22", "b01"))
    image = source[0]["modis"]
    assert source.specs["modis"].bands == ("b07", "b01")
    valid = raw[..., 0] != MOD09_FILL
    np.testing.assert_array_equal(image[valid], raw[valid][:, [6, 0]])


def test_patches_tile_the_file_and_pixels_past_its_edge_are_invalid(mod09ga):
    path, raw = mod09ga
    source = ModisSource(path, sensor="modis_land", patch_size=64)
    assert len(source) == 2 * 5  # ceil(97 / 64) x ceil(299 / 64)
    last = source[len(source) - 1]  # rows 64:97, columns 256:299
    image, valid = last["modis"], last[valid_key("modis")]
    assert image.shape == (64, 64, 7) and last["id"] == f"{path}@64,256"
    inside = raw[64:, 256:]
    np.testing.assert_array_equal(valid[:33, :43], inside != MOD09_FILL)
    np.testing.assert_array_equal(image[:33, :43], np.where(inside != MOD09_FILL, inside, 0))
    assert not valid[33:].any() and not valid[:, 43:].any()
    assert (image[33:] == 0).all() and (image[:, 43:] == 0).all()


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_netcdf_and_zarr_copies_read_like_the_geotiff(mod09ga, tmp_path, suffix):
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    path, raw = mod09ga
    copy = tmp_path / f"mod09ga{suffix}"
    _write_netcdf(raw, copy)
    from_tif = ModisSource(path, sensor="modis_land", patch_size=64)
    from_copy = ModisSource(tmp_path, sensor="modis_land", patch_size=64)
    assert from_copy.files == [str(copy)] and from_copy.specs == from_tif.specs
    assert len(from_copy) == len(from_tif)
    for i in range(len(from_tif)):
        for name in ("modis", "modis_valid"):
            np.testing.assert_array_equal(from_copy[i][name], from_tif[i][name])


def test_out_of_range_values_without_fill_tag_are_invalid(mod09ga, tmp_path):
    """Undeclared fill (-28672 in a float copy without a fill tag, -3.4e38) is out of range."""
    _, raw = mod09ga
    values = raw[..., :2].astype(np.float32)
    values[0, 0, 1] = -3.4e38
    _write_netcdf(values, tmp_path / "float.nc", names=("b01", "b02"), fill=None)
    source = ModisSource(tmp_path / "float.nc", sensor="modis_land")
    with pytest.warns(validity.OutOfRangeWarning, match="float.nc .* b02"):
        sample = source[0]
    expected = raw[..., :2] != MOD09_FILL
    expected[0, 0, 1] = False
    np.testing.assert_array_equal(sample["modis_valid"], expected)
    assert (sample["modis"][~expected] == 0).all()


def test_bands_a_file_lacks_are_an_error_or_invalid(mod09ga, tmp_path):
    _, raw = mod09ga
    path = tmp_path / "two_bands.nc"
    _write_netcdf(raw[..., :2], path, names=("b01", "b02"))
    with pytest.raises(ValueError, match=r"two_bands.nc: lacks bands \['b03'\]"):
        ModisSource(path, sensor="modis_land", bands=("b01", "b02", "b03"))
    source = ModisSource(
        path, sensor="modis_land", bands=("b03", "b01"), missing_bands_invalid=True
    )
    sample = source[0]
    assert not sample["modis_valid"][..., 0].any() and (sample["modis"][..., 0] == 0).all()
    np.testing.assert_array_equal(sample["modis_valid"][..., 1], raw[..., 0] != MOD09_FILL)


def test_undescribed_geotiff_bands_need_file_bands(mod09ga, tmp_path):
    _, raw = mod09ga
    path = tmp_path / "plain.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=299,
        height=97,
        count=2,
        dtype="int16",
        nodata=MOD09_FILL,
        transform=rasterio.transform.from_origin(0, 0, 500, 500),
    ) as f:
        f.write(np.moveaxis(raw[..., :2], -1, 0))
    with pytest.raises(ValueError, match=r"plain.tif: band 1 \(None, from descriptions\)"):
        ModisSource(path, sensor="modis_land")
    source = ModisSource(path, sensor="modis_land", file_bands=("red", "nir"))
    assert source.specs["modis"].bands == ("b01", "b02")
    np.testing.assert_array_equal(source[0]["modis_valid"], raw[..., :2] != MOD09_FILL)


def test_source_arguments_are_checked():
    with pytest.raises(ValueError, match="'patch_size' instead of 'patchsize'"):
        datasets.check_source_args("modis", {"files": "x", "patchsize": 128})
    with pytest.raises(ValueError, match=r"sensor 'sentinel2_l1c' is not one of \('modis_toa'"):
        ModisSource("x.tif", sensor="sentinel2_l1c")


def test_satvision_toa_scales_mod09_reflectance_to_a_fraction(mod09ga):
    path, raw = mod09ga
    bands = ("b01", "b02", "b03", "b06", "b07")  # The MOD09 bands SatVision-TOA has.
    source = ModisSource(path, sensor="modis_land", bands=bands)
    out = normalize.Normalize(source.specs, "satvision_toa").map(source[0])
    y, valid = out["modis"], out["modis_valid"]
    assert y[valid].min() >= 0.0045 and y[valid].max() <= 1.4516
    # The first pixel stores b01 6504 and b07 792 (reflectance x 10_000): 65.04 % and 7.92 %.
    assert raw[0, 0, 0] == 6504 and raw[0, 0, 6] == 792
    np.testing.assert_allclose(y[0, 0, [0, 4]], [0.6504, 0.0792], rtol=1e-6)
    assert (y[~valid] == 0).all()


def test_satvision_toa_hand_computed_values():
    spec = SensorSpec("modis_toa", ("b31", "b01", "b21"))
    x = np.array([[[263.1218, 0.25, 352.7182], [150.0, 0.0, 300.0]]], np.float32)  # [1, 2, 3]
    y = normalize.Normalize({"toa": spec}, "satvision_toa").map({"toa": x})["toa"]
    # b31: (BT - 202.1759) / (324.0677 - 202.1759), not clipped below 0; b01: already a fraction
    # (registry unit "reflectance", the release's percent x 0.01); b21 in [223.1222, 352.7182].
    expected = [[[0.5, 0.25, 1.0], [-0.4280509, 0.0, 0.5932112]]]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_satvision_toa_scales_any_mod09_reflectance_band():
    # b04 (green) fills no SatVision slot but is reflectance x 1e4 like the others.
    y = normalize.Normalize({"m": SensorSpec("modis_land", ("b01", "b04"))}, "satvision_toa").map(
        {"m": np.array([[[6504.0, 1200.0]]], np.float32)}
    )["m"]
    np.testing.assert_allclose(y, [[[0.6504, 0.12]]], rtol=1e-6)
