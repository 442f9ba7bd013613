"""Scene maps of a trained dense head: a class map and class probabilities as COGs in the
input's CRS and footprint (`map_scene`).

The head of a finetune run (`eofm.infer.heads.load_head`) is applied window by window with the
evaluation's window, stride, batch size and smooth blend (`eofm.eval.windows.sliding_window`
blends the same way): the class map of a scene is the evaluation's class map of it. Scenes
smaller than a window are the exception: the evaluation pads them by reflection, inference with
invalid pixels.

Outputs of `map_scene(..., output="OUT.tif")`:
  OUT.tif                a COG of the class index per pixel (uint8, 255 = nodata; uint16 and
                         65535 beyond 255 classes), class names in its metadata, mode overviews
  OUT.probabilities.tif  a COG of the K class probabilities (float32, NaN = nodata), one band per
                         class named after it, average overviews
  OUT.logits.zarr        the blended logits, written tile by tile: the resumable state of the run
                         (a killed run continues at its first tile not done); the COGs are made
                         from it once every tile is done
  OUT.summary.json       counts, rates, peak memory and the settings

A pixel is nodata when some input has no valid band there (a change needs both dates).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eofm import files
from eofm.data import cube as cube_lib
from eofm.infer import cog, runner, scene, tiling
from eofm.infer.heads import TrainedHead, load_head
from eofm.infer.store import SceneStore

LOGITS = "logits"


@dataclasses.dataclass(frozen=True)
class MapPaths:
    """Where `map_scene` writes, all beside the class map `classes` (OUT.tif)."""

    classes: Path
    probabilities: Path
    logits: Path
    summary: Path

    @classmethod
    def of(cls, output: str | os.PathLike) -> MapPaths:
        output = Path(output)
        if output.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"output={output}: the class map is a GeoTIFF; name it OUT.tif")
        stem = output.with_suffix("")
        return cls(
            classes=output,
            probabilities=stem.with_name(stem.name + ".probabilities.tif"),
            logits=stem.with_name(stem.name + ".logits.zarr"),
            summary=stem.with_name(stem.name + ".summary.json"),
        )


def class_map_dtype(num_classes: int) -> tuple[str, int]:
    """(dtype, nodata) of a class map: uint8 and 255, or uint16 and 65535 beyond 255 classes."""
    return ("uint8", 255) if num_classes < 255 else ("uint16", 65535)


def open_inputs(
    head: TrainedHead, inputs: Sequence[str | os.PathLike], file_bands: Sequence[str] | None
) -> list[cube_lib.Cube]:
    """One cube per image the head reads (its `keys`, in order), with the head's sensor and
    bands, all on one pixel grid."""
    if len(inputs) != len(head.keys):
        raise ValueError(
            f"the head reads {len(head.keys)} image(s) {list(head.keys)}; {len(inputs)} input(s)"
            " given: give one scene per image, in that order"
        )
    cubes = [
        cube_lib.open_cube(
            path, sensor=head.specs[k].sensor, bands=head.specs[k].bands, file_bands=file_bands
        )
        for k, path in zip(head.keys, inputs)
    ]
    first = cubes[0]
    for other in cubes[1:]:
        grid = (first.height, first.width, first.crs, first.transform)
        if (other.height, other.width, other.crs, other.transform) != grid:
            raise ValueError(
                f"{other.path} is not on the pixel grid of {first.path}: the images of a change"
                " pair must share size, CRS and transform (reproject one onto the other first)"
            )
    return cubes


def stacked_reader(cubes: Sequence[cube_lib.Cube]) -> scene.Reader:
    """read(rows, cols) of all cubes' bands side by side: (f32[h, w, sum C], bool valid)."""

    def read(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        parts = [c.read(rows, cols) for c in cubes]
        return tuple(np.concatenate(p, axis=-1) for p in zip(*parts))

    return read


def make_predictor(head: TrainedHead, batch_size: int) -> scene.Predictor:
    """predict(f32[N, S, S, sum C] raw bands of the head's images side by side, bool valid) ->
    f32[N, S, S, K] logits, NaN where some image has no valid band."""
    logits = runner.data_parallel(head.logits, batch_size)
    bounds = np.cumsum([0] + [len(head.specs[k].bands) for k in head.keys])

    def predict(images: np.ndarray, valid: np.ndarray) -> np.ndarray:
        batch, has_data = {}, True
        for key, start, stop in zip(head.keys, bounds[:-1], bounds[1:]):
            raw, ok = images[..., start:stop], valid[..., start:stop]
            batch[key] = np.stack([head.normalize(key, x, v) for x, v in zip(raw, ok)])
            has_data = has_data & ok.any(-1)
        return np.where(has_data[..., None], logits(batch), np.nan)

    return predict


def fingerprint(head: TrainedHead, workdir: str, cubes: Sequence[cube_lib.Cube]) -> str:
    """Everything that decides the logits, readable in a refusal to resume."""
    statistics = json.dumps(head.statistics, sort_keys=True)
    scenes = [f"{os.path.abspath(c.path)} {list(c.spec.bands)}" for c in cubes]
    return (
        f"head {os.path.abspath(workdir)}@step={head.step} window={head.window}"
        f" stride={head.stride} {head.normalization} #{runner.digest(statistics)} on {scenes}"
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """f32 class probabilities of f32[..., K] logits (NaN stays NaN)."""
    shifted = logits - logits.max(-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def write_maps(
    store: SceneStore,
    paths: MapPaths,
    head: TrainedHead,
    first: cube_lib.Cube,
    blocksize: int,
) -> None:
    """The class map and probability COGs of the finished logits store."""
    tiles = tiling.tiles(store.height, store.width, store.tile)
    dtype, nodata = class_map_dtype(head.num_classes)
    names = {str(i): name for i, name in enumerate(head.class_names)}
    common = {
        "height": store.height,
        "width": store.width,
        "crs": first.crs,
        "transform": first.transform,
        "blocksize": blocksize,
    }
    tags = {"classes": json.dumps(names), "head_step": str(head.step)}

    def classes(tile: tiling.Tile) -> np.ndarray:
        logits, valid = store.read_tile(tile)
        return np.where(valid[..., None], tiling.class_map(logits), nodata)

    def probabilities(tile: tiling.Tile) -> np.ndarray:
        logits, valid = store.read_tile(tile)
        return np.where(valid[..., None], softmax(logits), np.nan)

    cog.write_cog(
        paths.classes,
        tiles,
        classes,
        count=1,
        dtype=dtype,
        nodata=nodata,
        resampling="mode",
        descriptions=["class"],
        tags=tags,
        **common,
    )
    cog.write_cog(
        paths.probabilities,
        tiles,
        probabilities,
        count=head.num_classes,
        dtype="float32",
        nodata=np.nan,
        resampling="average",
        descriptions=head.class_names,
        tags=tags,
        **common,
    )


def map_scene(
    head: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    file_bands: Sequence[str] | None = None,
    tile: int = 1024,
    batch_size: int | None = None,
    blocksize: int = 512,
    progress: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Maps the scene `inputs` with the trained head of the finetune run `head` (module
    docstring), resuming at the tiles not done.

    Args:
      head: the finetune WORKDIR of a dense head (segmentation or change detection).
      inputs: one scene per image the head reads, in its order (before, after for a change
        head); anything `cube_lib.open_cube` reads, with the head's bands.
      output: the class map OUT.tif; the other outputs go beside it (`MapPaths`).
      file_bands: names of the inputs' bands in file order, for files without band names.
      tile: the tile side in px (the logits store's chunk).
      batch_size: windows per head call (default: the evaluation's).
      blocksize: the COGs' internal tile side in px.
      progress: called after each tile with `run_scene`'s report.
      show_progress: draw the tqdm bar.

    Returns:
      The summary (also written to OUT.summary.json by process 0).
    """
    paths = MapPaths.of(output)
    trained = load_head(head)
    batch_size = trained.config.batch_size if batch_size is None else batch_size
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    cubes = open_inputs(trained, inputs, file_bands)
    first = cubes[0]
    fp = fingerprint(trained, os.fspath(head), cubes)

    def open_store() -> SceneStore:
        return SceneStore(
            paths.logits,
            height=first.height,
            width=first.width,
            features=trained.num_classes,
            tile=tile,
            fingerprint=fp,
            variable=LOGITS,
        )

    store, counts = runner.run_tiles(
        "map",
        open_store,
        first,
        make_predictor(trained, batch_size),
        read=stacked_reader(cubes),
        window=trained.window,
        stride=trained.stride,
        tile=tile,
        batch_size=batch_size,
        progress=progress,
        show_progress=show_progress,
    )
    summary = {
        **counts,
        "peak_rss_mib": runner.peak_rss_mib(),
        "outputs": {k: str(v) for k, v in dataclasses.asdict(paths).items()},
        "settings": {
            "head": os.fspath(head),
            "step": trained.step,
            "task": trained.config.task,
            "classes": trained.class_names,
            "inputs": [os.fspath(p) for p in inputs],
            "bands": {k: list(trained.specs[k].bands) for k in trained.keys},
            "window": trained.window,
            "stride": trained.stride,
            "tile": tile,
            "batch_size": batch_size,
            "devices": jax.local_device_count(),
            "process_count": jax.process_count(),
            "normalisation": trained.normalization,
        },
    }
    if jax.process_index() == 0:
        store.finalize(
            first.crs,
            first.transform,
            feature_names=trained.class_names,
            attrs={"head": os.fspath(head), "step": trained.step, "values": "blended logits"},
        )
        write_maps(store, paths, trained, first, blocksize)
        files.write_text_atomic(paths.summary, json.dumps(summary, indent=2) + "\n")
    return summary
