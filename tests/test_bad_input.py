"""Bad input gets a clear error naming the file and the band."""

import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine

from eofm import sensors
from eofm.data import datasets, raster
from eofm.data.sources import BandFilesItem, BandFilesSource, GeoTiffSource
from eofm.data.spec import SensorSpec


@pytest.fixture
def eurosat_copy(shared_data, tmp_path):
    """Three real EuroSAT-MS files in a scratch folder."""
    files = sorted((shared_data / "eurosat_ms" / "train" / "Forest").glob("*.tif"))[:3]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    return sorted(tmp_path.glob("*.tif"))


def _source(files):
    return GeoTiffSource(
        files, SensorSpec.full("sentinel2_l1c"), key="s2", file_bands=datasets.EUROSAT_MS_FILE_BANDS
    )


def test_not_a_geotiff(eurosat_copy):
    eurosat_copy[1].write_bytes(b"this is not a tiff" * 100)
    source = _source(eurosat_copy)
    source[0]
    with pytest.raises(raster.RasterReadError, match=f"{eurosat_copy[1]}: cannot open raster"):
        source[1]


def test_truncated_geotiff(eurosat_copy):
    data = eurosat_copy[2].read_bytes()
    eurosat_copy[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(raster.RasterReadError, match=str(eurosat_copy[2])):
        _source(eurosat_copy)[2]


def test_wrong_band_count(eurosat_copy, tmp_path):
    with rasterio.open(eurosat_copy[0]) as f:
        profile, data = f.profile, f.read()
    profile.update(count=12)
    bad = tmp_path / "twelve_bands.tif"
    with rasterio.open(bad, "w", **profile) as f:
        f.write(data[:12])
    with pytest.raises(raster.RasterReadError, match=f"{bad}: has 12 bands, expected 13"):
        _source([bad])[0]


def test_band_file_with_several_bands_names_the_band(eurosat_copy):
    spec = SensorSpec("sentinel2_l1c", ("B02", "B03"))
    item = BandFilesItem("x", {"s2": {"B02": str(eurosat_copy[0]), "B03": str(eurosat_copy[1])}})
    with pytest.raises(raster.RasterReadError, match=r"\(band B02\): has 13 bands, expected 1"):
        BandFilesSource([item], {"s2": spec})[0]


def test_missing_band_file_names_folder_and_band(shared_data, tmp_path):
    folder = next((shared_data / "ssl4eo_s12" / "s2c" / "0000200").iterdir())
    shutil.copytree(folder, tmp_path / "acq")
    (tmp_path / "acq" / "B11.tif").unlink()
    from eofm.data.sources import find_band_files

    with pytest.raises(FileNotFoundError, match="no file for band B11 of sentinel2_l1c"):
        find_band_files(tmp_path / "acq", SensorSpec.full("sentinel2_l1c"))


def test_unknown_band_names():
    with pytest.raises(sensors.UnknownBandError, match="B13"):
        SensorSpec("sentinel2_l2a", ("B02", "B13"))
    with pytest.raises(sensors.UnknownBandError, match="B10"):
        SensorSpec("sentinel2_l2a", ("B10",))  # L2A has no cirrus band.
    with pytest.raises(ValueError, match="not in the files"):
        GeoTiffSource([], SensorSpec("sentinel2_l1c", ("B02",)), file_bands=("B03", "B04"))
    with pytest.raises(sensors.UnknownSensorError, match="sentinel2_l1c"):
        SensorSpec("sentinel2_llc", ("B02",))


def test_corrupt_resampled_band_names_the_band(shared_data, tmp_path):
    root = shared_data / "bigearthnet_v2_s1s2" / "raw_folder_format_v2_unpaired"
    copy = tmp_path / "ben"
    shutil.copytree(root, copy)
    b05 = next(copy.glob("BigEarthNet-S2/*/*/*_B05.tif"))
    b05.write_bytes(b05.read_bytes()[:300])
    source = datasets.bigearthnet_folders(copy)
    with pytest.raises(raster.RasterReadError, match=r"B05"):
        source[0]


def test_all_nodata_pixels_are_masked_not_nan(tmp_path):
    path = tmp_path / "empty.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=2,
        dtype="float32",
        nodata=np.nan,
        crs="EPSG:32633",
        transform=Affine(10, 0, 0, 0, -10, 0),
    ) as f:
        f.write(np.full((2, 4, 4), np.nan, np.float32))
    sample = GeoTiffSource([path], SensorSpec.full("sentinel1_grd"), key="s1")[0]
    assert not sample["s1_valid"].any() and (sample["s1"] == 0).all()
