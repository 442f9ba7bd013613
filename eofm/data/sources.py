"""grain random-access sources over raster files.

- `GeoTiffSource`: one multi-band GeoTIFF/COG per example (EuroSAT-MS, NAIP tiles, ...).
- `BandFilesSource`: one single-band file per band, several sensors per example (SSL4EO-S12,
  BigEarthNet's original folders), resampled onto the finest band's grid with a named method.
- `ModisSource`: MODIS band stacks in GeoTIFF, NetCDF or Zarr, bands named by the files, whole or
  cut into square patches.
- `CubeWindowSource`: square windows at random (seeded) positions of one scene or cube larger
  than memory (`eofm.data.cube`), for pretraining.

All yield samples as described in `eofm.data.spec`: `{key: f32[H, W, C], key_valid: bool[H, W, C],
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
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eofm import sensors as sensors_lib
from eofm.data import cube as cube_lib
from eofm.data import raster, validity
from eofm.data.cube import band_nodata
from eofm.data.spec import SensorSpec, check_band_count, image_and_mask, valid_key


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


class ModisSource:
    """MODIS band stacks (GeoTIFF, NetCDF, Zarr), whole or cut into square patches.

    Each file is read as an `eofm.data.cube.Cube`. Band names: a GeoTIFF's band descriptions (or
    `file_bands`); in NetCDF/Zarr, the band coordinate of a [band, y, x] variable, or each 2-D
    variable named after a band. A name is a registry name or alias, or ends in the MODIS band
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
        cubes = [cube_lib.open_cube(p, sensor=sensor, file_bands=file_bands) for p in self.files]
        if bands is None:
            bands = [b for b in info.band_names if b in cubes[0].file_bands]
        spec = SensorSpec(sensor, tuple(bands))
        if not missing_bands_invalid:
            for cube in cubes:
                missing = [b for b in spec.bands if b not in cube.file_bands]
                if missing:
                    raise ValueError(
                        f"{cube.path}: lacks bands {missing} of {sensor} (it has"
                        f" {', '.join(cube.file_bands)}); pass missing_bands_invalid=True to yield"
                        " them as invalid"
                    )
        self._cubes = [
            cube.select([b for b in spec.bands if b in cube.file_bands]) for cube in cubes
        ]
        self.specs = {key: spec}
        self.key = key
        self.patch_size = patch_size
        self._patches = [
            (i, y0, x0)
            for i, cube in enumerate(self._cubes)
            for y0 in range(0, cube.height, patch_size or cube.height)
            for x0 in range(0, cube.width, patch_size or cube.width)
        ]

    def __len__(self) -> int:
        return len(self._patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file_index, y0, x0 = self._patches[index]
        cube = self._cubes[file_index]
        h, w = (self.patch_size,) * 2 if self.patch_size else (cube.height, cube.width)
        present, present_valid = cube.read(slice(y0, y0 + h), slice(x0, x0 + w), key=self.key)
        spec = self.specs[self.key]
        channels = [spec.bands.index(b) for b in cube.spec.bands]
        image = np.zeros((h, w, len(spec.bands)), np.float32)
        valid = np.zeros(image.shape, bool)
        image[..., channels], valid[..., channels] = present, present_valid
        sample_id = f"{cube.path}@{y0},{x0}" if self.patch_size else cube.path
        return {self.key: image, valid_key(self.key): valid, "id": sample_id}

    def reads_from(self) -> dict[str, Any]:
        return {"files": list(self.files), "patch_size": self.patch_size}

    def __repr__(self) -> str:
        return (
            f"ModisSource({len(self)} examples from {len(self.files)} files,"
            f" {self.specs[self.key]}, patch_size={self.patch_size})"
        )


# ---------------------------------------------------------------------------------------------
# Random windows of one large scene or cube


class CubeWindowSource:
    """`num_windows` square windows of one lazily read cube, at seeded random positions.

    Item i is the window at a position drawn from `np.random.default_rng([seed, i])`, so it is the
    same in every process and run. A window whose fraction of valid values (over pixels and bands)
    is below `min_valid_fraction` is redrawn from the same generator, at most `max_draws` times.
    A cube smaller than `window` yields windows padded with invalid zeros.

    Item: `{key: f32[window, window, C], key_valid: bool[...], "id": "<path>:<row>:<col>"}`
    (row, col: the window's top-left pixel).
    """

    max_draws = 32

    def __init__(
        self,
        cube: cube_lib.Cube,
        *,
        window: int,
        num_windows: int,
        seed: int = 0,
        min_valid_fraction: float = 0.5,
        key: str = "image",
    ):
        if window < 1 or num_windows < 1:
            raise ValueError(
                f"{cube.path}: window ({window}) and num_windows ({num_windows}) must be positive"
            )
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ValueError(
                f"{cube.path}: min_valid_fraction must lie in [0, 1], not {min_valid_fraction}"
            )
        self.cube = cube
        self.window, self.num_windows, self.seed = window, num_windows, seed
        self.min_valid_fraction = min_valid_fraction
        self.specs = {key: cube.spec}
        self.key = key

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"{self!r}: index {index} outside [0, {self.num_windows})")
        rng = np.random.default_rng([self.seed, index])
        best = 0.0
        for _ in range(self.max_draws):
            row, col = self._position(rng)
            rows, cols = slice(row, row + self.window), slice(col, col + self.window)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image, valid = self.cube.read(rows, cols, key=self.key)
            fraction = float(valid.mean())
            if fraction >= self.min_valid_fraction:
                for w in caught:  # Only the kept window's warnings (out-of-range counts).
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                sample_id = f"{self.cube.path}:{row}:{col}"
                return {self.key: image, valid_key(self.key): valid, "id": sample_id}
            best = max(best, fraction)
        raise ValueError(
            f"{self.cube.path}: {self.max_draws} windows of {self.window} px drawn for item {index}"
            f" (seed {self.seed}) had at most {best:.1%} valid values, below min_valid_fraction"
            f" {self.min_valid_fraction:.1%}"
        )

    def _position(self, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left (row, col) of a window lying inside the grid where it fits."""
        row = rng.integers(0, max(self.cube.height - self.window, 0) + 1)
        col = rng.integers(0, max(self.cube.width - self.window, 0) + 1)
        return int(row), int(col)

    def reads_from(self) -> dict[str, Any]:
        return {
            "files": list(self.cube.files),
            "window": self.window,
            "num_windows": self.num_windows,
            "seed": self.seed,
            "min_valid_fraction": self.min_valid_fraction,
        }

    def __repr__(self) -> str:
        return (
            f"CubeWindowSource({self.num_windows} windows of {self.window} px from"
            f" {self.cube.path}, {self.cube.spec}, seed={self.seed})"
        )
