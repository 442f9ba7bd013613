"""Plans and blends whole-scene inference: output tiles, the windows that cover them, and the
seamless weighted average of overlapping window outputs.

Geometry. A scene is H x W pixels. The model sees square windows of S px placed on one global
window grid (`window_grid`), and emits outputs at `out_stride` p px per cell: p = 1 for pixel maps
(class probabilities), p = the patch size for token embeddings (S px -> S/p cells). The output grid
has ceil(H/p) x ceil(W/p) cells and is written in tiles (chunks) of T x T px = T/p x T/p cells.

Why there are no seams. A cell's value is sum_i w_i f_i / sum_i w_i over the windows i covering
it, with w_i the window's blend weight at that cell (`blend_weights`). After the division the
weights sum to one (a partition of unity), so a function every window predicts alike comes out
exactly. Where windows disagree, each window's weight rises continuously from ~0 at its edge,
so the blend changes continuously as one crosses into or out of a window: there is no edge at
which a window's output starts to count all at once. Every tile uses the same global windows, so
two tiles compute the same windows, with the same weights, where they meet: tile borders are as
seamless as the inside of a tile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Weight of a window's outermost pixels relative to its centre: > 0 so that a pixel covered by
# a single window (the scene's rim) still gets that window's output, small so that the step at a
# window's edge is negligible next to the ramp.
_WEIGHT_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class Tile:
    """Output tile (row, col) of the tile grid: scene pixels [y0, y1) x [x0, x1)."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    def cells(self, out_stride: int) -> tuple[slice, slice]:
        """The tile's rows and columns on the output grid of `out_stride` px per cell."""
        p = out_stride
        return slice(self.y0 // p, -(-self.y1 // p)), slice(self.x0 // p, -(-self.x1 // p))

    def shape(self, out_stride: int) -> tuple[int, int]:
        """(rows, cols) of the tile on the output grid of `out_stride` px per cell."""
        rows, cols = self.cells(out_stride)
        return rows.stop - rows.start, cols.stop - cols.start


def starts(n: int, window: int, stride: int) -> list[int]:
    """Window starts every `stride` px along an axis of n px, the last one flush with the end."""
    out = list(range(0, max(n - window, 0) + 1, stride))
    if out[-1] != max(n - window, 0):
        out.append(n - window)
    return out


def check_geometry(window: int, stride: int, tile: int, out_stride: int) -> None:
    """Raises ValueError unless window, stride and tile are positive multiples of out_stride and
    stride <= window (so that windows cover the scene)."""
    for name, value in (("window", window), ("stride", stride), ("tile", tile)):
        if value <= 0 or value % out_stride:
            raise ValueError(
                f"{name}={value} must be a positive multiple of out_stride={out_stride}"
            )
    if stride > window:
        raise ValueError(f"stride={stride} must be at most window={window}, or pixels go unseen")


def tiles(height: int, width: int, tile: int) -> list[Tile]:
    """The T x T px tiles of an H x W px scene in row-major order; the last row and column of
    tiles are cut at the scene's edge."""
    return [
        Tile(r, c, y, min(y + tile, height), x, min(x + tile, width))
        for r, y in enumerate(range(0, height, tile))
        for c, x in enumerate(range(0, width, tile))
    ]


def window_grid(
    height: int, width: int, window: int, stride: int, out_stride: int = 1
) -> tuple[list[int], list[int]]:
    """Top-left corners (rows, cols) in px of the scene's windows: every `stride` px, the last one
    flush with the output grid's end, all on multiples of `out_stride` so that a window's cells
    fall on the output grid. The windows' pooled vectors form a grid of their own,
    [len(rows), len(cols), F], with window (i, j) centred on (rows[i] + S/2, cols[j] + S/2) px.
    """
    p = out_stride

    def axis(n: int) -> list[int]:
        return [p * s for s in starts(-(-n // p), window // p, stride // p)]

    return axis(height), axis(width)


def windows_for(
    tile: Tile, window: int, stride: int, height: int, width: int, out_stride: int = 1
) -> list[tuple[int, int]]:
    """Corners (y, x) in px of the global grid's windows that overlap `tile`."""
    rows, cols = window_grid(height, width, window, stride, out_stride)
    return [
        (y, x)
        for y in rows
        if y < tile.y1 and y + window > tile.y0
        for x in cols
        if x < tile.x1 and x + window > tile.x0
    ]


def blend_weights(window: int, overlap: int) -> np.ndarray:
    """f32[window, window] weights: 1 inside, a raised-cosine ramp over the `overlap` px at each
    side falling towards 0 at the edge, never below a small floor; separable (outer product of
    one ramp per axis). Needs 0 <= overlap <= window // 2."""
    if not 0 <= overlap <= window // 2:
        raise ValueError(f"overlap={overlap} must be in [0, window // 2 = {window // 2}]")
    ramp = np.ones(window, np.float64)
    position = (np.arange(overlap) + 0.5) / overlap if overlap else np.zeros(0)
    rise = np.sin(0.5 * np.pi * position) ** 2
    ramp[:overlap] = rise
    ramp[window - overlap :] = rise[::-1]
    ramp = np.maximum(ramp, _WEIGHT_FLOOR)
    return np.outer(ramp, ramp).astype(np.float32)


def cell_weights(weights: np.ndarray, out_stride: int) -> np.ndarray:
    """Pixel weights f32[S, S] averaged over p x p blocks: f32[S/p, S/p]. The ramp then spans
    overlap/p cells: blending is smooth when that is several cells (>= 4); over 2 cells the
    steps are as large as those of a plain average."""
    n = weights.shape[0] // out_stride
    return weights.reshape(n, out_stride, n, out_stride).mean(axis=(1, 3))


class TileAccumulator:
    """Weighted sum of window outputs on one tile, added batch by batch (`blend_tile`).

    Args:
      tile: the tile.
      weights: f32[S, S] pixel weights (`blend_weights`).
      out_stride: p, px per output cell.
      features: F, the outputs' last axis.
    """

    def __init__(self, tile: Tile, weights: np.ndarray, out_stride: int, features: int):
        self.tile, self.out_stride = tile, out_stride
        self.weights = cell_weights(weights, out_stride)
        h, w = tile.shape(out_stride)
        self.total = np.zeros((h, w, features), np.float32)
        self.weight_sum = np.zeros((h, w), np.float32)
        self.windows = 0  # windows added

    def add(self, windows: Sequence[tuple[int, int]], outputs: np.ndarray) -> None:
        """Adds f32[N, S/p, S/p, F] outputs of the windows with corners (y, x) in px."""
        n = self.weights.shape[0]
        h, w = self.weight_sum.shape
        top, left = self.tile.y0 // self.out_stride, self.tile.x0 // self.out_stride
        for (y, x), out in zip(windows, outputs, strict=True):
            wy, wx = y // self.out_stride - top, x // self.out_stride - left
            ty, tx = slice(max(wy, 0), min(wy + n, h)), slice(max(wx, 0), min(wx + n, w))
            oy, ox = slice(ty.start - wy, ty.stop - wy), slice(tx.start - wx, tx.stop - wx)
            self.total[ty, tx] += self.weights[oy, ox, None] * out[oy, ox]
            self.weight_sum[ty, tx] += self.weights[oy, ox]
        self.windows += len(windows)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values f32[h, w, F], covered bool[h, w]); cells no window covers are NaN."""
        covered = self.weight_sum > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self.total / self.weight_sum[..., None]
        return np.where(covered[..., None], values, np.nan).astype(np.float32), covered


def blend_tile(
    tile: Tile,
    windows: Sequence[tuple[int, int]],
    outputs: np.ndarray,
    weights: np.ndarray,
    out_stride: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of window outputs on one tile.

    Args:
      tile: the tile.
      windows: corners (y, x) in px of the computed windows (multiples of out_stride).
      outputs: f32[N, S/p, S/p, F] outputs of the windows, p = out_stride (N may be 0).
      weights: f32[S, S] pixel weights (`blend_weights`).
      out_stride: p, px per output cell.

    Returns:
      (values f32[h, w, F], covered bool[h, w]) on the tile's cells (`Tile.shape`); cells no
      window covers are NaN and not covered.
    """
    accumulator = TileAccumulator(tile, weights, out_stride, outputs.shape[-1])
    accumulator.add(windows, outputs)
    return accumulator.result()


def class_map(probabilities: np.ndarray) -> np.ndarray:
    """int32[h, w, 1] most probable class of f32[h, w, K] probabilities (or logits)."""
    return np.argmax(np.nan_to_num(probabilities, nan=-np.inf), axis=-1)[..., None].astype(np.int32)


def overlap_for(window: int, stride: int) -> int:
    """Ramp width of `blend_weights` for windows every `stride` px: their overlap, at most S/2."""
    return min(window - stride, window // 2)
