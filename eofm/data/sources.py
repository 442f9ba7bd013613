"""grain random-access sources over raster files.

- `GeoTiffSource`: one multi-band GeoTIFF/COG per example (EuroSAT-MS, NAIP tiles, ...).
- `BandFilesSource`: one single-band file per band, several sensors per example (SSL4EO-S12,
  BigEarthNet's original folders), resampled onto the finest band's grid with a named method.
- `ModisSource`: MODIS band stacks in GeoTIFF, NetCDF or Zarr, bands named by the files, whole or
  cut into square patches.

Both yield samples as described in `eofm.data.spec`: `{key: f32[H, W, C], key_valid: bool[H, W, C],
"id": str, ...labels}`, and carry `specs: {key: SensorSpec}` saying which band is in which channel.
Values outside a band's physical range are invalid like nodata (`eofm.data.validity`). Sources hold
only paths and small metadata, so they pickle cheaply into grain worker processes.

Every source says what it reads with `reads_from()`: a JSON-able dict with the list of "files" (in
example order) and, where the files alone do not tell, what else selects the examples. Prepared
data records it (`eofm.data.arrayrecord`) so that it is never reused for other inputs.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
import xarray as xr

from eofm import sensors as sensors_lib
from eofm.data import raster, validity
from eofm.data.spec import SensorSpec, check_band_count, image_and_mask, valid_key


def band_nodata(spec: SensorSpec, file_nodata: Sequence[float | None]) -> list[float | None]:
    """Per-band nodata: each file's own tag when it has one, else the registry's value."""
    return [
        tag if tag is not None else band.nodata
        for tag, band in zip(file_nodata, spec.sensor_info.bands, strict=True)
    ]


class GeoTiffSource:
    """One multi-band raster file per example.

    Args:
      files: raster paths, one per example.
      spec: the sensor and the bands to yield, in the order wanted.
      key: sample key of the image (e.g. "s2").
      file_bands: names of the bands as stored in the files, in file order (default: `spec.bands`).
        `spec.bands` must be a subset; they are selected and reordered by name.
      labels: optional per-example labels, yielded under "label".
      label_names: optional class names, exposed as `label_names["label"]`.
      dn_offset: subtracted from every value after reading (Sentinel-2 baseline >= 04.00: 1000).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        spec: SensorSpec,
        *,
        key: str = "image",
        file_bands: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        label_names: Sequence[str] | None = None,
        dn_offset: float = 0.0,
    ):
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(labels)} labels for {len(files)} files")
        self.files = [os.fspath(f) for f in files]
        self.specs = {key: spec}
        self.key = key
        sensor = sensors_lib.get_sensor(spec.sensor)
        self.file_bands = sensor.resolve(tuple(file_bands or spec.bands))
        missing = [b for b in spec.bands if b not in self.file_bands]
        if missing:
            raise ValueError(
                f"bands {missing} of {spec.sensor} are not in the files"
                f" (file bands: {', '.join(self.file_bands)})"
            )
        self._select = [self.file_bands.index(b) for b in spec.bands]
        self.labels = None if labels is None else list(labels)
        self.label_names = None if label_names is None else {"label": list(label_names)}
        self.dn_offset = dn_offset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        array, file_nodata = raster.read_raster(path, expected_bands=len(self.file_bands))
        spec = self.specs[self.key]
        array = array[..., self._select]
        nodata = band_nodata(spec, [file_nodata] * len(spec.bands))
        image, valid = image_and_mask(array, nodata, where=path)
        image[valid] -= self.dn_offset
        validity.mask_out_of_range(image, valid, spec, key=self.key, where=path)
        sample = {self.key: image, valid_key(self.key): valid, "id": path}
        if self.labels is not None:
            sample["label"] = np.asarray(self.labels[index])
        return sample

    def reads_from(self) -> dict[str, list[str]]:
        return {"files": list(self.files)}

    def __repr__(self) -> str:
        return f"GeoTiffSource({len(self)} files, {self.specs[self.key]})"


@dataclasses.dataclass(frozen=True)
class BandFilesItem:
    """One example of a `BandFilesSource`: per sample key, one file per band."""

    id: str
    files: Mapping[str, Mapping[str, str]]  # key -> band -> path
    dn_offset: Mapping[str, float] = dataclasses.field(default_factory=dict)  # key -> offset
    label: Any = None


def find_band_files(
    folder: str | os.PathLike, spec: SensorSpec, pattern: str = "{band}.tif"
) -> dict[str, str]:
    """Finds one file per band of `spec` in `folder`.

    `pattern` is a glob with `{band}` standing for the band's name as the files spell it; the
    canonical name and every alias of the band are tried (so "B1.tif" and "*_B01.tif" both match
    Sentinel-2 B01). Raises FileNotFoundError naming the folder and the band.
    """
    out = {}
    for band in spec.sensor_info.bands:
        matches = []
        for name in (band.name, *band.aliases):
            matches = sorted(
                glob.glob(os.path.join(glob.escape(os.fspath(folder)), pattern.format(band=name)))
            )
            if matches:
                break
        if len(matches) != 1:
            found = "no file" if not matches else f"{len(matches)} files"
            raise FileNotFoundError(
                f"{folder}: {found} for band {band.name} of {spec.sensor} (pattern {pattern!r})"
            )
        out[band.name] = matches[0]
    return out


class BandFilesSource:
    """Examples made of single-band files, one or more sensors each.

    Bands of one sensor are resampled onto the grid of its finest band (`resampling`, a GDAL name);
    different sensors keep their own grids.
    """

    def __init__(
        self,
        items: Sequence[BandFilesItem],
        specs: Mapping[str, SensorSpec],
        *,
        resampling: str = "bilinear",
        label_names: Mapping[str, Sequence[str]] | None = None,
    ):
        raster.resampling_method(resampling)  # Fails early on a typo.
        self.items = list(items)
        self.specs = dict(specs)
        self.resampling = resampling
        self.label_names = (
            None if label_names is None else {k: list(v) for k, v in label_names.items()}
        )
        for item in self.items:
            for key, spec in self.specs.items():
                if list(item.files.get(key, {})) != list(spec.bands):
                    raise ValueError(
                        f"{item.id}: files for {key!r} are for bands"
                        f" {list(item.files.get(key, {}))}, expected {list(spec.bands)}"
                    )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        sample: dict[str, Any] = {"id": item.id}
        for key, spec in self.specs.items():
            array, nodata = raster.read_band_files(item.files[key], resampling=self.resampling)
            check_band_count(array, spec, where=item.id)
            image, valid = image_and_mask(
                array, band_nodata(spec, list(nodata.values())), where=f"{item.id} ({key})"
            )
            image[valid] -= item.dn_offset.get(key, 0.0)
            band_files = list(item.files[key].values())  # In the order of spec.bands.
            validity.mask_out_of_range(image, valid, spec, key=key, where=band_files)
            sample[key] = image
            sample[valid_key(key)] = valid
        if item.label is not None:
            sample["label"] = np.asarray(item.label)
        return sample

    def reads_from(self) -> dict[str, list[str]]:
        return {
            "files": [
                os.fspath(path)
                for item in self.items
                for key in self.specs
                for path in item.files[key].values()
            ]
        }

    def __repr__(self) -> str:
        return f"BandFilesSource({len(self)} examples, {self.specs}, resampling={self.resampling})"


# ---------------------------------------------------------------------------------------------
# MODIS band stacks

MODIS_SENSORS = ("modis_toa", "modis_land")
BAND_STACK_SUFFIXES = (".tif", ".tiff", ".nc", ".nc4", ".zarr")
_XARRAY_SUFFIXES = (".nc", ".nc4", ".zarr")
# A MODIS band number closing a product's band name: "sur_refl_b01", "band_7", "b31".
_MODIS_BAND_NUMBER = re.compile(r"(?:^|_)b(?:and)?_?0*(\d{1,2})$", re.IGNORECASE)
_READ_ERRORS = (rasterio.errors.RasterioError, OSError, ValueError, ImportError, RuntimeError)


def modis_band_name(name: str, sensor: sensors_lib.Sensor) -> str | None:
    """Registry name of a band as a file spells it, or None.

    A registry name or alias (any case) is taken as is; otherwise a name ending in a MODIS band
    number ("sur_refl_b01", "band_21") is that band of `sensor`, if it has one.
    """
    try:
        return sensor.band(name).name
    except sensors_lib.UnknownBandError:
        pass
    match = _MODIS_BAND_NUMBER.search(name)
    if match is None:
        return None
    numbered = f"b{int(match.group(1)):02d}"
    return numbered if numbered in sensor.band_names else None


def _band_stack_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The band-stack files of a folder (sorted) or of a list of paths."""
    if isinstance(files, (str, os.PathLike)):
        folder = os.fspath(files)
        if not os.path.isdir(folder) or folder.lower().endswith(".zarr"):
            files = [folder]
        else:
            files = sorted(
                os.path.join(folder, name)
                for name in os.listdir(folder)
                if os.path.splitext(name)[1].lower() in BAND_STACK_SUFFIXES
            )
            if not files:
                raise FileNotFoundError(
                    f"{folder}: no band stack (suffixes {', '.join(BAND_STACK_SUFFIXES)})"
                )
    paths = [os.fspath(f) for f in files]
    unsupported = [p for p in paths if os.path.splitext(p)[1].lower() not in BAND_STACK_SUFFIXES]
    if unsupported:
        raise ValueError(
            f"{unsupported[0]}: not a band stack; expected one of {', '.join(BAND_STACK_SUFFIXES)}"
        )
    if not paths:
        raise ValueError("no band-stack files given")
    return paths


def _is_xarray_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in _XARRAY_SUFFIXES


def _open_xarray(path: str) -> xr.Dataset:
    """A NetCDF file or Zarr store, lazily, with fill values and scale factors left undecoded."""
    engine = "zarr" if path.lower().endswith(".zarr") else None
    try:
        return xr.open_dataset(path, engine=engine, mask_and_scale=False, decode_times=False)
    except _READ_ERRORS as e:
        raise raster.RasterReadError(f"{path}: cannot open as NetCDF/Zarr: {e}") from e


def _open_geotiff(path: str) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except _READ_ERRORS as e:
        raise raster.RasterReadError(f"{path}: cannot open raster: {e}") from e


def _check_unscaled(path: str, band: str, scale: float, offset: float) -> None:
    """Values must be stored in the registry's units, not as scaled integers."""
    if (scale, offset) != (1.0, 0.0):
        raise ValueError(
            f"{path} (band {band}): stores values with scale {scale} and offset {offset}; store"
            " them in the registry's units (scale 1, offset 0)"
        )


@dataclasses.dataclass(frozen=True)
class _StackLayout:
    """Registry band names of a band stack's file bands (or variables), and its [H, W]."""

    bands: tuple[str, ...]
    shape: tuple[int, int]
    variables: tuple[str, ...] = ()  # NetCDF/Zarr: the variable holding each band.


def _resolve_file_bands(
    path: str, names: Sequence[str | None], sensor: sensors_lib.Sensor, how: str
) -> tuple[str, ...]:
    resolved = []
    for i, name in enumerate(names, 1):
        band = modis_band_name(name, sensor) if name else None
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


def _geotiff_layout(
    path: str, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None
) -> _StackLayout:
    with _open_geotiff(path) as f:
        names, how = (file_bands, "file_bands") if file_bands else (f.descriptions, "descriptions")
        if len(names) != f.count:
            raise ValueError(f"{path}: has {f.count} bands, but {how} names {len(names)}")
        bands = _resolve_file_bands(path, names, sensor, how)
        for band, scale, offset in zip(bands, f.scales, f.offsets):
            _check_unscaled(path, band, scale, offset)
        return _StackLayout(bands, (f.height, f.width))


def _xarray_layout(path: str, sensor: sensors_lib.Sensor) -> _StackLayout:
    """Every 2-D variable whose name names a band is that band; other variables are ignored."""
    with _open_xarray(path) as ds:
        variables = [
            name
            for name, var in ds.data_vars.items()
            if var.ndim == 2 and modis_band_name(str(name), sensor)
        ]
        if not variables:
            raise ValueError(
                f"{path}: no 2-D variable names a band of {sensor.name}"
                f" ({', '.join(sensor.band_names)}); variables: {list(ds.data_vars)}"
            )
        shapes = {name: ds[name].shape for name in variables}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{path}: band variables differ in shape: {shapes}")
        for name in variables:
            attrs = ds[name].attrs
            _check_unscaled(
                path, name, attrs.get("scale_factor", 1.0), attrs.get("add_offset", 0.0)
            )
        bands = _resolve_file_bands(path, [str(v) for v in variables], sensor, "variable names")
        return _StackLayout(bands, shapes[variables[0]], tuple(map(str, variables)))


def _fill_value(attrs: Mapping[str, Any]) -> float | None:
    value = attrs.get("_FillValue", attrs.get("missing_value"))
    return None if value is None else float(np.asarray(value).ravel()[0])


def _read_window(
    path: str, layout: _StackLayout, rows: slice, cols: slice
) -> tuple[np.ndarray, list[float | None]]:
    """(array [h, w, C] of the file's bands in file order, each band's nodata tag or None)."""
    try:
        if layout.variables:
            with _open_xarray(path) as ds:
                vars_ = [ds[v] for v in layout.variables]
                array = np.stack([v[rows, cols].values for v in vars_], axis=-1)
                return array, [_fill_value(v.attrs) for v in vars_]
        with _open_geotiff(path) as f:
            window = rasterio.windows.Window.from_slices(rows, cols)
            return np.moveaxis(f.read(window=window), 0, -1), list(f.nodatavals)
    except _READ_ERRORS as e:
        raise raster.RasterReadError(
            f"{path} (rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}): corrupt"
            f" or truncated data: {e}"
        ) from e


class ModisSource:
    """MODIS band stacks (GeoTIFF, NetCDF, Zarr), whole or cut into square patches.

    Band names: a GeoTIFF's band descriptions (or `file_bands`); in NetCDF/Zarr, each 2-D variable
    named after a band is that band. A name is a registry name or alias, or ends in the MODIS band
    number ("sur_refl_b01" is b01). Values must be in the registry units of `sensor`. Pixels equal
    to the file's fill value (else the registry's nodata), non-finite or outside the band's
    physical range are invalid.

    Args:
      files: a folder (its files and Zarr stores with a suffix in `BAND_STACK_SUFFIXES`, sorted),
        one file, or a list of files.
      sensor: "modis_toa" (Level-1B reflectance and brightness temperature) or "modis_land"
        (MOD09 surface reflectance x 10_000).
      bands: the bands to yield, in this order (default: the first file's, in registry order).
      file_bands: names of a GeoTIFF's bands in file order, for files without descriptions.
      patch_size: side of the square patches in pixels, tiling each file from its top-left corner;
        the last row and column of patches reach past the edge, and pixels beyond it are invalid.
        None yields every file whole.
      missing_bands_invalid: a band of `bands` that a file lacks is yielded invalid (0, mask False)
        instead of being an error.
      key: sample key of the image.
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        sensor: str = "modis_toa",
        bands: Sequence[str] | None = None,
        file_bands: Sequence[str] | None = None,
        patch_size: int | None = None,
        missing_bands_invalid: bool = False,
        key: str = "modis",
    ):
        if sensor not in MODIS_SENSORS:
            raise ValueError(f"ModisSource: sensor {sensor!r} is not one of {MODIS_SENSORS}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(
                f"ModisSource: patch_size must be a positive integer, not {patch_size}"
            )
        info = sensors_lib.get_sensor(sensor)
        self.files = _band_stack_files(files)
        self._layouts = [self._layout(path, info, file_bands) for path in self.files]
        if bands is None:
            first = self._layouts[0].bands
            bands = [b for b in info.band_names if b in first]
        spec = SensorSpec(sensor, tuple(bands))
        if not missing_bands_invalid:
            for path, layout in zip(self.files, self._layouts):
                missing = [b for b in spec.bands if b not in layout.bands]
                if missing:
                    raise ValueError(
                        f"{path}: lacks bands {missing} of {sensor} (it has"
                        f" {', '.join(layout.bands)}); pass missing_bands_invalid=True to yield"
                        " them as invalid"
                    )
        self.specs = {key: spec}
        self.key = key
        self.patch_size = patch_size
        self._patches = [
            (i, y0, x0)
            for i, layout in enumerate(self._layouts)
            for y0 in range(0, layout.shape[0], patch_size or layout.shape[0])
            for x0 in range(0, layout.shape[1], patch_size or layout.shape[1])
        ]

    @staticmethod
    def _layout(path: str, info: sensors_lib.Sensor, file_bands) -> _StackLayout:
        if not _is_xarray_file(path):
            return _geotiff_layout(path, info, file_bands)
        if file_bands:
            raise ValueError(
                f"{path}: file_bands names GeoTIFF bands; in NetCDF/Zarr the variable names name"
                " the bands"
            )
        return _xarray_layout(path, info)

    def __len__(self) -> int:
        return len(self._patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file_index, y0, x0 = self._patches[index]
        path, layout = self.files[file_index], self._layouts[file_index]
        h, w = (self.patch_size,) * 2 if self.patch_size else layout.shape
        spec = self.specs[self.key]
        present = [b for b in spec.bands if b in layout.bands]
        rows = slice(y0, min(y0 + h, layout.shape[0]))
        cols = slice(x0, min(x0 + w, layout.shape[1]))
        array, file_nodata = _read_window(path, layout, rows, cols)
        array = array[..., [layout.bands.index(b) for b in present]]
        nodata = band_nodata(
            SensorSpec(spec.sensor, tuple(present)),
            [file_nodata[layout.bands.index(b)] for b in present],
        )
        where = f"{path} (rows {y0}:{rows.stop}, columns {x0}:{cols.stop})"
        image = np.zeros((h, w, len(spec.bands)), np.float32)
        valid = np.zeros(image.shape, bool)
        channels = [spec.bands.index(b) for b in present]
        inside = (slice(0, rows.stop - y0), slice(0, cols.stop - x0), channels)
        image[inside], valid[inside] = image_and_mask(array, nodata, where=where)
        validity.mask_out_of_range(image, valid, spec, key=self.key, where=where)
        sample_id = f"{path}@{y0},{x0}" if self.patch_size else path
        return {self.key: image, valid_key(self.key): valid, "id": sample_id}

    def reads_from(self) -> dict[str, Any]:
        return {"files": list(self.files), "patch_size": self.patch_size}

    def __repr__(self) -> str:
        return (
            f"ModisSource({len(self)} examples from {len(self.files)} files,"
            f" {self.specs[self.key]}, patch_size={self.patch_size})"
        )
