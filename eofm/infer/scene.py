"""The whole-scene loop: tile by tile, read the tile's windows, predict them in batches, blend,
write the tile, record it done.

Memory is flat in scene size: at any time one batch of windows and one tile's accumulator live,
never a whole-scene array. Windows on a tile border are computed once for each tile they touch
(larger tiles amortise this); in exchange a tile needs nothing from its neighbours, so tiles are
independent units of work: a killed run resumes at the first tile not done, and process i of n
can take tiles i::n (`process_index`, `process_count`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from eofm.infer import tiling
from eofm.infer.store import SceneStore

# read(rows, cols) -> (f32[h, w, C], bool[h, w, C] valid) of the scene's pixels rows x cols.
Reader = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]
# predict(f32[N, S, S, C], bool[N, S, S, C]) -> f32[N, S/p, S/p, F].
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def read_window(
    read: Reader, y: int, x: int, window: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The S x S window at (y, x) px: (f32[S, S, C], bool[S, S, C]); the part past the scene's
    edge is invalid zeros."""
    image, valid = read(slice(y, min(y + window, height)), slice(x, min(x + window, width)))
    pad = ((0, window - image.shape[0]), (0, window - image.shape[1]), (0, 0))
    return np.pad(image.astype(np.float32), pad), np.pad(valid.astype(bool), pad)


def window_batches(
    read: Reader,
    corners: Sequence[tuple[int, int]],
    window: int,
    height: int,
    width: int,
    batch_size: int,
    skip_invalid: bool,
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]:
    """Batches (corners, f32[N, S, S, C], bool[N, S, S, C]) of the windows to predict, N <=
    batch_size; with `skip_invalid`, windows without a valid pixel are left out."""
    batch = []
    for y, x in corners:
        image, valid = read_window(read, y, x, window, height, width)
        if skip_invalid and not valid.any():
            continue
        batch.append(((y, x), image, valid))
        if len(batch) == batch_size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(batch: list) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    corners, images, valid = zip(*batch)
    return list(corners), np.stack(images), np.stack(valid)


def predict_checked(
    predict: Predictor, images: np.ndarray, valid: np.ndarray, expected: tuple[int, ...]
) -> np.ndarray:
    """f32 outputs of `predict`, checked to be of shape `expected`."""
    outputs = np.asarray(predict(images, valid), np.float32)
    if outputs.shape != expected:
        raise ValueError(
            f"predict returned shape {outputs.shape} for {len(images)} windows; expected "
            f"{expected} = [N, window/out_stride, window/out_stride, predict_features or the "
            "store's features]"
        )
    return outputs


def check_store(store: SceneStore, height: int, width: int, tile: int, out_stride: int) -> None:
    """Raises ValueError when the store was made for another scene geometry."""
    asked = {"height": height, "width": width, "tile": tile, "out_stride": out_stride}
    differences = [
        f"{k}={getattr(store, k)} in store, {v} asked"
        for k, v in asked.items()
        if getattr(store, k) != v
    ]
    if differences:
        raise ValueError(f"{store.path} does not fit this run: {'; '.join(differences)}")


def store_values(
    values: np.ndarray,
    covered: np.ndarray,
    store: SceneStore,
    finish: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """Blended f32[h, w, F] values as the store holds them: `finish`ed (e.g. `class_map`), cast
    to the store's dtype, nodata where not covered."""
    finished = values if finish is None else finish(values)
    return np.where(covered[..., None], finished, store.nodata).astype(store.dtype)


def run_scene(
    read: Reader,
    height: int,
    width: int,
    window: int,
    stride: int,
    tile: int,
    predict: Predictor,
    store: SceneStore,
    *,
    batch_size: int,
    out_stride: int = 1,
    skip_invalid: bool = True,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
    predict_features: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Predicts a whole scene into `store`, resuming at the tiles not done yet.

    Args:
      read: read(rows, cols) -> (f32[h, w, C], bool[h, w, C] valid), e.g. `Cube.read`.
      height, width: the scene's size in px.
      window, stride: the window side S (the encoder's native size) and step in px.
      tile: the tile side T in px (the store's chunk).
      predict: predict(f32[N, S, S, C], bool[N, S, S, C]) -> f32[N, S/p, S/p, F] (numpy).
      store: where the tiles go; made for this height, width, tile and out_stride.
      batch_size: windows per `predict` call (the last batch of a tile may be smaller).
      out_stride: p, px per output cell (1: pixel maps; the patch size: token grids).
      skip_invalid: windows without a valid pixel are not predicted.
      finish: maps blended f32[h, w, F] to the stored values, e.g. `tiling.class_map`.
      predict_features: F of `predict`'s outputs, when `finish` makes it differ from the
        store's (e.g. K class probabilities -> 1 class map).
      process_index, process_count: this process takes tiles process_index::process_count.
      progress: called after each tile with the running summary plus "tile", "tiles_done",
        "tiles_total" and "eta_s".

    Returns:
      {"tiles": tiles written now, "tiles_total": tiles of this process, "windows_computed",
       "windows_skipped", "seconds", "windows_per_s"}.
    """
    tiling.check_geometry(window, stride, tile, out_stride)
    check_store(store, height, width, tile, out_stride)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    weights = tiling.blend_weights(window, tiling.overlap_for(window, stride))
    features = store.features if predict_features is None else predict_features
    mine = tiling.tiles(height, width, tile)[process_index::process_count]
    done = store.done_tiles()
    todo = [t for t in mine if (t.row, t.col) not in done]
    summary = {"tiles": 0, "tiles_total": len(mine), "windows_computed": 0, "windows_skipped": 0}
    start = time.perf_counter()
    for t in todo:
        corners = tiling.windows_for(t, window, stride, height, width, out_stride)
        accumulator = tiling.TileAccumulator(t, weights, out_stride, features)
        for kept, images, valid in window_batches(
            read, corners, window, height, width, batch_size, skip_invalid
        ):
            expected = (len(kept), window // out_stride, window // out_stride, features)
            accumulator.add(kept, predict_checked(predict, images, valid, expected))
            summary["windows_computed"] += len(kept)
        summary["windows_skipped"] += len(corners) - accumulator.windows
        values, covered = accumulator.result()
        # A covered cell whose blended value is not finite (e.g. features of windows without a
        # valid pixel there) is not valid either.
        valid = covered & np.isfinite(values).all(-1)
        store.write_tile(t, store_values(values, valid, store, finish), valid)
        summary["tiles"] += 1
        _update_rates(summary, time.perf_counter() - start)
        if progress is not None:
            left = len(todo) - summary["tiles"]
            progress(
                {
                    **summary,
                    "tile": (t.row, t.col),
                    "tiles_done": len(mine) - left,
                    "eta_s": summary["seconds"] / summary["tiles"] * left,
                }
            )
    _update_rates(summary, time.perf_counter() - start)
    return summary


def _update_rates(summary: dict[str, Any], seconds: float) -> None:
    """Sets "seconds" and "windows_per_s" of the running summary."""
    summary["seconds"] = seconds
    summary["windows_per_s"] = summary["windows_computed"] / seconds if seconds > 0 else 0.0
