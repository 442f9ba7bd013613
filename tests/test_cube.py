"""Lazy scenes and cubes (`eofm.data.cube`) and the `xarray_cube` pretraining source, on real
scenes: the Landsat-7 North Carolina scene (0 = nodata) as a VRT mosaic of its two halves, a
Sentinel-2 chip of Sen1Floods11 as a Zarr cube, and the MOD09GA strip (half fill)."""

import json
import pickle
import time
from xml.sax.saxutils import escape

import numpy as np
import pytest
import rasterio
import rasterio.io
import rasterio.windows
import rioxarray
import xarray as xr

from eofm.data import cube, datasets, pipeline, raster
from eofm.data.spec import SensorSpec, valid_key

LANDSAT7 = "landsat7_nc_sparse_labels/lsat7_2000_b1-b5_b7.tif"
LANDSAT7_BANDS = ("B1", "B2", "B3", "B4", "B5", "B7")
S2_CHIP = "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"
MOD09GA = "modis_samples/MOD09GA.A2008296.h14v17_sr_b01-b07_crop.tif"
MOD09_FILL = -28672
SEAM = 240  # The column where the two halves of the Landsat-7 scene meet.


@pytest.fixture(scope="module")
def landsat7(shared_data):
    """(path, raw uint8 [443, 489, 6], CRS, transform) of the Landsat-7 scene."""
    path = shared_data / LANDSAT7
    with rasterio.open(path) as f:
        return path, np.moveaxis(f.read(), 0, -1), f.crs, f.transform


def _write_vrt(path, tiles, *, shape, crs, transform, descriptions, nodata=0) -> None:
    """A GDAL VRT mosaic of Byte rasters: tiles are (file, row, col, height, width) of the grid."""
    bands = []
    for i, name in enumerate(descriptions, 1):
        sources = "".join(
            f"""
    <SimpleSource>
      <SourceFilename relativeToVRT="0">{escape(str(file))}</SourceFilename>
      <SourceBand>{i}</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>
      <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/>
    </SimpleSource>"""
            for file, row, col, h, w in tiles
        )
        bands.append(
            f"""
  <VRTRasterBand dataType="Byte" band="{i}">
    <Description>{name}</Description>
    <NoDataValue>{nodata}</NoDataValue>{sources}
  </VRTRasterBand>"""
        )
    geotransform = ", ".join(map(repr, transform.to_gdal()))
    path.write_text(
        f"""<VRTDataset rasterXSize="{shape[1]}" rasterYSize="{shape[0]}">
  <SRS>{escape(crs.to_wkt())}</SRS>
  <GeoTransform>{geotransform}</GeoTransform>{"".join(bands)}
</VRTDataset>
"""
    )


@pytest.fixture(scope="module")
def landsat7_vrt(landsat7, tmp_path_factory):
    """The Landsat-7 scene cut at column `SEAM` into two GeoTIFFs, mosaicked again by a VRT."""
    path, raw, crs, transform = landsat7
    folder = tmp_path_factory.mktemp("vrt")
    height, width = raw.shape[:2]
    tiles = []
    with rasterio.open(path) as src:
        for name, col, w in (("left.tif", 0, SEAM), ("right.tif", SEAM, width - SEAM)):
            window = rasterio.windows.Window(col, 0, w, height)
            profile = {**src.profile, "width": w, "height": height}
            profile["transform"] = src.window_transform(window)
            with rasterio.open(folder / name, "w", **profile) as dst:
                dst.write(src.read(window=window))
            tiles.append((folder / name, 0, col, height, w))
    vrt = folder / "mosaic.vrt"
    _write_vrt(
        vrt, tiles, shape=(height, width), crs=crs, transform=transform, descriptions=LANDSAT7_BANDS
    )
    return vrt


def test_vrt_mosaic_reads_a_window_across_the_seam_like_the_scene(landsat7, landsat7_vrt):
    path, raw, crs, transform = landsat7
    mosaic = cube.open_cube(landsat7_vrt, sensor="landsat7_etm", bands=("B4", "B3"))
    assert mosaic.spec == SensorSpec("landsat7_etm", ("B4", "B3"))
    assert (mosaic.height, mosaic.width) == raw.shape[:2]
    assert mosaic.crs == crs and mosaic.transform == transform
    assert {p.rsplit("/", 1)[-1] for p in mosaic.files} == {"mosaic.vrt", "left.tif", "right.tif"}
    rows, cols = slice(0, 64), slice(SEAM - 40, SEAM + 24)  # The top rows are nodata.
    image, valid = mosaic.read(rows, cols)
    expected = raw[rows, cols][..., [3, 2]]
    np.testing.assert_array_equal(valid, expected != 0)  # 0 is the scene's nodata.
    np.testing.assert_array_equal(image, np.where(expected != 0, expected, 0))
    assert valid.any() and not valid.all()
    whole = cube.open_cube(path, sensor="landsat7_etm", bands=("B4", "B3"))
    for a, b in zip(whole.read(rows, cols), (image, valid)):
        np.testing.assert_array_equal(a, b)
    assert mosaic.window_transform(rows, cols) == whole.window_transform(rows, cols)
    assert mosaic.window_transform(rows, cols).c == transform.c + cols.start * transform.a


def test_windows_past_the_edges_are_padded_with_invalid_zeros(landsat7):
    path, raw, _, _ = landsat7
    scene = cube.open_cube(path, sensor="landsat7_etm")
    image, valid = scene.read(slice(-10, 30), slice(470, 520))  # 10 rows before, 31 cols after.
    assert image.shape == valid.shape == (40, 50, 6)
    inside = raw[:30, 470:]
    np.testing.assert_array_equal(valid[10:, :19], inside != 0)
    np.testing.assert_array_equal(image[10:, :19], np.where(inside != 0, inside, 0))
    assert not valid[:10].any() and not valid[:, 19:].any() and (image[~valid] == 0).all()


def test_opening_a_mosaic_of_64_scenes_reads_no_pixels_and_a_window_reads_only_itself(
    landsat7, tmp_path, monkeypatch
):
    path, raw, crs, transform = landsat7
    height, width = raw.shape[:2]
    tiles = [(path, i * height, j * width, height, width) for i in range(8) for j in range(8)]
    vrt = tmp_path / "big.vrt"
    _write_vrt(
        vrt,
        tiles,
        shape=(8 * height, 8 * width),
        crs=crs,
        transform=transform,
        descriptions=LANDSAT7_BANDS,
    )
    windows = []
    read = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        windows.append(kwargs.get("window"))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    start = time.perf_counter()
    big = cube.open_cube(vrt, sensor="landsat7_etm", bands=("B2",))
    assert time.perf_counter() - start < 1.0
    assert windows == [] and (big.height, big.width) == (8 * height, 8 * width)
    rows, cols = slice(3 * height - 20, 3 * height + 12), slice(5 * width - 7, 5 * width + 25)
    image, valid = big.read(rows, cols)
    assert windows == [((rows.start, rows.stop), (cols.start, cols.stop))]
    b2 = raw[np.arange(rows.start, rows.stop) % height][
        :, np.arange(cols.start, cols.stop) % width, 1
    ]
    np.testing.assert_array_equal(valid[..., 0], b2 != 0)
    np.testing.assert_array_equal(image[..., 0], np.where(b2 != 0, b2, 0))


@pytest.fixture(scope="module")
def s2_zarr(shared_data, tmp_path_factory):
    """(zarr path, raw int16 [512, 512, 13] of the chip, its CRS and transform)."""
    pytest.importorskip("zarr")
    tif = shared_data / S2_CHIP
    chip = rioxarray.open_rasterio(tif)
    crs = chip.rio.crs
    cube_array = chip.isel(band=[1, 2, 3]).assign_coords(band=["B02", "B03", "B04"])
    cube_array = cube_array.drop_vars("spatial_ref").rio.write_crs(crs)
    store = tmp_path_factory.mktemp("zarr") / "s2.zarr"
    cube_array.to_dataset(name="reflectance").to_zarr(store)
    with rasterio.open(tif) as f:
        return store, np.moveaxis(f.read(), 0, -1), f.crs, f.transform


def test_zarr_cube_reads_like_the_geotiff_with_bands_from_its_coordinate(s2_zarr):
    store, raw, crs, transform = s2_zarr
    zarr_cube = cube.open_cube(store, sensor="sentinel2_l1c", bands=("B04", "B02"))
    assert zarr_cube.file_bands == ("B02", "B03", "B04")
    assert zarr_cube.spec.bands == ("B04", "B02") and zarr_cube.nodata == [0.0, 0.0]
    assert (zarr_cube.height, zarr_cube.width) == (512, 512)
    assert zarr_cube.crs == crs
    assert zarr_cube.transform.almost_equals(transform, precision=1e-12)
    rows, cols = slice(100, 228), slice(300, 428)
    image, valid = zarr_cube.read(rows, cols)
    expected = raw[rows, cols][..., [3, 1]]
    np.testing.assert_array_equal(valid, expected != 0)
    np.testing.assert_array_equal(image, np.where(expected != 0, expected, 0))
    assert valid.mean() > 0.9
    data = zarr_cube.data  # The whole cube, lazily, in dask chunks.
    assert data.dims == ("band", "y", "x") and list(data.band.values) == ["B04", "B02"]
    np.testing.assert_array_equal(data[:, rows, cols].values, np.moveaxis(expected, -1, 0))


def test_fill_pixels_of_the_mod09ga_strip_are_invalid(shared_data):
    path = shared_data / MOD09GA
    with rasterio.open(path) as f:
        raw = np.moveaxis(f.read(), 0, -1)
    strip = cube.open_cube(path, sensor="modis_land", bands=("b02", "b01"))
    assert strip.file_bands == ("b01", "b02", "b03", "b04", "b05", "b06", "b07")
    assert strip.nodata == [MOD09_FILL, MOD09_FILL]
    image, valid = strip.read(slice(0, 97), slice(0, 299))
    np.testing.assert_array_equal(valid, raw[..., [1, 0]] != MOD09_FILL)
    assert 0.45 < 1 - valid.mean() < 0.55 and (image[~valid] == 0).all()


@pytest.fixture
def landsat7_windows(landsat7):
    path = landsat7[0]
    return {"path": str(path), "sensor": "landsat7_etm", "bands": ["B4", "B3"], "window": 48}


def test_xarray_cube_items_are_seeded_windows_valid_enough(landsat7, landsat7_windows):
    _, raw, _, _ = landsat7
    source = datasets.make_source("xarray_cube", num_windows=6, **landsat7_windows)
    again = pickle.loads(
        pickle.dumps(datasets.make_source("xarray_cube", num_windows=6, **landsat7_windows))
    )
    assert len(source) == 6 and source.specs == {"image": SensorSpec("landsat7_etm", ("B4", "B3"))}
    ids = []
    for i in range(len(source)):
        sample, same = source[i], again[i]
        assert sample["id"] == same["id"]
        np.testing.assert_array_equal(sample["image"], same["image"])
        path, row, col = sample["id"].rsplit(":", 2)
        row, col = int(row), int(col)
        assert path == landsat7_windows["path"]
        expected = raw[row : row + 48, col : col + 48][..., [3, 2]]
        assert sample["image"].shape == (48, 48, 2)
        np.testing.assert_array_equal(sample[valid_key("image")], expected != 0)
        np.testing.assert_array_equal(sample["image"], np.where(expected != 0, expected, 0))
        assert sample[valid_key("image")].mean() >= 0.5
        ids.append(sample["id"])
    assert len(set(ids)) == 6
    other_seed = datasets.make_source("xarray_cube", num_windows=6, seed=1, **landsat7_windows)
    assert [other_seed[i]["id"] for i in range(6)] != ids


def test_windows_below_the_valid_fraction_are_redrawn_then_refused(shared_data):
    path = shared_data / MOD09GA
    strict = datasets.xarray_cube(
        path, sensor="modis_land", bands=("b01",), window=32, num_windows=4, min_valid_fraction=1.0
    )
    for i in range(4):  # Half of the strip is fill: only windows without fill are kept.
        assert strict[i]["image_valid"].all()
    # 97 of the 128 rows at most, half of them fill: never 80 % valid.
    too_big = datasets.xarray_cube(path, sensor="modis_land", window=128, min_valid_fraction=0.8)
    with pytest.raises(ValueError, match=rf"{MOD09GA}: 32 windows of 128 px .* at most \d\d\.\d%"):
        too_big[0]


def test_xarray_cube_batches_in_the_pipeline(landsat7_windows):
    source = datasets.make_source("xarray_cube", num_windows=8, **landsat7_windows)
    batch = next(
        iter(pipeline.make_dataset(source, batch_size=4, seed=0, process_index=0, process_count=1))
    )
    assert batch["image"].shape == (4, 48, 48, 2) and batch["image_valid"].dtype == bool


def test_short_mae_pretraining_on_windows_of_a_vrt_mosaic(landsat7_vrt, pretrain_config, tmp_path):
    from eofm.train import loop, pretrain

    config = pretrain_config("mae", "tiny")
    config.model.update(
        {
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "decoder_dim": 16,
            "decoder_depth": 1,
            "decoder_heads": 2,
        }
    )
    config.data.source = "xarray_cube"
    config.data.source_args = {
        "path": str(landsat7_vrt),
        "sensor": "landsat7_etm",
        "bands": ["B4", "B3"],
        "window": 64,
        "num_windows": 16,
    }
    config.data.sensors = ("image",)
    config.data.image_size = 32
    config.data.prepared_dir = str(tmp_path / "data")
    config.batch_size = 8
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every = 1
    config.peak_flops = 1e11
    loop.train(config, tmp_path, pretrain.workload(config, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert (
        manifest["num_examples"] == 16 and manifest["fingerprint"]["reads"]["files"]["count"] == 3
    )


def test_unknown_band_names_the_file_and_its_bands(landsat7_vrt):
    with pytest.raises(
        ValueError,
        match=r"mosaic.vrt: bands \['B6'\] of landsat7_etm are not in the file"
        r" \(it has B1, B2, B3, B4, B5, B7\)",
    ):
        cube.open_cube(landsat7_vrt, sensor="landsat7_etm", bands=("B6",))
    with pytest.raises(ValueError, match=r"mosaic.vrt: .*no band 'B9'"):
        cube.open_cube(landsat7_vrt, sensor="landsat7_etm", bands=("B9",))


def test_wrong_count_of_file_bands_names_the_file(landsat7_vrt, s2_zarr):
    with pytest.raises(ValueError, match=r"mosaic.vrt: has 6 bands, but file_bands names 2"):
        cube.open_cube(landsat7_vrt, sensor="landsat7_etm", file_bands=("B1", "B2"))
    with pytest.raises(ValueError, match=r"s2.zarr: has 3 bands, but file_bands names 1"):
        cube.open_cube(s2_zarr[0], sensor="sentinel2_l1c", file_bands=("B02",))


def test_corrupt_files_are_named(landsat7, tmp_path):
    garbage = tmp_path / "scene.tif"
    garbage.write_bytes(b"not a raster" * 100)
    with pytest.raises(raster.RasterReadError, match=f"{garbage}: cannot open raster"):
        cube.open_cube(garbage, sensor="landsat7_etm")
    netcdf4 = tmp_path / "cube.nc"
    netcdf4.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(
        raster.RasterReadError, match=f"{netcdf4}: is NetCDF-4 .* h5netcdf or netCDF4"
    ):
        cube.open_cube(netcdf4, sensor="landsat7_etm")
    truncated = tmp_path / "truncated.tif"
    data = landsat7[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(raster.RasterReadError, match=f"{truncated}"):
        cube.open_cube(truncated, sensor="landsat7_etm").read(slice(400, 443), slice(0, 489))


def test_cube_without_spatial_dims_is_refused(landsat7, tmp_path):
    _, raw, _, _ = landsat7
    path = tmp_path / "rows_cols.nc"
    xr.Dataset(
        {"scene": (("band", "row", "col"), np.moveaxis(raw, -1, 0).astype(np.int16))}
    ).assign_coords(band=list(LANDSAT7_BANDS)).to_netcdf(path, engine="scipy")
    with pytest.raises(
        ValueError,
        match=r"rows_cols.nc: variable 'scene' has dims \('band', 'row', 'col'\),"
        r" without .*\('y', 'x'\)",
    ):
        cube.open_cube(path, sensor="landsat7_etm")
