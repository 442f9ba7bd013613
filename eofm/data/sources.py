"""grain random-access sources over raster files.

- `GeoTiffSource`: one multi-band GeoTIFF/COG per example (EuroSAT-MS, NAIP tiles, ...).
- `BandFilesSource`: one single-band file per band, several sensors per example (SSL4EO-S12,
  BigEarthNet's original folders), resampled onto the finest band's grid with a named method.

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
