"""Cloud-optimised GeoTIFFs of scene maps, written tile by tile with bounded memory.

`write_cog` streams the map's tiles into a tiled, compressed GeoTIFF beside the target, then has
GDAL's COG driver copy it with internal overviews (built there, block by block) into a second
temporary file, which replaces the target in one rename: the target is either the previous file
or the whole new one, never a partial COG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import affine
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from eofm.infer.tiling import Tile

# GDAL's names of overview resampling methods: "mode" keeps classes, "average" blends values.
RESAMPLINGS = ("nearest", "mode", "average")


def write_cog(
    path: str | os.PathLike,
    tiles: Iterable[Tile],
    read_tile: Callable[[Tile], np.ndarray],
    *,
    height: int,
    width: int,
    count: int,
    dtype: str,
    nodata: float | int,
    crs: Any,
    transform: affine.Affine,
    resampling: str,
    descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    blocksize: int = 512,
) -> Path:
    """Writes an H x W map of `count` bands as a COG at `path`.

    Args:
      path: the COG to write (replaced atomically).
      tiles: tiles covering the map once (`eofm.infer.tiling.tiles`).
      read_tile: tile -> its values [h, w, count] (h, w: the tile's size in px).
      height, width, count, dtype, nodata: the raster's size, bands, data type and nodata.
      crs, transform: the georeference (rasterio CRS or anything it takes; the pixel transform).
      resampling: of the overviews, one of `RESAMPLINGS`.
      descriptions: a name per band.
      tags: dataset metadata (GDAL tags).
      blocksize: the COG's internal tile side in px (a multiple of 16, >= 128); overviews halve the
        map until it fits one block.

    Returns:
      The path written.
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling={resampling!r}; expected one of {RESAMPLINGS}")
    if blocksize < 128 or blocksize % 16:
        raise ValueError(f"blocksize={blocksize} must be a multiple of 16, at least 128 (GDAL)")
    path = Path(path)
    staging = path.with_name(path.name + ".tiles.tmp.tif")
    partial = path.with_name(path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "deflate",
        "bigtiff": "if_safer",
    }
    try:
        with rasterio.open(staging, "w", **profile) as dst:
            for tile in tiles:
                values = np.asarray(read_tile(tile), dtype)
                window = Window(tile.x0, tile.y0, tile.x1 - tile.x0, tile.y1 - tile.y0)
                dst.write(np.moveaxis(values, -1, 0), window=window)
            for band, name in enumerate(descriptions or (), start=1):
                dst.set_band_description(band, name)
            dst.update_tags(**(tags or {}))
        rasterio.shutil.copy(
            staging,
            partial,
            driver="COG",
            compress="deflate",
            blocksize=blocksize,
            overview_resampling=resampling,
            bigtiff="if_safer",
        )
        os.replace(partial, path)
    finally:
        for leftover in (staging, partial):
            leftover.unlink(missing_ok=True)
    return path
