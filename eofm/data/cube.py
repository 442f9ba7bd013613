"""Scenes and cubes larger than memory, opened lazily and read window by window.

`open_cube(path, sensor=...)` reads only metadata: the bands, the pixel grid (height, width, CRS,
affine transform) and each band's nodata. `Cube.read(rows, cols)` reads one window of registry
bands, channels last, with its validity mask. Formats:

- rasters GDAL opens (GeoTIFF, COG, VRT mosaics), bands named by their descriptions or
  `file_bands`;
- NetCDF files and Zarr stores with `y`/`x` (or `lat`/`lon`, `latitude`/`longitude`) dims, holding
  one `[band, y, x]` variable whose band coordinate (or `long_name` list, or `file_bands`) names
  the bands, or one 2-D variable per band named after it ("B04", "sur_refl_b01").

A name is a registry name or alias of the sensor's band (any case), or ends in its band number
("sur_refl_b01", "band_7"). Values must be stored in the registry's units (scale 1, offset 0).
Pixels are invalid where they equal the file's nodata / fill value (else the registry's nodata),
are not finite, or lie outside the band's physical range (`eofm.data.validity`).

`Cube.read` reads exactly the window (GDAL: a windowed read; Zarr: the chunks it overlaps);
`Cube.data` is the whole cube as a dask array in `CHUNK` x `CHUNK` chunks, for whole-scene work.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.transform
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from eofm import sensors as sensors_lib
from eofm.data import raster, validity
from eofm.data.spec import SensorSpec, image_and_mask

XARRAY_SUFFIXES = (".nc", ".nc4", ".zarr")
SPATIAL_DIMS = (("y", "x"), ("lat", "lon"), ("latitude", "longitude"))  # (rows, columns)
CHUNK = 512
READ_ERRORS = (rasterio.errors.RasterioError, OSError, ValueError, ImportError, RuntimeError)

# A band number closing a product's band name: "sur_refl_b01", "band_7", "b31".
_BAND_NUMBER = re.compile(r"(?:^|_)b(?:and)?_?0*(\d{1,2})$", re.IGNORECASE)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def band_nodata(spec: SensorSpec, file_nodata: Sequence[float | None]) -> list[float | None]:
    """Per-band nodata: each file's own tag when it has one, else the registry's value."""
    return [
        tag if tag is not None else band.nodata
        for tag, band in zip(file_nodata, spec.sensor_info.bands, strict=True)
    ]


def file_band_name(name: str, sensor: sensors_lib.Sensor) -> str | None:
    """Registry name of a band as a file spells it, or None.

    A registry name or alias (any case) is taken as is; otherwise a name ending in a band number
    ("sur_refl_b01", "band_7") is the band "b01" / "b7" of `sensor` (any case), if it has one.
    """
    candidates = [name]
    match = _BAND_NUMBER.search(name)
    if match is not None:
        number = int(match.group(1))
        candidates += [f"b{number:02d}", f"b{number}"]
    for candidate in candidates:
        try:
            return sensor.band(candidate).name
        except sensors_lib.UnknownBandError:
            continue
    return None


def is_xarray_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a NetCDF file or Zarr store (by its suffix), not a GDAL raster."""
    return os.path.splitext(os.fspath(path).rstrip("/"))[1].lower() in XARRAY_SUFFIXES


@dataclasses.dataclass(frozen=True)
class Storage:
    """Where the bands of an xarray cube are; empty for a GDAL raster.

    `band_dim` set: every band is a slice of the one `[band, y, x]` variable `variables[0]`.
    Otherwise `variables[i]` is the 2-D variable holding file band i.
    """

    variables: tuple[str, ...] = ()
    band_dim: str | None = None
    dims: tuple[str, str] = ("y", "x")  # (rows, columns)


@dataclasses.dataclass(frozen=True)
class Cube:
    """A lazily opened scene or cube; holds metadata only (it pickles cheaply).

    Attributes:
      path: the file or store.
      spec: the sensor and the bands `read` yields, in channel order.
      height, width: the pixel grid's size.
      crs: its CRS, or None when the file has none.
      transform: affine map from (column, row) pixel corners to CRS coordinates (identity when
        the file has none).
      file_bands: registry names of every band of the file, in file order.
      file_nodata: the nodata / fill tag of every file band (None: untagged).
      files: every file the reads touch (a VRT and its sources), for fingerprints.
      storage: where the bands sit in a NetCDF / Zarr cube.
    """

    path: str
    spec: SensorSpec
    height: int
    width: int
    crs: CRS | None
    transform: Affine
    file_bands: tuple[str, ...]
    file_nodata: tuple[float | None, ...]
    files: tuple[str, ...]
    storage: Storage = Storage()

    @property
    def channels(self) -> list[int]:
        """Index in `file_bands` of each band of `spec`."""
        return [self.file_bands.index(b) for b in self.spec.bands]

    @property
    def nodata(self) -> list[float | None]:
        """Nodata of each band of `spec`: the file's tag, else the registry's value."""
        return band_nodata(self.spec, [self.file_nodata[c] for c in self.channels])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the grid in CRS units."""
        return rasterio.transform.array_pixel_range(self.height, self.width, self.transform)

    def window_transform(self, rows: slice, cols: slice) -> Affine:
        """The affine transform of the window `rows` x `cols` (its top-left pixel corner)."""
        return self.transform @ Affine.translation(cols.start, rows.start)

    def select(self, bands: Sequence[str]) -> Cube:
        """The same cube yielding `bands` (registry names or aliases), in this order."""
        try:
            spec = SensorSpec(self.spec.sensor, tuple(bands))
        except sensors_lib.UnknownBandError as e:
            raise ValueError(f"{self.path}: {e}") from None
        missing = [b for b in spec.bands if b not in self.file_bands]
        if missing:
            raise ValueError(
                f"{self.path}: bands {missing} of {self.spec.sensor} are not in the file (it has"
                f" {', '.join(self.file_bands)})"
            )
        return dataclasses.replace(self, spec=spec)

    @functools.cached_property
    def _lazy_bands(self) -> xr.DataArray:
        """The bands of `spec` as a lazily indexed DataArray [band, y, x] of raw file values:
        indexing it reads exactly the indexed window."""
        try:
            if self.storage.variables:
                bands = _open_xarray_bands(self.path, self.storage, self.channels)
            else:
                bands = _open_raster_bands(self.path, self.channels)
        except READ_ERRORS as e:
            raise raster.RasterReadError(f"{self.path}: cannot open: {e}") from e
        return bands.assign_coords(band=list(self.spec.bands))

    @property
    def data(self) -> xr.DataArray:
        """The bands of `spec` as a dask-backed DataArray [band, y, x] of raw file values in
        chunks of `CHUNK` x `CHUNK` pixels (band coordinate: the registry names), for whole-scene
        work; nothing is read until it is computed."""
        return self._lazy_bands.chunk({"band": -1, "y": CHUNK, "x": CHUNK})

    def read(
        self, rows: slice, cols: slice, *, key: str = "image"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reads the window `rows` x `cols` of the grid, and only that.

        Parts of the window outside the grid (past its edges, or before row / column 0) are
        invalid zeros, so the result always has the requested size.

        Args:
          rows, cols: pixel ranges `slice(start, stop)` with start < stop.
          key: the sample key named by `OutOfRangeWarning`s.
        Returns:
          (f32[h, w, C] in registry units with invalid pixels 0, bool[h, w, C] valid), C the
          bands of `spec`.
        """
        (r0, r1), (c0, c1) = (
            _pixel_range(rows, "rows", self.path),
            _pixel_range(cols, "cols", self.path),
        )
        inner_rows = slice(max(r0, 0), min(r1, self.height))
        inner_cols = slice(max(c0, 0), min(c1, self.width))
        where = (
            f"{self.path} (rows {inner_rows.start}:{inner_rows.stop},"
            f" columns {inner_cols.start}:{inner_cols.stop})"
        )
        image = np.zeros((r1 - r0, c1 - c0, len(self.spec.bands)), np.float32)
        valid = np.zeros(image.shape, bool)
        overlaps = inner_rows.start < inner_rows.stop and inner_cols.start < inner_cols.stop
        if overlaps and self.spec.bands:
            array = self._read_raw(inner_rows, inner_cols, where)
            inside = (
                slice(inner_rows.start - r0, inner_rows.stop - r0),
                slice(inner_cols.start - c0, inner_cols.stop - c0),
            )
            image[inside], valid[inside] = image_and_mask(array, self.nodata, where=where)
            validity.mask_out_of_range(image, valid, self.spec, key=key, where=where)
        return image, valid

    def _read_raw(self, rows: slice, cols: slice, where: str) -> np.ndarray:
        """[h, w, C] raw values of a window inside the grid."""
        try:
            window = self._lazy_bands.isel(y=rows, x=cols).values
        except READ_ERRORS as e:
            raise raster.RasterReadError(f"{where}: corrupt or truncated data: {e}") from e
        return np.moveaxis(window, 0, -1)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lazy_bands", None)  # An open file: each process opens its own.
        return state


def open_cube(
    path: str | os.PathLike,
    *,
    sensor: str,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
) -> Cube:
    """Opens a scene or cube lazily: reads its metadata, never its pixels.

    Args:
      path: a GDAL raster (GeoTIFF, COG, VRT), a NetCDF file or a Zarr store.
      sensor: registry name of the sensor (`eofm.sensors`).
      bands: the bands `read` yields, in this order (default: the file's, in file order).
      file_bands: names of the file's bands in file order, for a raster without band descriptions
        or a `[band, y, x]` variable without band names.
    Raises:
      raster.RasterReadError: the file cannot be opened (names the file, and the package to
        install for NetCDF-4).
      ValueError: names the file and what is wrong (unknown bands, with those it has; a wrong
        count of `file_bands`; missing y/x dims; scaled values).
    """
    path = os.fspath(path)
    info = sensors_lib.get_sensor(sensor)
    if is_xarray_file(path):
        cube = _xarray_cube(path, info, file_bands)
    else:
        cube = _raster_cube(path, info, file_bands)
    return cube.select(bands if bands is not None else cube.file_bands)


def _pixel_range(index: slice, name: str, path: str) -> tuple[int, int]:
    if not (
        isinstance(index, slice)
        and isinstance(index.start, (int, np.integer))
        and isinstance(index.stop, (int, np.integer))
        and index.step in (None, 1)
        and index.start < index.stop
    ):
        raise ValueError(
            f"{path}: {name} must be slice(start, stop) with start < stop, not {index}"
        )
    return int(index.start), int(index.stop)


def _check_unscaled(path: str, band: str, scale: float, offset: float) -> None:
    """Values must be stored in the registry's units, not as scaled integers."""
    if (scale, offset) != (1.0, 0.0):
        raise ValueError(
            f"{path} (band {band}): stores values with scale {scale} and offset {offset}; store"
            " them in the registry's units (scale 1, offset 0)"
        )


def _resolve_file_bands(
    path: str, names: Sequence[Any], sensor: sensors_lib.Sensor, how: str
) -> tuple[str, ...]:
    """Registry names of the file's bands, named by `how` ("descriptions", "file_bands", ...)."""
    resolved = []
    for i, name in enumerate(names, 1):
        band = file_band_name(str(name), sensor) if name else None
        if band is None:
            raise ValueError(
                f"{path}: band {i} ({name!r}, from {how}) names no band of {sensor.name}"
                f" ({', '.join(sensor.band_names)}); pass file_bands=[...] naming the"
                f" {len(names)} bands in file order"
            )
        resolved.append(band)
    duplicates = sorted({b for b in resolved if resolved.count(b) > 1})
    if duplicates:
        raise ValueError(f"{path}: bands {duplicates} appear twice (from {how}: {list(names)})")
    return tuple(resolved)


def _check_file_bands_count(path: str, file_bands: Sequence[str] | None, count: int) -> None:
    if file_bands and len(file_bands) != count:
        raise ValueError(
            f"{path}: has {count} bands, but file_bands names {len(file_bands)}: {list(file_bands)}"
        )


# ---------------------------------------------------------------------------------------------
# GDAL rasters: GeoTIFF, COG, VRT


def _open_raster(path: str) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except READ_ERRORS as e:
        raise raster.RasterReadError(f"{path}: cannot open raster: {e}") from e


def _raster_cube(path: str, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None) -> Cube:
    with _open_raster(path) as f:
        _check_file_bands_count(path, file_bands, f.count)
        names, how = (file_bands, "file_bands") if file_bands else (f.descriptions, "descriptions")
        bands = _resolve_file_bands(path, names, sensor, how)
        for band, scale, offset in zip(bands, f.scales, f.offsets):
            _check_unscaled(path, band, scale, offset)
        return Cube(
            path=path,
            spec=SensorSpec(sensor.name, bands),
            height=f.height,
            width=f.width,
            crs=f.crs,
            transform=f.transform,
            file_bands=bands,
            file_nodata=tuple(f.nodatavals),
            files=tuple(f.files),
        )


def _open_raster_bands(path: str, channels: Sequence[int]) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        data = rioxarray.open_rasterio(path, masked=False, cache=False)
    return data.isel(band=list(channels))


# ---------------------------------------------------------------------------------------------
# NetCDF files and Zarr stores


def _open_dataset(path: str) -> xr.Dataset:
    """A NetCDF file or Zarr store, lazily, with fill values and scale factors left undecoded and
    grid mappings (the CRS) as coordinates."""
    engine = "zarr" if path.lower().rstrip("/").endswith(".zarr") else None
    try:
        return xr.open_dataset(
            path, engine=engine, mask_and_scale=False, decode_times=False, decode_coords="all"
        )
    except READ_ERRORS as e:
        if _is_netcdf4(path):
            raise raster.RasterReadError(
                f"{path}: is NetCDF-4 (HDF5), which needs the h5netcdf or netCDF4 package"
                f" (pip install h5netcdf): {e}"
            ) from e
        raise raster.RasterReadError(f"{path}: cannot open as NetCDF/Zarr: {e}") from e


def _is_netcdf4(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _spatial_dims(path: str, var: xr.DataArray) -> tuple[str, str]:
    for dims in SPATIAL_DIMS:
        if set(dims) <= set(var.dims):
            return dims
    raise ValueError(
        f"{path}: variable {var.name!r} has dims {var.dims}, without a pair of spatial dims"
        f" {' or '.join(map(str, SPATIAL_DIMS))} (rows, columns); rename them"
    )


def _fill_value(attrs: Mapping[str, Any]) -> float | None:
    value = attrs.get("_FillValue", attrs.get("missing_value"))
    return None if value is None else float(np.asarray(value).ravel()[0])


def _xarray_cube(path: str, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None) -> Cube:
    with _open_dataset(path) as ds:
        cubes = [name for name, var in ds.data_vars.items() if var.ndim == 3]
        if len(cubes) > 1:
            raise ValueError(
                f"{path}: holds several 3-D variables {cubes}; keep one [band, y, x] variable"
            )
        if cubes:
            var, storage, bands = _band_variable(path, ds[cubes[0]], sensor, file_bands)
            band_vars = [var] * len(bands)
        else:
            var, storage, bands = _band_per_variable(path, ds, sensor, file_bands)
            band_vars = [ds[v] for v in storage.variables]
        for band, band_var in zip(bands, band_vars):
            attrs = band_var.attrs
            _check_unscaled(
                path, band, attrs.get("scale_factor", 1.0), attrs.get("add_offset", 0.0)
            )
        rows, cols = storage.dims
        crs, transform = _georeference(var, rows, cols)
        return Cube(
            path=path,
            spec=SensorSpec(sensor.name, bands),
            height=var.sizes[rows],
            width=var.sizes[cols],
            crs=crs,
            transform=transform,
            file_bands=bands,
            file_nodata=tuple(_fill_value(v.attrs) for v in band_vars),
            files=(path,),
            storage=storage,
        )


def _band_variable(
    path: str, var: xr.DataArray, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None
) -> tuple[xr.DataArray, Storage, tuple[str, ...]]:
    """The one [band, y, x] variable: bands named by file_bands, the band coordinate (when it
    holds names) or the `long_name` list rioxarray writes."""
    dims = _spatial_dims(path, var)
    (band_dim,) = [d for d in var.dims if d not in dims]
    count = var.sizes[band_dim]
    _check_file_bands_count(path, file_bands, count)
    coordinate = var.coords[band_dim].values.tolist() if band_dim in var.coords else []
    long_name = var.attrs.get("long_name")
    if file_bands:
        names, how = list(file_bands), "file_bands"
    elif coordinate and all(isinstance(c, str) for c in coordinate):
        names, how = coordinate, f"the {band_dim!r} coordinate"
    elif isinstance(long_name, (list, tuple)) and len(long_name) == count:
        names, how = list(long_name), f"the long_name of {var.name!r}"
    else:
        raise ValueError(
            f"{path}: the {count} bands of {var.name!r} are not named (band coordinate"
            f" {coordinate}); pass file_bands=[...] naming them in order"
        )
    bands = _resolve_file_bands(path, names, sensor, how)
    return var, Storage((str(var.name),), band_dim, dims), bands


def _band_per_variable(
    path: str, ds: xr.Dataset, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None
) -> tuple[xr.DataArray, Storage, tuple[str, ...]]:
    """Every 2-D variable whose name names a band is that band; other variables are ignored."""
    if file_bands:
        raise ValueError(
            f"{path}: file_bands names the bands of a raster or of a [band, y, x] variable; here"
            " each 2-D variable is named after its band"
        )
    variables = [
        str(name)
        for name, var in ds.data_vars.items()
        if var.ndim == 2 and file_band_name(str(name), sensor)
    ]
    if not variables:
        raise ValueError(
            f"{path}: no [band, y, x] variable, and no 2-D variable names a band of {sensor.name}"
            f" ({', '.join(sensor.band_names)}); variables: {list(ds.data_vars)}"
        )
    shapes = {name: ds[name].sizes for name in variables}
    if len({tuple(s.items()) for s in shapes.values()}) != 1:
        raise ValueError(f"{path}: band variables differ in shape: {shapes}")
    dims = _spatial_dims(path, ds[variables[0]])
    bands = _resolve_file_bands(path, variables, sensor, "variable names")
    return ds[variables[0]], Storage(tuple(variables), None, dims), bands


def _georeference(var: xr.DataArray, rows: str, cols: str) -> tuple[CRS | None, Affine]:
    """(CRS or None, transform) from the grid mapping and the row / column coordinates; the
    identity without coordinates."""
    spatial = var.rio.set_spatial_dims(x_dim=cols, y_dim=rows)
    return spatial.rio.crs, spatial.rio.transform()


def _open_xarray_bands(path: str, storage: Storage, channels: Sequence[int]) -> xr.DataArray:
    rows, cols = storage.dims
    ds = _open_dataset(path)
    if storage.band_dim is not None:
        data = ds[storage.variables[0]].isel({storage.band_dim: list(channels)})
        data = data.rename({storage.band_dim: "band"})
    else:
        data = xr.concat([ds[storage.variables[c]] for c in channels], dim="band")
    data = data.transpose("band", rows, cols)
    return data if (rows, cols) == ("y", "x") else data.rename({rows: "y", cols: "x"})
