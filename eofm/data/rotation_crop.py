"""RoMA's rotation-aware adaptive cropping: rotate a texture-rich window, mark its tokens.

Per image (RoMA, Wang et al. 2025): score every p x p patch by its texture, find the
best-scoring window near the most textured patch (96, then 64, then 32 px at patch 16), rotate the
window's pixels by theta ~ U(-45, 45) degrees with nearest neighbour and zero fill (the dataset mean
after normalisation), and record which tokens were rotated so that the model adds its learned angle
embedding to exactly those tokens. The rotated image is both the input and the pretraining target.

Differences from the released code, which implement the paper's intent:
- Texture score. The released code scores a patch by the norm of its LBP histogram, computed on a
  wrong axis (a C x 16 slice instead of the 16 x 16 patch). Of a normalised histogram that norm is
  largest on a flat patch (all codes equal), so it prefers texture-poor windows. We score texture
  diversity instead: 1 - sum(h^2), the probability that two pixels of the patch have different LBP
  codes (0 on a flat patch, near 1 on rich texture).
- Window tokens. The released code places the angle embedding on the diagonal tokens (0, 0)..(5, 5)
  whatever the window; here it goes on every token of the rotated window.
- Fallback sizes. The released 64 and 32 px fallbacks crash; here every size works and the window
  always lies inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from eofm.data.spec import valid_key

ROTATED_SUFFIX = "_rotated"
ANGLE_SUFFIX = "_angle"
# (window side, search radius) in patches: 96/64/32 px windows searched +-80/+-48/+-16 px at p = 16.
DEFAULT_WINDOW_SIZES = ((6, 5), (4, 3), (2, 1))
# LBP neighbour k as (row, col) offset; bit k of the code is set when neighbour k >= centre.
# Clockwise from the top-left neighbour, row 0 at the top.
LBP_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def rotated_key(key: str) -> str:
    """Name of the f32[tokens] mask marking the rotated tokens of image `key`."""
    return key + ROTATED_SUFFIX


def angle_key(key: str) -> str:
    """Name of the f32 scalar rotation angle (degrees) of image `key`."""
    return key + ANGLE_SUFFIX


def lbp_codes(gray: np.ndarray) -> np.ndarray:
    """8-neighbour, radius-1 local binary pattern of f32[H, W] -> uint8[H, W].

    Bit k is set when neighbour `LBP_NEIGHBOURS[k]` >= the centre pixel; edge pixels compare with
    edge-replicated padding, so a constant image codes to 255 everywhere.
    """
    h, w = gray.shape
    padded = np.pad(gray, 1, mode="edge")
    codes = np.zeros((h, w), np.uint8)
    for bit, (dy, dx) in enumerate(LBP_NEIGHBOURS):
        neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        codes |= (neighbour >= gray).astype(np.uint8) << bit
    return codes


def texture_scores(image: np.ndarray, patch: int) -> np.ndarray:
    """Texture diversity of every p x p patch of f32[S, S, C] -> f32[S/p, S/p] in [0, 1).

    The score is 1 - sum(h^2) of the normalised 256-bin histogram h of the patch's LBP codes of
    the channel mean: 0 on a flat patch, near 1 on rich texture.
    """
    codes = lbp_codes(image.mean(axis=-1)).astype(np.int64)
    g = image.shape[0] // patch
    # [g, p, g, p] -> [g, g, p*p]: the codes of each patch, patches in raster order.
    per_patch = codes.reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    flat_bins = per_patch + 256 * np.arange(g * g)[:, None]
    counts = np.bincount(flat_bins.ravel(), minlength=g * g * 256).reshape(g, g, 256)
    hist = counts / float(patch * patch)
    return (1.0 - np.sum(hist**2, axis=-1)).astype(np.float32)


def _search_range(centre: int, radius: int, size: int, grid: int) -> tuple[int, int]:
    """First and last top-left index within +-radius of `centre` that keep `size` in `grid`."""
    last_fit = grid - size
    return int(np.clip(centre - radius, 0, last_fit)), int(np.clip(centre + radius, 0, last_fit))


def find_window(
    scores: np.ndarray, sizes: Sequence[tuple[int, int]] = DEFAULT_WINDOW_SIZES
) -> tuple[int, int, int] | None:
    """The best-scoring square window near the most textured patch, in patch units.

    Args:
      scores: f32[g, g] patch scores (`texture_scores`).
      sizes: (window side w, search radius r) in patches, tried in order.

    For each size: take the best patch (ties: first in raster order) and every w x w window whose
    top-left lies within +-r patches of it and inside the grid (a range that would leave the grid is
    clipped to it); pick the one with the largest summed score (ties: first in raster order); accept
    it if its mean score >= the mean score of the whole grid.

    Returns:
      (top, left, side) of the first accepted window, or None when no size is accepted.
    """
    grid = scores.shape[0]
    if scores.shape != (grid, grid):
        raise ValueError(f"scores must be a square [g, g] grid, got shape {scores.shape}")
    for side, radius in sizes:
        if not 1 <= side <= grid or radius < 0:
            raise ValueError(
                f"window size (side={side}, radius={radius}) in window_sizes={tuple(sizes)} does "
                f"not fit the {grid}x{grid} patch grid: need 1 <= side <= {grid} and radius >= 0"
            )
    best_row, best_col = np.unravel_index(np.argmax(scores), scores.shape)
    image_mean = scores.mean()
    for side, radius in sizes:
        top0, top1 = _search_range(best_row, radius, side, grid)
        left0, left1 = _search_range(best_col, radius, side, grid)
        windows = np.lib.stride_tricks.sliding_window_view(scores, (side, side))
        sums = windows[top0 : top1 + 1, left0 : left1 + 1].sum(axis=(-2, -1))
        dt, dl = np.unravel_index(np.argmax(sums), sums.shape)
        if sums[dt, dl] / side**2 >= image_mean:
            return top0 + int(dt), left0 + int(dl), side
    return None


def rotate_nearest(window: np.ndarray, degrees: float, fill: float = 0.0) -> np.ndarray:
    """Rotates [n, n, ...] about its centre, counter-clockwise (row 0 at the top) by `degrees`.

    Nearest neighbour by inverse mapping: output pixel (i, j), centre (i + 0.5, j + 0.5), takes the
    input pixel nearest to its centre rotated back by `degrees`; outputs whose source falls outside
    the window get `fill`. The shape is kept (no expand); 0 degrees is the identity and 90 degrees
    equals np.rot90(window).
    """
    n = window.shape[0]
    theta = np.deg2rad(degrees)
    offsets = np.arange(n) + 0.5 - n / 2  # pixel centres relative to the window centre
    y, x = offsets[:, None], offsets[None, :]
    src_row = np.floor(x * np.sin(theta) + y * np.cos(theta) + n / 2).astype(np.int64)
    src_col = np.floor(x * np.cos(theta) - y * np.sin(theta) + n / 2).astype(np.int64)
    inside = (src_row >= 0) & (src_row < n) & (src_col >= 0) & (src_col < n)
    out = window[np.clip(src_row, 0, n - 1), np.clip(src_col, 0, n - 1)]
    out[~inside] = fill
    return out


class RotateTexturedWindow(grain.transforms.RandomMap):
    """Rotates the most textured window of `sample[key]` and marks the rotated tokens.

    Adds `<key>_rotated` (f32[(S/p)^2], 1.0 on the window's tokens in row-major raster order, all 0
    when no window is accepted) and `<key>_angle` (f32 scalar, degrees, 0 when none). The window of
    `<key>_valid`, when present, is rotated with it and its fill pixels are valid: they hold the
    dataset mean, a real input and target.

    Args:
      key: image key of f32[S, S, C] samples, already normalised (0 = the dataset mean).
      patch_size: token side p in pixels; S must be a multiple of it.
      max_degrees: theta ~ U(-max_degrees, max_degrees).
      window_sizes: (window side, search radius) in patches, see `find_window`.
      released_token_mask: mark the diagonal tokens (0, 0) .. (w - 1, w - 1) of a window of w
        patches instead of the window's own tokens, wherever the window is, as the released code
        does (its window offsets are divided by the patch size twice and its indices built as a
        diagonal); for reproducing released runs only.
    """

    def __init__(
        self,
        key: str,
        *,
        patch_size: int,
        max_degrees: float = 45.0,
        window_sizes: Sequence[tuple[int, int]] = DEFAULT_WINDOW_SIZES,
        released_token_mask: bool = False,
    ):
        if patch_size < 1 or max_degrees < 0 or not window_sizes:
            raise ValueError(
                f"RotateTexturedWindow({key!r}) needs patch_size >= 1, max_degrees >= 0 and at "
                f"least one window size; got {patch_size}, {max_degrees}, {window_sizes}"
            )
        self.key, self.patch_size, self.max_degrees = key, patch_size, max_degrees
        self.window_sizes = tuple((int(w), int(r)) for w, r in window_sizes)
        self.released_token_mask = released_token_mask

    def _image(self, sample: dict[str, Any]) -> np.ndarray:
        """sample[key] after checking it is [S, S, C] with S a multiple of the patch size."""
        if self.key not in sample:
            raise KeyError(f"RotateTexturedWindow: key {self.key!r} not in sample {sorted(sample)}")
        image = sample[self.key]
        if image.ndim != 3 or image.shape[0] != image.shape[1]:
            raise ValueError(f"{self.key!r}: need a square [S, S, C] image, got {image.shape}")
        if image.shape[0] % self.patch_size:
            raise ValueError(
                f"{self.key!r}: image side {image.shape[0]} is not a multiple of "
                f"patch_size={self.patch_size}"
            )
        return image

    def random_map(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = self._image(sample)
        grid = image.shape[0] // self.patch_size
        window = find_window(texture_scores(image, self.patch_size), self.window_sizes)
        rotated = np.zeros((grid, grid), np.float32)
        degrees = 0.0
        out = dict(sample)
        if window is not None:
            top, left, side = window
            # Rounded to float32 first, so that the stored angle reproduces the rotation exactly.
            degrees = float(np.float32(rng.uniform(-self.max_degrees, self.max_degrees)))
            rows = slice(top * self.patch_size, (top + side) * self.patch_size)
            cols = slice(left * self.patch_size, (left + side) * self.patch_size)
            out[self.key] = _paste_rotated(image, rows, cols, degrees, fill=0)
            if valid_key(self.key) in sample:
                out[valid_key(self.key)] = _paste_rotated(
                    sample[valid_key(self.key)], rows, cols, degrees, fill=1
                )
            if self.released_token_mask:
                rotated[np.arange(side), np.arange(side)] = 1.0
            else:
                rotated[top : top + side, left : left + side] = 1.0
        out[rotated_key(self.key)] = rotated.ravel()
        out[angle_key(self.key)] = np.float32(degrees)
        return out


def _paste_rotated(
    array: np.ndarray, rows: slice, cols: slice, degrees: float, fill: float
) -> np.ndarray:
    """A copy of `array` whose [rows, cols] window is rotated by `degrees` (`rotate_nearest`)."""
    out = np.array(array, copy=True)
    out[rows, cols] = rotate_nearest(array[rows, cols], degrees, fill)
    return out
