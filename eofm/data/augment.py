"""Random crop / resize / flip / rot90 applied identically to every spatial key of a sample.

Images of several sensors at different resolutions (S2 at 10 m and a 60 m band stack, an S1 image,
a label mask) stay aligned: the crop box is drawn once in relative coordinates [0, 1] and each array
is resampled from its own pixel grid. Images use bilinear interpolation; validity masks and label
masks use nearest neighbour, so classes are never blended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from eofm.data.spec import valid_key


def _source_coords(start: float, extent: float, n_out: int, n_in: int) -> np.ndarray:
    """Source pixel coordinates (pixel centres at i + 0.5 convention) of `n_out` output pixels
    covering the relative interval [start, start + extent) of an axis of `n_in` pixels."""
    rel = start + (np.arange(n_out) + 0.5) / n_out * extent
    return rel * n_in - 0.5


def crop_resize(
    array: np.ndarray,
    box: tuple[float, float, float, float],
    out_hw: tuple[int, int],
    *,
    nearest: bool,
) -> np.ndarray:
    """Resamples the relative box (top, left, height, width) of an [H, W, ...] array to out_hw."""
    top, left, bh, bw = box
    h, w = array.shape[:2]
    ys = _source_coords(top, bh, out_hw[0], h)
    xs = _source_coords(left, bw, out_hw[1], w)
    if nearest:
        yi = np.clip(np.floor(ys + 0.5).astype(int), 0, h - 1)
        xi = np.clip(np.floor(xs + 0.5).astype(int), 0, w - 1)
        return array[yi][:, xi]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    extra = (1,) * (array.ndim - 2)
    wy = (ys - y0).reshape(-1, 1, *extra).astype(np.float32)
    wx = (xs - x0).reshape(1, -1, *extra).astype(np.float32)
    rows0, rows1 = array[y0], array[y1]
    top_row = rows0[:, x0] * (1 - wx) + rows0[:, x1] * wx
    bottom_row = rows1[:, x0] * (1 - wx) + rows1[:, x1] * wx
    return (top_row * (1 - wy) + bottom_row * wy).astype(array.dtype)


class RandomCropFlipRotate(grain.transforms.RandomMap):
    """Random-resized square crop, flips and 90-degree rotations on every spatial key.

    Args:
      image_keys: keys resampled bilinearly (their `<key>_valid` masks follow with nearest).
      mask_keys: extra per-pixel label keys ([H, W] or [H, W, ...]), resampled with nearest.
      size: output side of the first image key; every other key is scaled by its size relative
        to that key (a 60 m stack of a 120 px 10 m image gets size / 6).
      scale: range of the crop area as a fraction of the image; (1, 1) disables cropping.
      hflip, vflip: flip with probability 0.5 each.
      rot90: rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}.
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        *,
        size: int,
        mask_keys: Sequence[str] = (),
        scale: tuple[float, float] = (1.0, 1.0),
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.image_keys = tuple(image_keys)
        self.mask_keys = tuple(mask_keys)
        self.size, self.scale = size, scale
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90

    def random_map(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        side = float(np.sqrt(rng.uniform(*self.scale)))
        top, left = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        flip_h = self.hflip and rng.random() < 0.5
        flip_v = self.vflip and rng.random() < 0.5
        k = int(rng.integers(4)) if self.rot90 else 0

        ref_h = sample[self.image_keys[0]].shape[0]
        nearest_keys = [valid_key(k_) for k_ in self.image_keys if valid_key(k_) in sample]
        out = dict(sample)
        for key in (*self.image_keys, *nearest_keys, *self.mask_keys):
            x = sample[key]
            n = max(1, round(self.size * x.shape[0] / ref_h))
            y = crop_resize(x, (top, left, side, side), (n, n), nearest=key not in self.image_keys)
            if flip_h:
                y = y[:, ::-1]
            if flip_v:
                y = y[::-1]
            out[key] = np.ascontiguousarray(np.rot90(y, k, axes=(0, 1)))
        return out
