"""Synthetic scenes for the whole-scene inference tests: a scene whose two channels are each
pixel's own (row, col), read lazily from the requested slices, so that a window's output can be
checked against its place in the scene without any whole-scene array."""

import numpy as np


def coordinate_reader(valid_from_col: int = 0):
    """read(rows, cols) -> (f32[h, w, 2] (row, col) of each pixel, bool[h, w, 2] valid); pixels
    left of `valid_from_col` are invalid zeros."""

    def read(rows: slice, cols: slice):
        y, x = np.meshgrid(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop))
        image = np.stack([y.T, x.T], -1).astype(np.float32)
        valid = np.broadcast_to((image[..., 1:] >= valid_from_col), image.shape).copy()
        return np.where(valid, image, 0), valid

    return read


def smooth(y, x):
    """The scene's reference field, smooth in absolute position."""
    return np.sin(x / 50) + np.cos(y / 70)


def cell_centres(corners, cells: int, out_stride: int):
    """(row, col) in px of the cell centres of windows with top-left corners [N, 2]:
    [N, cells, cells] each."""
    offsets = np.arange(cells) * out_stride + (out_stride - 1) / 2
    y = corners[:, 0, None, None] + offsets[None, :, None]
    x = corners[:, 1, None, None] + offsets[None, None, :]
    return np.broadcast_arrays(y, x)


def smooth_grid(rows: int, cols: int, out_stride: int):
    """f32[rows, cols]: `smooth` at the cell centres of the scene's output grid."""
    y, x = cell_centres(np.zeros((1, 2)), max(rows, cols), out_stride)
    return smooth(y[0, :rows, :cols], x[0, :rows, :cols])


def smooth_predictor(window: int, out_stride: int, offset_per_window: float = 0.0):
    """predict(images, valid) -> f32[N, S/p, S/p, 1]: `smooth` at each cell's centre, plus, when
    `offset_per_window` is set, a pseudo-random offset in [0, offset_per_window) fixed per window
    (which makes overlapping windows disagree)."""
    cells = window // out_stride

    def predict(images, valid):
        corners = images[:, 0, 0, :].astype(np.int64)  # every window's top-left pixel is inside
        y, x = cell_centres(corners, cells, out_stride)
        offsets = [np.random.default_rng([int(r), int(c)]).random() for r, c in corners]
        out = smooth(y, x) + offset_per_window * np.asarray(offsets)[:, None, None]
        return out[..., None].astype(np.float32)

    return predict
