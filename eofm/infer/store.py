"""A resumable Zarr v3 store of whole-scene outputs, written tile by tile.

Layout of the store (a directory):

  <variable>  [y, x, feature]  the blended outputs (float32, or an int class map), one chunk per
                               tile; never-written chunks read as nodata (NaN or the int nodata)
  valid       [y, x]           True where a computed window covered the cell
  tile_done   [tile_row, tile_col]  True once that tile's chunks are whole on disk (one chunk per
                               tile, written after the tile's data)

zarr writes every chunk to a temporary file and renames it, so a killed run leaves each chunk
either old or new, and a tile is marked done only after its data and mask are written: no tile
is recorded done that is not whole.

Completeness: until `finalize`, the group attribute `complete` is False and the store has no
consolidated metadata, so `xr.open_zarr(path, consolidated=True)` fails and
`xr.open_zarr(path, consolidated=False).attrs["complete"]` is False. `finalize` writes the
coordinates, the CRS (rioxarray's `spatial_ref`), the attributes, `complete = True` and, last,
the consolidated metadata; then `xr.open_zarr(path)` gives a dataset whose `rio.crs` and
`rio.transform()` place it on the map.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import affine
import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr

from eofm.infer.tiling import Tile

SETTINGS_ATTR = "eofm_scene_store"
VALID = "valid"
TILE_DONE = "tile_done"


class SceneStore:
    """Creates the store at `path` with its full shape and no data, or reopens it to resume.

    Args:
      path: the store's directory.
      height, width: the scene's size in px.
      features: F, the length of the feature axis.
      tile: the tile side T in px (a multiple of out_stride); one chunk per tile.
      fingerprint: a string naming everything that decides the values (model, encoder ref,
        window, stride, normalisation, ...): a store made with another one is not resumed.
      out_stride: p, px per output cell: the store holds ceil(H/p) x ceil(W/p) cells.
      dtype: "float32" (nodata NaN) or an integer dtype (then `nodata` is required).
      nodata: the value of uncovered cells of an integer store.
      variable: the name of the output variable.

    Raises:
      ValueError: `path` holds something else, or a store made with other settings (the error
        names each difference); nothing on disk is changed then.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        height: int,
        width: int,
        features: int,
        tile: int,
        fingerprint: str,
        out_stride: int = 1,
        dtype: str = "float32",
        nodata: int | None = None,
        variable: str = "prediction",
    ):
        self.path = Path(path)
        self.settings = _settings(
            height=height,
            width=width,
            features=features,
            tile=tile,
            fingerprint=fingerprint,
            out_stride=out_stride,
            dtype=dtype,
            nodata=nodata,
            variable=variable,
        )
        self.group = self._open_or_create()
        self._create_missing_arrays()

    # Geometry.

    @property
    def height(self) -> int:
        return self.settings["height"]

    @property
    def width(self) -> int:
        return self.settings["width"]

    @property
    def tile(self) -> int:
        return self.settings["tile"]

    @property
    def out_stride(self) -> int:
        return self.settings["out_stride"]

    @property
    def features(self) -> int:
        return self.settings["features"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.settings["dtype"])

    @property
    def nodata(self) -> float | int:
        """NaN for a float store, the given nodata for an integer one."""
        nodata = self.settings["nodata"]
        return np.nan if nodata is None else nodata

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, cols, F) of the output grid."""
        p = self.out_stride
        return math.ceil(self.height / p), math.ceil(self.width / p), self.features

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return math.ceil(self.height / self.tile), math.ceil(self.width / self.tile)

    # Writing.

    def write_tile(self, tile: Tile, values: np.ndarray, valid: np.ndarray) -> None:
        """Writes one tile's chunk, values [h, w, F] and valid bool[h, w] (`Tile.shape`), then
        records the tile done."""
        expected = tile.shape(self.out_stride)
        if values.shape != (*expected, self.features) or valid.shape != expected:
            raise ValueError(
                f"{self.path}: tile ({tile.row}, {tile.col}) needs values of shape "
                f"{(*expected, self.features)} and valid of shape {expected}, "
                f"got {values.shape} and {valid.shape}"
            )
        rows, cols = tile.cells(self.out_stride)
        self.group[self.settings["variable"]][rows, cols, :] = values.astype(self.dtype)
        self.group[VALID][rows, cols] = valid
        self.group[TILE_DONE][tile.row, tile.col] = True

    def read_tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """(values [h, w, F], valid bool[h, w]) of one tile as stored."""
        rows, cols = tile.cells(self.out_stride)
        return self.group[self.settings["variable"]][rows, cols, :], self.group[VALID][rows, cols]

    def done_tiles(self) -> set[tuple[int, int]]:
        """(row, col) of the tiles whose chunks are whole on disk."""
        done = self.group[TILE_DONE][...]
        return {(int(r), int(c)) for r, c in np.argwhere(done)}

    def finalize(
        self,
        crs: Any,
        transform: affine.Affine,
        *,
        feature_names: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes the map metadata once every tile is done: x/y coordinates of the cell centres,
        `spatial_ref` (CRS and GeoTransform, via rioxarray), the feature coordinate, `attrs`
        (model, encoder ref, what the features are) and `complete = True`; then, last, the
        consolidated metadata.

        Args:
          crs: anything `rio.write_crs` takes ("EPSG:32633", a rasterio or pyproj CRS).
          transform: the scene's pixel transform (north-up); cells of a token grid get it
            scaled by out_stride.
          feature_names: F names for the feature axis (default 0 .. F-1).
          attrs: JSON-serialisable attributes of the dataset.
        """
        missing = math.prod(self.tile_grid) - len(self.done_tiles())
        if missing:
            raise ValueError(f"{self.path}: {missing} tiles are not done yet; finalize after all")
        coords = self._coordinates(crs, transform, feature_names)
        coords.to_zarr(self.path, mode="a", zarr_format=3, consolidated=False)
        for name in (self.settings["variable"], VALID):
            self.group[name].attrs.update(
                {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
            )
        self.group.attrs.update({**(attrs or {}), "complete": True})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Consolidated metadata", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(str(self.path))

    # Internals.

    def _coordinates(
        self, crs: Any, transform: affine.Affine, feature_names: Sequence[str] | None
    ) -> xr.Dataset:
        """x, y (cell centres), feature and spatial_ref, as an xarray Dataset of coordinates."""
        if transform.b or transform.d:
            raise ValueError(
                f"{self.path}: transform {tuple(transform)[:6]} is rotated or sheared; only "
                "north-up transforms (b = d = 0) give x/y coordinates"
            )
        rows, cols, features = self.shape
        names = list(range(features)) if feature_names is None else list(feature_names)
        if len(names) != features:
            raise ValueError(
                f"{self.path}: {len(names)} feature_names given for {features} features"
            )
        cell = transform @ affine.Affine.scale(self.out_stride)
        x = cell.c + cell.a * (np.arange(cols) + 0.5)
        y = cell.f + cell.e * (np.arange(rows) + 0.5)
        feature = np.asarray(names, dtype=object if isinstance(names[0], str) else None)
        coords = xr.Dataset(coords={"y": y, "x": x, "feature": feature})
        return coords.rio.write_crs(crs).rio.write_transform(cell)

    def _open_or_create(self) -> zarr.Group:
        """The store's group: the existing one when its settings match, else a new one."""
        if not self.path.exists():
            return zarr.open_group(
                str(self.path),
                mode="w-",
                zarr_format=3,
                attributes={SETTINGS_ATTR: self.settings, "complete": False},
            )
        try:
            group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        except (OSError, ValueError) as e:  # zarr's errors are ValueErrors
            raise ValueError(f"{self.path} exists and is not a Zarr v3 group: {e}") from e
        existing = group.attrs.get(SETTINGS_ATTR)
        if existing is None:
            raise ValueError(f"{self.path} is a Zarr group but not a scene store (no settings)")
        differences = [
            f"{k}={existing.get(k)!r} on disk, {v!r} asked"
            for k, v in self.settings.items()
            if existing.get(k) != v
        ]
        if differences:
            raise ValueError(
                f"{self.path} holds a scene store made with other settings: "
                f"{'; '.join(differences)}. Resume with the same settings or use another path."
            )
        return group

    def _create_missing_arrays(self) -> None:
        """Creates the arrays a new (or interrupted-at-creation) store lacks, without data."""
        rows, cols, features = self.shape
        chunk = self.tile // self.out_stride
        arrays = {  # name: (shape, chunks, dtype, fill value, dimension names)
            self.settings["variable"]: (
                (rows, cols, features),
                (chunk, chunk, features),
                self.dtype,
                self.nodata,
                ("y", "x", "feature"),
            ),
            VALID: ((rows, cols), (chunk, chunk), bool, False, ("y", "x")),
            TILE_DONE: (self.tile_grid, (1, 1), bool, False, ("tile_row", "tile_col")),
        }
        for name, (shape, chunks, dtype, fill, dims) in arrays.items():
            if name not in self.group:
                self.group.create_array(
                    name,
                    shape=shape,
                    chunks=chunks,
                    dtype=dtype,
                    fill_value=fill,
                    dimension_names=dims,
                )


def _settings(**settings: Any) -> dict[str, Any]:
    """The settings as stored (JSON types), checked."""
    dtype = np.dtype(settings["dtype"])
    if dtype.kind not in "fiu":
        raise ValueError(f"dtype={dtype} must be a float or integer dtype")
    if dtype.kind == "f" and settings["nodata"] is not None:
        raise ValueError(f"nodata={settings['nodata']} is for integer stores; floats use NaN")
    if dtype.kind in "iu" and settings["nodata"] is None:
        raise ValueError(f"dtype={dtype} needs an integer nodata (e.g. -1 or 255)")
    tile, out_stride = settings["tile"], settings["out_stride"]
    if tile <= 0 or out_stride <= 0 or tile % out_stride:
        raise ValueError(f"tile={tile} must be a positive multiple of out_stride={out_stride}")
    return {**settings, "dtype": dtype.name}
