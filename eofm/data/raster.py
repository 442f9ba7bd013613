"""Reading GeoTIFF / COG rasters with rioxarray, and resampling bands onto one grid.

Everything returns channels-last numpy arrays `[H, W, C]` in the file's dtype; conversion to float32
and the validity mask happen in `eofm.data.spec.image_and_mask`. Every failure of GDAL (missing,
corrupt or truncated file, unreadable block) surfaces as `RasterReadError` naming the file.

Resampling names are GDAL's (`rasterio.enums.Resampling`): "nearest", "bilinear", "cubic",
"average", ... Upsampling a 20 m band to a 10 m grid with "bilinear" is what BigEarthNet and most
pretraining recipes do; labels and masks must use "nearest".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling


class RasterReadError(ValueError):
    """A raster file could not be read; the message names the file (and band, when known)."""


def resampling_method(name: str) -> Resampling:
    """GDAL resampling enum from its name, with an error listing the valid names."""
    try:
        return Resampling[name]
    except KeyError:
        valid = ", ".join(r.name for r in Resampling)
        raise ValueError(f"unknown resampling {name!r}; expected one of: {valid}") from None


def _open(path: str | os.PathLike) -> xr.DataArray:
    try:
        da = rioxarray.open_rasterio(path, masked=False, cache=False)
    except (rasterio.errors.RasterioError, OSError, ValueError) as e:
        raise RasterReadError(f"{path}: cannot open raster: {e}") from e
    if isinstance(da, list):  # Subdatasets (HDF/NetCDF containers) are not single rasters.
        raise RasterReadError(f"{path}: holds {len(da)} subdatasets; point at one of them")
    return da


def _load(da: xr.DataArray, path, what: str = "") -> np.ndarray:
    try:
        return np.asarray(da.values)
    except (rasterio.errors.RasterioError, OSError, ValueError, RuntimeError) as e:
        raise RasterReadError(f"{path}{what}: corrupt or truncated raster data: {e}") from e


def read_raster(
    path: str | os.PathLike, *, expected_bands: int | None = None
) -> tuple[np.ndarray, float | None]:
    """Reads all bands of a raster file.

    Returns:
        (array [H, W, C] in the file's dtype, the file's nodata value or None).
    Raises:
        RasterReadError: unreadable file, or `expected_bands` given and different from the file's count.
    """
    da = _open(path)
    count = da.sizes["band"]
    if expected_bands is not None and count != expected_bands:
        raise RasterReadError(f"{path}: has {count} bands, expected {expected_bands}")
    array = _load(da, path)
    return np.moveaxis(array, 0, -1), da.rio.nodata


def read_band_files(
    paths: Mapping[str, str | os.PathLike],
    *,
    resampling: str = "bilinear",
    reference: str | None = None,
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Reads one single-band file per band and resamples all onto one grid.

    Args:
        paths: band name -> file, in the channel order wanted.
        resampling: GDAL resampling used for bands not already on the reference grid.
        reference: band whose grid (CRS, transform, shape) is the target; by default the band with the
            finest pixel size (e.g. a 10 m Sentinel-2 band).
    Returns:
        (array [H, W, C] float32 on the reference grid, {band: nodata}).
    """
    method = resampling_method(resampling)
    arrays = {}
    for band, path in paths.items():
        da = _open(path)
        if da.sizes["band"] != 1:
            raise RasterReadError(f"{path} (band {band}): has {da.sizes['band']} bands, expected 1")
        arrays[band] = da
    if reference is None:
        reference = min(arrays, key=lambda b: abs(arrays[b].rio.resolution()[0]))
    elif reference not in arrays:
        raise ValueError(f"reference band {reference!r} is not among {list(arrays)}")
    ref = arrays[reference]
    out, nodata = [], {}
    for band, da in arrays.items():
        nodata[band] = da.rio.nodata
        on_grid = (
            da.rio.shape == ref.rio.shape
            and da.rio.crs == ref.rio.crs
            and da.rio.transform() == ref.rio.transform()
        )
        if not on_grid:
            try:
                da = da.astype(np.float32).rio.reproject_match(ref, resampling=method)
            except (rasterio.errors.RasterioError, OSError, ValueError, RuntimeError) as e:
                raise RasterReadError(f"{paths[band]} (band {band}): cannot resample: {e}") from e
        out.append(_load(da, paths[band], f" (band {band})")[0].astype(np.float32))
    return np.stack(out, axis=-1), nodata


def resample_array(
    array: np.ndarray,
    out_hw: tuple[int, int],
    *,
    resampling: str = "bilinear",
    nodata: float | None = None,
) -> np.ndarray:
    """Resamples an un-georeferenced [h, w, C] array covering the same footprint to [H, W, C].

    Uses GDAL's warper with a pure scaling transform, so the result equals what reading the band from
    a GeoTIFF at the finer grid would give. Returns float32.
    """
    h, w = array.shape[:2]
    H, W = out_hw
    if (h, w) == (H, W):
        return array.astype(np.float32)
    src = np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32)
    dst = np.zeros((src.shape[0], H, W), np.float32)
    crs = rasterio.crs.CRS.from_epsg(3857)  # Any projected CRS: source and target are the same.
    rasterio.warp.reproject(
        src,
        dst,
        src_transform=Affine.scale(W / w, H / h),
        src_crs=crs,
        dst_transform=Affine.identity(),
        dst_crs=crs,
        resampling=resampling_method(resampling),
        src_nodata=nodata,
        dst_nodata=nodata,
    )
    return np.moveaxis(dst, 0, -1)
